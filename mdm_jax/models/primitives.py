"""The transformer's primitives, which carry no logical axis names of their own: the gathered
token embedding, rotary position embeddings, the sinusoidal time embedding and `Einsum`, a
bias-free projection whose multi-axis kernel takes its logical axes as an argument.

`mdm_jax.models.transformer` builds its attention, MLP and blocks from them (and names the axes);
all are x64-safe (explicit dtypes), like the transformer.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any


class GatheredEmbed(nn.Embed):
    """nn.Embed (same parameter) whose table is gathered in full before the lookup, as FSDP
    gathers every weight before use. A row gather from a table stored (vocab over "tensor", embed
    over "fsdp") into batch-sharded activations is a resharding XLA's SPMD partitioner cannot do
    efficiently: it falls back to an involuntary full rematerialisation."""

    def __call__(self, inputs):
        if not jnp.issubdtype(inputs.dtype, jnp.integer):
            raise ValueError("input token ids must be integers")
        table = nn.with_logical_constraint(jnp.asarray(self.embedding, self.dtype), (None, None))
        return jnp.take(table, inputs, axis=0)


def rope_tables(positions: jax.Array, head_dim: int, base: float):
    """(sin, cos) float32[..., T, head_dim // 2] for integer positions: computed once per forward
    and shared by every layer."""
    half = head_dim // 2
    freqs = base ** (-jnp.arange(half, dtype=jnp.float32) / half)
    angles = positions.astype(jnp.float32)[..., None] * freqs
    return jnp.sin(angles), jnp.cos(angles)


def rope(x: jax.Array, sin: jax.Array, cos: jax.Array) -> jax.Array:
    """Rotary embedding (rotate-half form) of x[B, T, N, H] with tables [T, H/2] or [B, T, H/2]."""
    half = x.shape[-1] // 2
    sin = sin[..., None, :].astype(x.dtype)  # broadcast over heads
    cos = cos[..., None, :].astype(x.dtype)
    x1, x2 = x[..., :half], x[..., half:]
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


def timestep_embedding(t: jax.Array, dim: int, max_period: float = 10000.0) -> jax.Array:
    """Sinusoidal embedding of t in [0, 1] (scaled by 1000, as in DiT/MDLM)."""
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    args = (t.astype(jnp.float32) * 1000.0)[:, None] * freqs[None]
    return jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)


class Einsum(nn.Module):
    """A bias-free projection y = einsum(eqn, x, kernel) with a multi-axis kernel of logical axes.

    Used instead of `nn.DenseGeneral`, which initialises a flattened 2-D kernel and, under a mesh
    context, applies the kernel's N-D logical constraint to it (a rank error in the sharded
    forward). lecun_normal over the given fan-in axes matches DenseGeneral's initialisation.
    """

    eqn: str
    shape: tuple
    axes: tuple
    in_axis: Any
    out_axis: Any
    dtype: Dtype
    param_dtype: Dtype

    @nn.compact
    def __call__(self, x):
        init = nn.initializers.lecun_normal(in_axis=self.in_axis, out_axis=self.out_axis)
        kernel = self.param(
            "kernel", nn.with_logical_partitioning(init, tuple(self.axes)), self.shape, self.param_dtype
        )
        return jnp.einsum(self.eqn, x.astype(self.dtype), kernel.astype(self.dtype))
