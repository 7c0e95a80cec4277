"""Categorical draws under an explicit sampling-precision policy.

`precision` names exactly how a draw is made (docs/paper.md section 4): the dtype the logits are cast
to and the uniform grid the noise comes from. The cap M of the Gumbel noise (the largest value a
finite-precision uniform can produce) is what makes tiny probabilities under-sampled; see
`mdm_jax.precision` for the caps and the exact laws.

  "float64"          Gumbel-max in float64 (52-bit uniforms, cap 36.04). Needs x64: samplers wrap
                     their call in `jax.enable_x64(True)`; a float64 draw inside a trace made without
                     x64 raises instead of silently becoming float32.
  "float32"          JAX's default Gumbel in float32 (23-bit uniforms, cap 15.94).
  "float32-high"     `jax.random.gumbel(..., mode="high")`: two float32 uniforms, cap about 31.9.
  "bfloat16"         Gumbel drawn in bfloat16 (7-bit uniforms, cap 4.85).
  "float16"          Gumbel drawn in float16 (10-bit uniforms, cap 6.93).
  "float32-pytorch"  MDLM/SEDD arithmetic: 24-bit float32 uniforms u = k 2^-24 and
                     argmax(p / (1e-10 - log(u + 1e-10))) with p = softmax(logits) in float32.
"""

from __future__ import annotations

import contextlib
import functools

import jax
import jax.numpy as jnp

__all__ = [
    "PRECISIONS",
    "categorical",
    "policy_dtype",
    "check_precision",
    "x64_scope",
    "exponential_race",
    "grid_uniform",
    "rowwise_categorical",
]

PRECISIONS = ("float64", "float32", "float32-high", "bfloat16", "float16", "float32-pytorch")

_DTYPES = {
    "float64": jnp.float64,
    "float32": jnp.float32,
    "float32-high": jnp.float32,
    "bfloat16": jnp.bfloat16,
    "float16": jnp.float16,
    "float32-pytorch": jnp.float32,
}


def check_precision(precision: str) -> str:
    if precision not in _DTYPES:
        raise ValueError(
            f"unknown sampling precision {precision!r}: choose one of "
            f"{', '.join(PRECISIONS)} (config field sampling.precision)"
        )
    return precision


def policy_dtype(precision: str):
    """The dtype logits are cast to (and noise is drawn in) under `precision`."""
    return _DTYPES[check_precision(precision)]


def x64_scope(precision: str):
    """Context manager a sampler enters around its trace and call: x64 on for "float64".

    Entering it for every call keeps the jit cache keyed consistently; for other policies x64 is
    left as the caller has it.
    """
    if check_precision(precision) == "float64":
        return jax.enable_x64(True)
    return contextlib.nullcontext()


def _cast_logits(logits, precision):
    dtype = policy_dtype(precision)
    if dtype == jnp.float64 and not jax.config.jax_enable_x64:
        out_dtype = "float32"
    else:
        out = jnp.asarray(logits).astype(dtype)
        out_dtype = out.dtype
    if out_dtype != jnp.dtype(dtype):
        # Without x64 JAX truncates float64 to float32 with only a warning: refuse instead.
        raise RuntimeError(
            f"precision={precision!r} needs float64 but got {out_dtype}: x64 is disabled. Call "
            "inside `with jax.enable_x64(True):` (the samplers do this themselves)."
        )
    return out


def _draw(key, logits, precision):
    """Index of the winning category along the last axis, int32; logits already any dtype."""
    lg = _cast_logits(logits, precision)
    if precision == "float32-pytorch":
        return exponential_race(key, lg, uniform_bits=24)
    else:
        mode = "high" if precision == "float32-high" else "low"
        score = lg + jax.random.gumbel(key, lg.shape, lg.dtype, mode=mode)
    return jnp.argmax(score, axis=-1).astype(jnp.int32)


def grid_uniform(key, shape, uniform_bits: int = 24):
    """float32 uniforms k 2^-uniform_bits in [0, 1): torch.rand's float32 for uniform_bits=24."""
    bits = jax.random.bits(key, shape, jnp.uint32)
    return (bits >> (32 - uniform_bits)).astype(jnp.float32) * jnp.float32(2.0**-uniform_bits)


def exponential_race(key, logits, uniform_bits: int = 24):
    """MDLM/SEDD's draw: argmax(p / (1e-10 - log(u + 1e-10))), float32, u = k 2^-uniform_bits.

    uniform_bits=24 is torch.rand's float32 (exact in JAX: 24 random bits times 2^-24); fewer
    bits give a coarser grid with the same arithmetic (used to test the grid law cheaply).
    """
    lg = logits.astype(jnp.float32)
    u = grid_uniform(key, lg.shape, uniform_bits)
    probs = jax.nn.softmax(lg, axis=-1)
    denom = jnp.float32(1e-10) - jnp.log(u + jnp.float32(1e-10))
    return jnp.argmax(probs / denom, axis=-1).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("precision",))
def _draw_jit(key, logits, precision):
    return _draw(key, logits, precision)


def categorical(key, logits, precision: str = "float32"):
    """Draws one category index (int32) per row of `logits` along the last axis.

    Logits are cast to the policy's dtype before anything else, so e.g. bfloat16 logits under
    "float64" are first widened (their own rounding stays). Works inside jit (called from the
    samplers) and eagerly; an eager "float64" call turns x64 on for its own duration.
    """
    check_precision(precision)
    if precision == "float64" and not jax.config.jax_enable_x64:
        if isinstance(logits, jax.core.Tracer):
            _cast_logits(logits, precision)  # raises the explanatory error
        with jax.enable_x64(True):
            return _draw_jit(key, logits, precision)
    return _draw_jit(key, logits, precision)


def rowwise_categorical(row_keys, logits, precision):
    """One draw per row with that row's own key: logits [B, ..., C], row_keys [B] -> int32 [B, ...].

    Drawing per row (rather than one array-wide draw) makes a row's sample independent of how
    the batch is split over devices and of the batch size.
    """
    return jax.vmap(lambda k, lg: _draw(k, lg, precision))(row_keys, logits)
