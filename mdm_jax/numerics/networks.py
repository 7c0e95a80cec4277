"""The networks whose arithmetic the report measures, each a few lines: how to build it in a
given compute dtype, the inputs its logits are compared on, and how to sample from it.

* `owt_mdm_small`: this package's own network in the architecture of configs/owt_mdm_small.py
  (GELU MLP, adaLN time conditioning, RoPE, the GPT-2 vocabulary of 50,257 tokens, log-linear
  schedule) at reduced depth, width and length, with fixed-seed random weights. A freshly
  initialised network is no test of arithmetic (adaLN-Zero and the head start at zero, so every
  logit is 0), so every weight is redrawn: matrices N(0, 1/fan_in), the embedding N(0, 1), norm
  scales 1 + 0.1 N(0, 1), biases 0.1 N(0, 1), and the head N(0, LOGIT_STD^2 / width), which gives
  logits of a trained model's size (standard deviation ~5, a predictive entropy of a few nats
  over 50,257 tokens; the report records the value).
* `gpt2-tiny`, `mdlm-tiny`, `mdlm-tiny-tc`: the GPT-2 and MDLM fixtures (tests/fixtures/, random
  weights in the published checkpoint layouts) through `mdm_jax.interop`, when both are present.

The architecture is written out here rather than read from configs/owt_mdm_small.py because the
configs are not part of the installed package; tests/test_numerics.py checks the two agree.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mdm_jax import config as config_lib, models, rng
from mdm_jax.models import adapters

__all__ = ["Network", "SIZES", "owt_mdm_small_config", "owt_mdm_small", "fixture_networks"]

LOGIT_STD = 5.0
FIXTURES = ("gpt2-tiny", "mdlm-tiny", "mdlm-tiny-tc")

# Reduced shapes of owt_mdm_small (12 layers, width 768, 12 heads, MLP 3072, L = 1024).
SIZES = {
    "full": dict(num_layers=12, emb_dim=64, num_heads=4, mlp_dim=256, seq_len=64, batch=4),
    "quick": dict(num_layers=1, emb_dim=16, num_heads=2, mlp_dim=64, seq_len=8, batch=2),
}


@dataclasses.dataclass
class Network:
    """A network to measure. build(compute) -> fn of arrays in that compute dtype ("float64",
    "float32" or "bfloat16"); an "mdm" fn is denoise_fn(tokens int32[B, L], t float32[B]), an
    "arm" fn is logits_fn(inputs int32[B, L]); both return logits [B, L, V]."""

    name: str
    kind: str  # "mdm" | "arm"
    build: Callable[[str], Callable]
    inputs: tuple  # numpy arrays the logits are compared on: (tokens, t) or (inputs,)
    scored: np.ndarray  # bool [B, L]: positions whose logits are used (an MDM's masked ones)
    sample: dict  # mdm: mask_id, schedule, batch_size, seq_len; arm: bos_id, batch_size, seq_len
    describe: dict


def owt_mdm_small_config(size: str = "full"):
    """configs/owt_mdm_small.py's architecture at the reduced shape SIZES[size], float32."""
    s = SIZES[size]
    c = config_lib.base()
    c.objective.kind = "continuous"
    c.objective.schedule = "loglinear"
    c.objective.schedule_eps = 1e-3
    c.model.update(
        family="transformer",
        vocab_size=50257,
        mlp_type="gelu",
        time_conditioning=True,
        time_emb_dim=128,
        rope_base=10000.0,
        dropout=0.0,
        num_layers=s["num_layers"],
        emb_dim=s["emb_dim"],
        num_heads=s["num_heads"],
        mlp_dim=s["mlp_dim"],
        max_len=s["seq_len"],
    )
    c.data.seq_len = s["seq_len"]
    c.dtype.param = c.dtype.compute = "float32"
    return c


def _redraw(shapes, seed, width):
    """Every weight drawn at a fixed seed (see the module docstring), as float32 numpy arrays.

    numpy, not jax.random: no compilation per parameter shape, and the same weights on every
    backend by construction."""
    flat, treedef = jax.tree_util.tree_flatten_with_path(shapes)
    gen = np.random.default_rng(rng.numpy_seed(seed, "numerics-weights"))
    out = []
    for path, x in flat:
        names = [str(getattr(p, "key", p)) for p in path]
        z = gen.standard_normal(x.shape)
        if names[-1] == "embedding":
            w = z
        elif names[-2:] == ["head", "kernel"]:
            w = z * (LOGIT_STD / np.sqrt(width))
        elif x.ndim >= 2:  # attention output [heads, head_dim, width] reads heads * head_dim inputs
            fan_in = x.shape[0] * x.shape[1] if names[-2:] == ["out", "kernel"] else x.shape[0]
            w = z / np.sqrt(fan_in)
        elif names[-1] == "scale":
            w = 1.0 + 0.1 * z
        else:
            w = 0.1 * z
        out.append(np.asarray(w, np.float32))
    return jax.tree_util.tree_unflatten(treedef, out)


