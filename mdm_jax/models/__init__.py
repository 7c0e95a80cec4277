"""Networks. `build(config)` is the one place a config becomes a module."""

from __future__ import annotations

import jax.numpy as jnp

from mdm_jax.models.transformer import Transformer

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def dtype_of(name: str, field: str):
    if name not in _DTYPES:
        raise ValueError(f"unknown {field}={name!r}: choose one of {', '.join(_DTYPES)}")
    return _DTYPES[name]


def build(config) -> Transformer:
    """The backbone for config.objective.kind: causal for "arm", bidirectional otherwise."""
    m = config.model
    arm = config.objective.kind == "arm"
    return Transformer(
        vocab_size=m.vocab_size, max_len=m.max_len, num_layers=m.num_layers, num_heads=m.num_heads,
        emb_dim=m.emb_dim, mlp_dim=m.mlp_dim, mlp_type=m.mlp_type, dropout=m.dropout,
        causal=arm, time_conditioning=bool(m.time_conditioning) and not arm,
        time_emb_dim=m.time_emb_dim, rope_base=m.rope_base,
        dtype=dtype_of(config.dtype.compute, "dtype.compute"),
        param_dtype=dtype_of(config.dtype.param, "dtype.param"))
