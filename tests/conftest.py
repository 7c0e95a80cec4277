"""What the test files share: the repository root, config loading, the tiny model, the CLI.

Test modules import these names (`from conftest import ROOT, load_config, tiny`); pytest puts
tests/ on sys.path. Tiers: `pytest -m "not slow" -n 2` is the fast tier a developer runs (under 3
minutes on 2 cores). End-to-end runs, notebooks, multi-process launches and any test that compiles
enough programs to take over ~5 s on 2 cores are marked `slow`; CI runs everything.
"""

from __future__ import annotations

import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mdm_jax import config as config_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A 1-layer width-32 network on 32-token sequences in batches of 8: compiles and trains in seconds.
TINY_MODEL = dict(num_layers=1, num_heads=2, emb_dim=32, mlp_dim=64, max_len=32)
TINY_SEQ_LEN = 32
TINY_BATCH = 8


def load_config(path: str, arg: str | None = None):
    """`get_config(arg)` of a config file given relative to the repository root."""
    return config_lib.load_file(os.path.join(ROOT, path), arg)


def tiny(config):
    """`config` with the tiny network, sequence length and batch (in place; returned)."""
    config.model.update(TINY_MODEL)
    config.data.seq_len = TINY_SEQ_LEN
    config.train.batch_size = TINY_BATCH
    return config


def tiny_flags() -> list[str]:
    """The same tiny shape as `--config.*` overrides of `python -m mdm_jax.main`."""
    values = {
        **{f"model.{k}": v for k, v in TINY_MODEL.items()},
        "data.seq_len": TINY_SEQ_LEN,
        "train.batch_size": TINY_BATCH,
    }
    return [f"--config.{k}={v}" for k, v in values.items()]


def run_main(*args, timeout: float = 300) -> subprocess.CompletedProcess:
    """`python -m mdm_jax.main ARGS` from the repository root, output captured as text."""
    return subprocess.run(
        [sys.executable, "-m", "mdm_jax.main", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def random_params(model, seed: int = 0):
    """Random params of a Transformer's shapes (numpy draws: nothing to compile): kernels N(0, 0.2^2),
    norm scales 1 + N(0, 0.1^2), biases N(0, 0.1^2). Unlike the real init, whose zero adaLN gates
    and zero head give all-zero logits, every part of the network is live."""
    tokens = jnp.zeros((1, model.max_len), jnp.int32)  # parameter shapes do not depend on the length
    t = jnp.zeros((1,), jnp.float32) if model.time_conditioning else None
    shapes = nn.unbox(jax.eval_shape(model.init, jax.random.key(0), tokens, t))["params"]
    gen = np.random.default_rng(seed)

    def draw(path, s):
        noise = gen.standard_normal(s.shape).astype(np.float32)
        if len(s.shape) >= 2:
            return jnp.asarray(0.2 * noise)
        return jnp.asarray((1.0 if path[-1].key == "scale" else 0.0) + 0.1 * noise)

    return jax.tree_util.tree_map_with_path(draw, shapes)
