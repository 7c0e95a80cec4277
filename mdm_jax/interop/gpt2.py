"""GPT-2 checkpoints in the Hugging Face layout -> `models.gpt2.GPT2` parameters on a mesh.

Accepts both key layouts found in the wild: `transformer.`-prefixed names (what `save_pretrained`
writes) and bare names with `h.N.attn.bias` / `h.N.attn.masked_bias` causal-mask buffers (the
original `openai-community/gpt2*` files). Conv1D weights are stored [in, out]: a layer is x W + b,
so they are only reshaped (qkv to [D, 3, heads, head_dim], the attention output to
[heads, head_dim, D]), never transposed. The output head is tied to `wte`; a stored
`lm_head.weight` is accepted only if it equals `wte` (an untied head is another model).
"""

from __future__ import annotations

import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np

from mdm_jax.interop import hf, layout
from mdm_jax.models.gpt2 import GPT2
from mdm_jax.models.transformer import padded_vocab

__all__ = [
    "GPT2Info",
    "load_gpt2",
    "sequence_nll",
    "CONFIG_FIELDS",
    "config_values",
    "open_checked",
    "read_params",
    "eot_id",
]

FAMILY = "gpt2"  # the model family (models.FAMILIES) these checkpoints initialise
HINT = (
    "Download a GPT-2 directory once with network access, e.g. `huggingface-cli download "
    "openai-community/gpt2-large config.json model.safetensors --local-dir /data/gpt2-large`."
)
_BUFFER = re.compile(r"^h\.\d+\.attn\.(bias|masked_bias)$")
_ACTIVATIONS = ("gelu_new", "gelu_pytorch_tanh")  # both are the tanh approximation of GELU
# Settings of GPT2Config this implementation does not reproduce: (field, the supported value).
_FIXED = (
    ("scale_attn_weights", True),
    ("scale_attn_by_inverse_layer_idx", False),
    ("add_cross_attention", False),
    ("tie_word_embeddings", True),
)
# The project's config field of every shape-defining GPT-2 field: model.<ours> <- config.json <theirs>.
CONFIG_FIELDS = (
    ("vocab_size", "vocab_size"),
    ("max_len", "n_positions"),
    ("emb_dim", "n_embd"),
    ("num_layers", "n_layer"),
    ("num_heads", "n_head"),
    ("mlp_dim", "n_inner or 4 * n_embd"),
)


@dataclasses.dataclass(frozen=True)
class GPT2Info:
    vocab_size: int  # number of token ids (50,257 for the published models)
    context_length: int  # n_positions: the longest sequence
    eot_id: int  # <|endoftext|> (eos_token_id)
    num_layers: int
    num_heads: int
    emb_dim: int
    path: str
    dtype: str


def config_values(cfg: dict) -> dict:
    """The project's model.* values that describe the network of a GPT-2 config.json."""
    d = int(cfg["n_embd"])
    return dict(
        vocab_size=int(cfg["vocab_size"]),
        max_len=int(cfg["n_positions"]),
        emb_dim=d,
        num_layers=int(cfg["n_layer"]),
        num_heads=int(cfg["n_head"]),
        mlp_dim=int(cfg.get("n_inner") or 4 * d),
    )


def eot_id(cfg: dict) -> int:
    """<|endoftext|>: eos_token_id, else the last id (GPT-2's convention)."""
    eot = cfg.get("eos_token_id")
    return int(cfg["vocab_size"]) - 1 if eot is None else int(eot)