def owt_mdm_small(size: str = "full", seed: int = 0) -> Network:
    config = owt_mdm_small_config(size)
    s = SIZES[size]
    model = models.build(config)
    b, length, v = s["batch"], s["seq_len"], config.model.vocab_size
    # Only the parameter shapes are needed from init (eval_shape: nothing is compiled or run).
    shapes = jax.eval_shape(
        model.init, jax.random.key(0), jnp.zeros((b, length), jnp.int32), jnp.ones((b,), jnp.float32)
    )["params"]
    params = _redraw(nn.unbox(shapes), seed, config.model.emb_dim)
    # Half the positions masked, the rest random tokens; t in [0.1, 0.9] (the fixtures' range).
    gen = np.random.default_rng(rng.numpy_seed(seed, "numerics-inputs"))
    masked = gen.random((b, length)) < 0.5
    clean = gen.integers(0, v, (b, length))
    inputs = (np.where(masked, v, clean).astype(np.int32), (0.1 + 0.8 * gen.random(b)).astype(np.float32))

    def build(compute: str):
        if compute == "float64":  # the reference: a float64 module and float64 weights (x64 on)
            m = model.clone(dtype=jnp.float64, param_dtype=jnp.float64)
            return adapters.denoise_fn(m, jax.tree.map(lambda x: np.asarray(x, np.float64), params))
        m = model.clone(dtype=models.dtype_of(compute, "compute"))
        return adapters.denoise_fn(m, params)

    shape = {k: s[k] for k in ("num_layers", "emb_dim", "num_heads", "mlp_dim", "seq_len")}
    return Network(
        name="owt_mdm_small",
        kind="mdm",
        build=build,
        inputs=inputs,
        scored=masked,
        sample=dict(mask_id=v, schedule="loglinear", batch_size=b, seq_len=length),
        describe=dict(
            architecture="configs/owt_mdm_small.py at reduced shape",
            vocab_size=v,
            logit_std=LOGIT_STD,
            seed=seed,
            **shape,
        ),
    )


def fixture_networks(fixtures_dir: str) -> tuple[list[Network], dict]:
    """(networks, {fixture: why it is absent}) for the GPT-2 and MDLM fixtures under fixtures_dir."""
    absent = {}
    try:
        interop = importlib.import_module("mdm_jax.interop")
    except ImportError as e:
        return [], {name: f"mdm_jax.interop is not installed ({e})" for name in FIXTURES}
    nets = []
    for name in FIXTURES:
        path = os.path.join(fixtures_dir, name)
        if not os.path.isfile(os.path.join(path, "reference.npz")):
            absent[name] = f"no fixture at {path}"
            continue
        nets.append(_gpt2(interop, path, name) if name.startswith("gpt2") else _mdlm(interop, path, name))
    return nets, absent


def _config(path):
    with open(os.path.join(path, "config.json")) as f:
        return json.load(f)


def _gpt2(interop, path, name) -> Network:
    ref = np.load(os.path.join(path, "reference.npz"))
    tokens = np.asarray(ref["tokens"], np.int32)
    cfg = _config(path)

    def build(compute: str):
        apply_fn, params, _ = interop.load_gpt2(path, dtype=compute)
        return jax.tree_util.Partial(apply_fn, params)

    return Network(
        name=name,
        kind="arm",
        build=build,
        inputs=(tokens,),
        scored=np.ones(tokens.shape, bool),
        sample=dict(bos_id=int(cfg["bos_token_id"]), batch_size=4, seq_len=int(cfg["n_positions"])),
        describe=dict(fixture=path, vocab_size=int(cfg["vocab_size"])),
    )


def _mdlm(interop, path, name) -> Network:
    ref = np.load(os.path.join(path, "reference.npz"))
    cfg = _config(path)
    mask_id = int(cfg["vocab_size"]) - 1
    tokens = np.asarray(ref["tokens"], np.int32)
    # The fixture stores MDLM's total noise sigma = -log1p(-(1 - 1e-3) t); the denoiser takes t.
    t = (-np.expm1(-np.asarray(ref["sigma"], np.float64)) / (1 - 1e-3)).astype(np.float32)

    def build(compute: str):
        return interop.load_mdlm(path, dtype=compute)[0]

    return Network(
        name=name,
        kind="mdm",
        build=build,
        inputs=(tokens, t),
        scored=tokens == mask_id,
        sample=dict(mask_id=mask_id, schedule="loglinear", batch_size=4, seq_len=int(cfg["model_length"])),
        describe=dict(fixture=path, vocab_size=mask_id, time_conditioning=bool(cfg["time_conditioning"])),
    )
