"""Layers shared by the networks that reproduce published models (GPT-2, MDLM's DiT).

Both keep PyTorch's arithmetic where it matters for parity: projections with a bias, LayerNorm
with the biased variance computed in (at least) float32. Every parameter carries logical axis
names (`mdm_jax.sharding.LOGICAL_RULES`), so loaded weights are laid out for the mesh like the
project's own `Transformer`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from mdm_jax.models.transformer import EMBED, VOCAB

Dtype = Any


def partitioned(init_fn: Callable, *axes):
    return nn.with_logical_partitioning(init_fn, axes)


def constrain(x, *axes):
    return nn.with_logical_constraint(x, axes)


def stats_dtype(dtype) -> Dtype:
    """The dtype of norms and other steps PyTorch references run in float32 whatever the compute
    dtype (float64 in a float64 reference run)."""
    return jnp.promote_types(dtype, jnp.float32)


class Affine(nn.Module):
    """y = einsum(eqn, x, kernel) + bias, with a kernel of any rank (e.g. [D, 3, heads, head_dim]
    for a fused qkv) and a bias over the kernel's trailing `len(bias_axes)` axes (None: no bias)."""

    eqn: str
    kernel_shape: tuple
    kernel_axes: tuple
    bias_axes: tuple | None
    dtype: Dtype
    param_dtype: Dtype
    kernel_init: Callable = nn.initializers.normal(0.02)
    bias_init: Callable = nn.initializers.zeros

    @nn.compact
    def __call__(self, x):
        kernel = self.param(
            "kernel", partitioned(self.kernel_init, *self.kernel_axes), self.kernel_shape, self.param_dtype
        )
        y = jnp.einsum(self.eqn, x.astype(self.dtype), kernel.astype(self.dtype))
        if self.bias_axes is None:
            return y
        bias_shape = self.kernel_shape[len(self.kernel_shape) - len(self.bias_axes) :]
        bias = self.param("bias", partitioned(self.bias_init, *self.bias_axes), bias_shape, self.param_dtype)
        return y + bias.astype(self.dtype)


class Embedding(nn.Module):
    """A token table `embedding` [num_rows, dim] (logical axes vocab x embed): lookup and tied head.

    The lookup reads the table gathered in full (as FSDP gathers every weight before use): a row
    gather from a table sharded over vocab and embed into batch-sharded activations is a
    resharding XLA's SPMD partitioner handles badly (an involuntary full rematerialisation).
    """

    num_rows: int
    dim: int
    dtype: Dtype
    param_dtype: Dtype
    embedding_init: Callable = nn.initializers.normal(0.02)

    def setup(self):
        self.embedding = self.param(
            "embedding",
            partitioned(self.embedding_init, VOCAB, EMBED),
            (self.num_rows, self.dim),
            self.param_dtype,
        )

    def __call__(self, tokens):
        table = constrain(self.embedding.astype(self.dtype), None, None)
        return jnp.take(table, tokens, axis=0)

    def attend(self, x):
        """x [..., dim] -> x table^T [..., num_rows]: an output head tied to the table."""
        return jnp.einsum("...d,vd->...v", x.astype(self.dtype), self.embedding.astype(self.dtype))


def layer_norm(name: str, axis_name: str, *, eps: float, use_bias: bool, dtype, param_dtype) -> nn.LayerNorm:
    """torch.nn.LayerNorm's arithmetic: biased variance of x - mean (not E[x^2] - E[x]^2, which
    loses digits), eps inside the square root, weight (and bias) applied after; in float32."""
    return nn.LayerNorm(
        epsilon=eps,
        use_bias=use_bias,
        use_fast_variance=False,
        dtype=stats_dtype(dtype),
        param_dtype=param_dtype,
        name=name,
        scale_init=partitioned(nn.initializers.ones, axis_name),
        bias_init=partitioned(nn.initializers.zeros, axis_name),
    )
