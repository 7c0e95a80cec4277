"""Accelerator matmul arithmetic, emulated on any backend by rewriting a function's matmuls.

A float32 matrix product on a TPU runs by default as one bfloat16 pass (both operands rounded to
bfloat16, exact products, float32 accumulation); "tensorfloat32" there means three bfloat16 passes;
on recent NVIDIA GPUs the default is TF32 (operands rounded to a 10-bit mantissa). XLA:CPU (jaxlib
0.10) ignores `jax.default_matmul_precision` altogether (`environment.matmul_probe` measures it), so
on a CPU those settings change nothing. `emulate(fn, fmt)` returns fn with every float32 `dot_general` in its
jaxpr replaced by that arithmetic, computed exactly on whatever backend runs it: the CPU can then
predict what a TPU or GPU does to the same network, and an accelerator report can check the
prediction against its native rows.

Operands are rounded with integer arithmetic on their bits (round to nearest, ties to even), not
with an f32 -> bf16 -> f32 conversion pair, which XLA may remove as "excess precision". The
rounded products run at HIGHEST precision, so they are exact wherever the emulation runs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax.extend import core as jcore

__all__ = ["FORMATS", "round_mantissa", "emulated_dot", "emulate"]

# name -> (passes, explicit mantissa bits of each operand piece)
FORMATS = {
    "bfloat16": (1, 7),  # TPU DEFAULT / "bfloat16": one bf16 pass
    "bfloat16_3x": (3, 7),  # TPU HIGH / "tensorfloat32": hi*hi + hi*lo + lo*hi in bf16
    "tensorfloat32": (1, 10),  # NVIDIA TF32 (Ampere and later, the GPU DEFAULT for float32)
}

# Primitives evaluated by running their body in place (the rewrite only needs the forward value).
_INLINE = (
    "jit",
    "pjit",
    "closed_call",
    "core_call",
    "checkpoint",
    "remat",
    "custom_jvp_call",
    "custom_vjp_call",
    "custom_vjp_call_jaxpr",
)


def round_mantissa(x: jax.Array, bits: int) -> jax.Array:
    """float32 x rounded to `bits` explicit mantissa bits (nearest, ties to even), as float32."""
    drop = 23 - bits
    u = jax.lax.bitcast_convert_type(x, jnp.uint32)
    half = jnp.uint32((1 << (drop - 1)) - 1) + ((u >> drop) & jnp.uint32(1))
    u = (u + half) & jnp.uint32((0xFFFFFFFF >> drop) << drop)
    return jax.lax.bitcast_convert_type(u, jnp.float32)


def emulated_dot(lhs, rhs, fmt: str, **params):
    """`lax.dot_general(lhs, rhs, **params)` in the arithmetic `fmt` (float32 operands only)."""
    passes, bits = FORMATS[fmt]
    params = dict(params, precision=(jax.lax.Precision.HIGHEST, jax.lax.Precision.HIGHEST))
    params.pop("algorithm", None)

    def dot(a, b):
        return jax.lax.dot_general_p.bind(a, b, **params)

    hi_l, hi_r = round_mantissa(lhs, bits), round_mantissa(rhs, bits)
    out = dot(hi_l, hi_r)
    if passes == 3:
        lo_l, lo_r = round_mantissa(lhs - hi_l, bits), round_mantissa(rhs - hi_r, bits)
        # Smallest terms first, as the three-pass algorithm accumulates them.
        out = dot(hi_l, lo_r) + dot(lo_l, hi_r) + out
    return out


def _is_f32_dot(eqn) -> bool:
    return eqn.primitive.name == "dot_general" and all(
        getattr(v.aval, "dtype", None) == jnp.float32 for v in eqn.invars
    )


def _eval(jaxpr, consts, args, fmt):
    env = {}

    def read(v):
        return v.val if isinstance(v, jcore.Literal) else env[v]

    env.update(zip(jaxpr.constvars, consts))
    env.update(zip(jaxpr.invars, args))
    for eqn in jaxpr.eqns:
        invals = [read(v) for v in eqn.invars]
        name = eqn.primitive.name
        if _is_f32_dot(eqn):
            outs = [emulated_dot(*invals, fmt, **eqn.params)]
        elif name in _INLINE:
            body = eqn.params.get("jaxpr", eqn.params.get("call_jaxpr"))
            if isinstance(body, jcore.ClosedJaxpr):
                outs = _eval(body.jaxpr, body.consts, invals, fmt)
            else:
                outs = _eval(body, [], invals, fmt)
        else:
            params = {k: _rewrite_param(v, fmt, name) for k, v in eqn.params.items()}
            outs = eqn.primitive.bind(*invals, **params)
            outs = outs if eqn.primitive.multiple_results else [outs]
        env.update((v, x) for v, x in zip(eqn.outvars, outs) if not isinstance(v, jcore.DropVar))
    return [read(v) for v in jaxpr.outvars]


def _has_dot(jaxpr) -> bool:
    """Whether a jaxpr (or any body nested in it) holds a matrix product."""
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            return True
        for v in eqn.params.values():
            for sub in v if type(v) is tuple else (v,):
                inner = sub.jaxpr if isinstance(sub, jcore.ClosedJaxpr) else sub
                if isinstance(inner, jcore.Jaxpr) and _has_dot(inner):
                    return True
    return False


def _rewrite_param(value, fmt, primitive):
    """Bodies of loops and branches (scan, while, cond) rewritten in place; other params as given."""
    if type(value) is tuple:  # cond's branches; not NamedTuples such as gather's dimension numbers
        return tuple(_rewrite_param(v, fmt, primitive) for v in value)
    if isinstance(value, jcore.Jaxpr) and not _has_dot(value):
        return value  # e.g. a scatter-add's combiner: nothing to emulate in it
    if isinstance(value, jcore.Jaxpr):
        raise NotImplementedError(
            f"numerics.emulate: cannot rewrite the body of {primitive!r} "
            "(an open jaxpr); emulate the function inside it instead"
        )
    if not isinstance(value, jcore.ClosedJaxpr):
        return value
    avals = [jax.ShapeDtypeStruct(v.aval.shape, v.aval.dtype) for v in value.jaxpr.invars]
    return jax.make_jaxpr(lambda *a: _eval(value.jaxpr, value.consts, a, fmt))(*avals)


@dataclasses.dataclass(frozen=True)
class _Emulated:
    """fn with its float32 matmuls in `fmt`; hashable when fn is (a sampler's static argument)."""

    fn: Callable
    fmt: str

    def __call__(self, *args):
        closed, shape = jax.make_jaxpr(self.fn, return_shape=True)(*args)
        flat = jax.tree.leaves(args)
        outs = _eval(closed.jaxpr, closed.consts, flat, self.fmt)
        return jax.tree.unflatten(jax.tree.structure(shape), outs)


def emulate(fn: Callable, fmt: str) -> Callable:
    """fn with every float32 `dot_general` computed in the arithmetic `fmt` (a key of FORMATS).

    A `jax.tree_util.Partial` (the model adapters) stays one, with its arrays still bound as
    arguments, so the samplers trace them as inputs rather than constants (`sampling.fn_args`).
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown emulated matmul arithmetic {fmt!r}: choose one of {', '.join(FORMATS)}")
    if isinstance(fn, jax.tree_util.Partial):
        return jax.tree_util.Partial(_Emulated(fn.func, fmt), *fn.args, **fn.keywords)
    return _Emulated(fn, fmt)