def _dims(ckpt: hf.Checkpoint) -> dict:
    cfg = ckpt.config
    for field, value in _FIXED:
        if cfg.get(field, value) != value:
            raise ValueError(
                f"{ckpt.directory}/config.json sets {field}={cfg[field]!r}; only {value!r} "
                "(the published GPT-2 models) is supported"
            )
    act = cfg.get("activation_function", "gelu_new")
    if act not in _ACTIVATIONS:
        raise ValueError(
            f"{ckpt.directory}/config.json sets activation_function={act!r}; supported: "
            f"{', '.join(_ACTIVATIONS)}"
        )
    d, heads = int(cfg["n_embd"]), int(cfg["n_head"])
    if d % heads:
        raise ValueError(f"{ckpt.directory}/config.json: n_embd={d} is not divisible by n_head={heads}")
    return dict(config_values(cfg), eps=float(cfg.get("layer_norm_epsilon", 1e-5)), bos_id=eot_id(cfg))


def _tensors(model: GPT2):
    """{checkpoint name (bare layout): (shape, params path, converter of the stored array)}."""
    d, n, v, mlp = model.emb_dim, model.num_heads, model.vocab_size, model.mlp_dim
    hd = d // n

    def pad_rows(a):
        return np.pad(a, ((0, padded_vocab(v) - v), (0, 0)))

    same = lambda a: a  # noqa: E731
    out = {
        "wte.weight": ((v, d), ("wte", "embedding"), pad_rows),
        "wpe.weight": ((model.max_len, d), ("wpe",), same),
        "ln_f.weight": ((d,), ("ln_f", "scale"), same),
        "ln_f.bias": ((d,), ("ln_f", "bias"), same),
    }
    for i in range(model.num_layers):
        h, p = f"h.{i}.", f"h_{i}"
        for ln in ("ln_1", "ln_2"):
            out[h + ln + ".weight"] = ((d,), (p, ln, "scale"), same)
            out[h + ln + ".bias"] = ((d,), (p, ln, "bias"), same)
        out[h + "attn.c_attn.weight"] = (
            (d, 3 * d),
            (p, "c_attn", "kernel"),
            lambda a: a.reshape(d, 3, n, hd),
        )
        out[h + "attn.c_attn.bias"] = ((3 * d,), (p, "c_attn", "bias"), lambda a: a.reshape(3, n, hd))
        out[h + "attn.c_proj.weight"] = ((d, d), (p, "c_proj", "kernel"), lambda a: a.reshape(n, hd, d))
        out[h + "attn.c_proj.bias"] = ((d,), (p, "c_proj", "bias"), same)
        out[h + "mlp.c_fc.weight"] = ((d, mlp), (p, "c_fc", "kernel"), same)
        out[h + "mlp.c_fc.bias"] = ((mlp,), (p, "c_fc", "bias"), same)
        out[h + "mlp.c_proj.weight"] = ((mlp, d), (p, "mlp_c_proj", "kernel"), same)
        out[h + "mlp.c_proj.bias"] = ((d,), (p, "mlp_c_proj", "bias"), same)
    return out


def _stored_names(ckpt: hf.Checkpoint) -> tuple[dict, str | None]:
    """({bare name: stored name} of the parameters, the stored name of a tied lm_head if any)."""
    names = list(ckpt.shapes)
    prefix = "transformer." if any(k.startswith("transformer.") for k in names) else ""
    head = "lm_head.weight" if "lm_head.weight" in names else None
    out = {}
    for k in names:
        if k == head:
            continue
        bare = k[len(prefix) :] if prefix and k.startswith(prefix) else k
        if not _BUFFER.match(bare):
            out[bare] = k
    return out, head


@dataclasses.dataclass(frozen=True)
class _Apply:
    """apply_fn(params, tokens) -> logits; hashable (jit-static), holding only the module."""

    model: GPT2

    def __call__(self, params, tokens):
        return self.model.apply({"params": params}, jnp.asarray(tokens, jnp.int32))


