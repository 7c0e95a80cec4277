"""MDLM checkpoints in the Hugging Face layout (`kuleshov-group/mdlm-owt`) -> `models.dit.DiT` on a mesh.

`config.json` (model_type "mdlm") gives vocab_size (the mask token included, id vocab_size - 1),
model_length, hidden_dim, cond_dim, n_blocks, n_heads, time_conditioning, dropout;
`model.safetensors` holds `backbone.*` tensors. These are torch.nn.Linear weights, stored
[out, in]: each is transposed (x W^T + b) and, for the fused qkv and the attention output,
reshaped to [D, 3, heads, head_dim] and [heads, head_dim, D]. The stored rotary buffer
`rotary_emb.inv_freq` is not a parameter; it is checked against the rotary base instead.

The same mapping initialises training (`init_from`, `mdm_jax.interop.init_from`): the project's
config names these fields differently (`CONFIG_FIELDS`).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from mdm_jax.interop import hf, layout
from mdm_jax.models import adapters
from mdm_jax.models.dit import FREQ_DIM, DiT
from mdm_jax.models.transformer import padded_vocab

__all__ = [
    "MDLMInfo",
    "load_mdlm",
    "load_mdlm_model",
    "CONFIG_FIELDS",
    "config_values",
    "read_params",
    "open_checked",
    "check_rotary",
    "eot_id",
]

FAMILY = "mdlm"  # the model family (models.FAMILIES) these checkpoints initialise
HINT = (
    "Download an MDLM directory once with network access, e.g. `huggingface-cli download "
    "kuleshov-group/mdlm-owt config.json model.safetensors --local-dir /data/mdlm-owt`."
)
MLP_RATIO = 4  # MDLM's DiT: mlp width = 4 * hidden_dim (not stored in config.json)
ROPE_BASE = 10000.0
INV_FREQ = "rotary_emb.inv_freq"
# The project's config field of every shape-defining MDLM field: model.<ours> <- config.json <theirs>.
CONFIG_FIELDS = (
    ("vocab_size", "vocab_size - 1"),
    ("max_len", "model_length"),
    ("emb_dim", "hidden_dim"),
    ("num_layers", "n_blocks"),
    ("num_heads", "n_heads"),
    ("time_emb_dim", "cond_dim"),
    ("mlp_dim", f"{MLP_RATIO} * hidden_dim"),
    ("time_conditioning", "time_conditioning"),
)


@dataclasses.dataclass(frozen=True)
class MDLMInfo:
    vocab_size: int  # V real tokens: the denoiser's logits have V columns
    mask_id: int  # V
    model_length: int
    time_conditioning: bool
    num_layers: int
    num_heads: int
    emb_dim: int
    cond_dim: int
    path: str
    dtype: str


def eot_id(cfg: dict) -> None:
    """MDLM's config.json names no end-of-text id (its tokenizer's is checked by vocabulary size)."""
    del cfg
    return None


def config_values(cfg: dict) -> dict:
    """The project's model.* values that describe the network of an MDLM config.json."""
    d = int(cfg["hidden_dim"])
    return dict(
        vocab_size=int(cfg["vocab_size"]) - 1,
        max_len=int(cfg["model_length"]),
        emb_dim=d,
        num_layers=int(cfg["n_blocks"]),
        num_heads=int(cfg["n_heads"]),
        time_emb_dim=int(cfg["cond_dim"]),
        mlp_dim=MLP_RATIO * d,
        time_conditioning=bool(cfg.get("time_conditioning", False)),
    )


def _model(cfg: dict, ckpt_dir: str, compute, pdtype) -> DiT:
    v = config_values(cfg)
    if v["emb_dim"] % v["num_heads"]:
        raise ValueError(
            f"{ckpt_dir}/config.json: hidden_dim={v['emb_dim']} is not divisible by n_heads={v['num_heads']}"
        )
    return DiT(
        vocab_size=v["vocab_size"],
        max_len=v["max_len"],
        num_layers=v["num_layers"],
        num_heads=v["num_heads"],
        emb_dim=v["emb_dim"],
        cond_dim=v["time_emb_dim"],
        mlp_dim=v["mlp_dim"],
        dropout=float(cfg.get("dropout", 0.0)),
        time_conditioning=v["time_conditioning"],
        rope_base=ROPE_BASE,
        dtype=compute,
        param_dtype=pdtype,
    )


def _tensors(model: DiT):
    """{checkpoint name without `backbone.`: (shape, params path or None, converter)}."""
    d, n, c, m = model.emb_dim, model.num_heads, model.cond_dim, model.mlp_dim
    hd, classes = d // n, model.vocab_size + 1
    extra = padded_vocab(classes) - classes
    t = lambda a: a.T  # noqa: E731 - torch Linear [out, in] -> kernel [in, out]

    def linear(out, name, path, shape, reshape=None, bias=True):
        conv = t if reshape is None else (lambda a: a.T.reshape(reshape))
        out[name + ".weight"] = (shape, path + ("kernel",), conv)
        if bias:
            out[name + ".bias"] = ((shape[0],), path + ("bias",), lambda a: a)

    out = {
        "vocab_embed.embedding": (
            (classes, d),
            ("vocab_embed", "embedding"),
            lambda a: np.pad(a, ((0, extra), (0, 0))),
        ),
        INV_FREQ: ((hd // 2,), None, None),
    }
    linear(out, "sigma_map.mlp.0", ("sigma_map_in",), (c, FREQ_DIM))
    linear(out, "sigma_map.mlp.2", ("sigma_map_out",), (c, c))
    for i in range(model.num_layers):
        b, p = f"blocks.{i}.", (f"blocks_{i}",)
        out[b + "norm1.weight"] = ((d,), p + ("norm1", "scale"), lambda a: a)
        out[b + "norm2.weight"] = ((d,), p + ("norm2", "scale"), lambda a: a)
        linear(out, b + "attn_qkv", p + ("attn_qkv",), (3 * d, d), reshape=(d, 3, n, hd), bias=False)
        linear(out, b + "attn_out", p + ("attn_out",), (d, d), reshape=(n, hd, d), bias=False)
        linear(out, b + "mlp.0", p + ("mlp_in",), (m, d))
        linear(out, b + "mlp.2", p + ("mlp_out",), (d, m))
        linear(out, b + "adaLN_modulation", p + ("adaLN_modulation",), (6 * d, c))
    out["output_layer.norm_final.weight"] = ((d,), ("norm_final", "scale"), lambda a: a)
    out["output_layer.linear.weight"] = (
        (classes, d),
        ("output_linear", "kernel"),
        lambda a: np.pad(a.T, ((0, 0), (0, extra))),
    )
    out["output_layer.linear.bias"] = ((classes,), ("output_linear", "bias"), lambda a: np.pad(a, (0, extra)))
    linear(out, "output_layer.adaLN_modulation", ("output_adaLN_modulation",), (2 * d, c))
    return out


def _stored_names(ckpt: hf.Checkpoint) -> dict:
    prefix = "backbone." if any(k.startswith("backbone.") for k in ckpt.shapes) else ""
    return {(k[len(prefix) :] if prefix and k.startswith(prefix) else k): k for k in ckpt.shapes}


def open_checked(path, model: DiT | None = None, *, compute=jnp.float32, pdtype=jnp.float32):
    """(checkpoint, model, tensors, stored names): the directory checked against the network it
    implies (or `model`, for init_from) before any weight is read (only the tiny rotary buffer)."""
    ckpt = hf.open_dir(path, model_type="mdlm", hint=HINT)
    model = _model(ckpt.config, ckpt.directory, compute, pdtype) if model is None else model
    tensors = _tensors(model)
    stored = _stored_names(ckpt)
    hf.check_tensors(ckpt, {k: v[0] for k, v in tensors.items()}, stored_names=stored, what="MDLM DiT")
    check_rotary(ckpt, stored, model)
    return ckpt, model, tensors, stored


def check_rotary(ckpt: hf.Checkpoint, stored: dict, model: DiT) -> None:
    inv = ckpt.read(stored[INV_FREQ]).astype(np.float64)
    hd = model.emb_dim // model.num_heads
    want = 1.0 / model.rope_base ** (np.arange(0, hd, 2, dtype=np.float64) / hd)
    if not np.allclose(inv, want, rtol=1e-6, atol=0):
        raise ValueError(
            f"{ckpt.directory}: {stored[INV_FREQ]} is not the rotary frequencies of base "
            f"{model.rope_base:g} (max relative difference "
            f"{np.max(np.abs(inv / want - 1)):.3g}); the network uses "
            f"rope_base={model.rope_base:g}"
        )


def read_params(ckpt, model: DiT, tensors: dict, stored: dict, mesh, abstract=None, shardings=None):
    """The checkpoint's weights as `model`'s params on `mesh` (in `shardings` if given)."""
    if abstract is None:
        abstract, shardings = layout.param_layout(
            lambda: model.init(jax.random.key(0), jnp.zeros((1, 1), jnp.int32), jnp.zeros((1,), jnp.float32)),
            mesh,
        )
    host = {v[1]: (lambda k=k, v=v: v[2](ckpt.read(stored[k]))) for k, v in tensors.items() if v[1]}
    return layout.place(host, abstract, shardings)


def load_mdlm_model(path, dtype: str = "float32", *, mesh=None, param_dtype: str | None = None):
    """(model, params, info): the DiT module (`model.backbone(tokens, sigma)` gives MDLM's raw
    logits over V + 1 classes) and its params on `mesh`; see `load_mdlm`."""
    compute, pdtype = layout.dtypes_of(dtype, param_dtype)
    mesh = layout.default_mesh() if mesh is None else mesh
    ckpt, model, tensors, stored = open_checked(path, compute=compute, pdtype=pdtype)
    params = read_params(ckpt, model, tensors, stored, mesh)
    info = MDLMInfo(
        vocab_size=model.vocab_size,
        mask_id=model.vocab_size,
        model_length=model.max_len,
        time_conditioning=model.time_conditioning,
        num_layers=model.num_layers,
        num_heads=model.num_heads,
        emb_dim=model.emb_dim,
        cond_dim=model.cond_dim,
        path=ckpt.directory,
        dtype=str(compute),
    )
    return model, params, info


def load_mdlm(path, dtype: str = "float32", *, mesh=None, param_dtype: str | None = None):
    """(denoise_fn, info) of the MDLM in the Hugging Face directory `path`.

    denoise_fn(tokens int32[B, L], t float32[B]) -> SUBS log-probabilities [B, L, V] over the
    V = vocab_size - 1 real tokens (the mask column dropped; mask id V), the samplers' contract;
    t maps to MDLM's sigma = -log1p(-(1 - 1e-3) t), ignored (sigma = 0) when the checkpoint has
    time_conditioning false. It is a `jax.tree_util.Partial` holding the params (placed on `mesh`,
    default all devices on the data axis), so samplers take them as traced jit arguments.
    `dtype`/`param_dtype` as in `load_gpt2`.
    """
    model, params, info = load_mdlm_model(path, dtype, mesh=mesh, param_dtype=param_dtype)
    return adapters.denoise_fn(model, params), info