def open_checked(path, model: GPT2 | None = None, *, compute=jnp.float32, pdtype=jnp.float32):
    """(checkpoint, model, tensors, stored names): the directory checked against the network it
    implies (or `model`, for init_from) before any weight is read."""
    ckpt = hf.open_dir(path, model_type="gpt2", hint=HINT)
    dims = _dims(ckpt)
    if model is None:
        model = GPT2(dtype=compute, param_dtype=pdtype, **dims)
    elif model.eps != dims["eps"]:
        raise ValueError(
            f"{ckpt.directory}/config.json sets layer_norm_epsilon={dims['eps']}; the "
            f"'gpt2' model family uses {model.eps}"
        )
    tensors = _tensors(model)
    stored, head = _stored_names(ckpt)
    hf.check_tensors(ckpt, {k: t[0] for k, t in tensors.items()}, stored_names=stored, what="GPT-2")
    if head is not None:
        if ckpt.shapes[head] != ckpt.shapes[stored["wte.weight"]]:
            raise ValueError(
                f"{ckpt.directory}: lm_head.weight has shape {ckpt.shapes[head]}, not that of "
                f"the token embedding {ckpt.shapes[stored['wte.weight']]}: an untied head"
            )
        stored = dict(stored, **{"lm_head.weight": head})
    return ckpt, model, tensors, stored


def read_params(ckpt, model: GPT2, tensors: dict, stored: dict, mesh, abstract=None, shardings=None):
    """The checkpoint's weights as `model`'s params on `mesh` (in `shardings` if given)."""
    if "lm_head.weight" in stored and not np.array_equal(
        ckpt.read(stored["lm_head.weight"]), ckpt.read(stored["wte.weight"])
    ):
        raise ValueError(
            f"{ckpt.directory}: lm_head.weight differs from the token embedding; only GPT-2 "
            "with its output head tied to wte (the published models) is supported"
        )
    if abstract is None:
        abstract, shardings = layout.param_layout(
            lambda: model.init(jax.random.key(0), jnp.zeros((1, 1), jnp.int32)), mesh
        )
    host = {t[1]: (lambda k=k, t=t: t[2](ckpt.read(stored[k]))) for k, t in tensors.items()}
    return layout.place(host, abstract, shardings)


def load_gpt2(path, dtype: str = "float32", *, mesh=None, param_dtype: str | None = None):
    """(apply_fn, params, info) of the GPT-2 in the Hugging Face directory `path`.

    apply_fn(params, tokens int32[B, L]) -> logits float32[B, L, V] (float64 for dtype="float64"),
    L <= info.context_length. `dtype` is the compute dtype ("float32", "bfloat16", "float64");
    parameters are float32 unless `param_dtype` is given (float64 for a float64 reference, which
    needs `jax.enable_x64(True)`). Every parameter is placed on `mesh` (default: all devices on the
    data axis) with the NamedSharding its logical axes give. The directory is checked (model type,
    tensor names, shapes) before any weight is read.
    """
    compute, pdtype = layout.dtypes_of(dtype, param_dtype)
    mesh = layout.default_mesh() if mesh is None else mesh
    ckpt, model, tensors, stored = open_checked(path, compute=compute, pdtype=pdtype)
    params = read_params(ckpt, model, tensors, stored, mesh)
    info = GPT2Info(
        vocab_size=model.vocab_size,
        context_length=model.max_len,
        eot_id=eot_id(ckpt.config),
        num_layers=model.num_layers,
        num_heads=model.num_heads,
        emb_dim=model.emb_dim,
        path=ckpt.directory,
        dtype=str(compute),
    )
    return _Apply(model), params, info


def sequence_nll(apply_fn, params, tokens) -> jax.Array:
    """Mean negative log-likelihood per sequence [B] of tokens[:, 1:] given their prefixes, computed in
    float32 (or the logits' dtype if wider) from apply_fn's logits."""
    tokens = jnp.asarray(tokens, jnp.int32)
    logits = apply_fn(params, tokens[:, :-1])
    logp = jax.nn.log_softmax(logits.astype(jnp.promote_types(logits.dtype, jnp.float32)), axis=-1)
    nll = -jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1)[..., 0]
    return jnp.mean(nll, axis=-1)
