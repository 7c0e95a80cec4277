"""What the report ran on, and what each matmul-precision setting actually does there.

`jax.default_matmul_precision` is a request, not a guarantee: XLA:CPU ignores it (every float32
product runs in full float32), TPUs honour it with bfloat16 passes, GPUs with TF32 or not. So the
report does not assume; `matmul_probe` measures. It multiplies a matrix whose entries are all
v = 1 + 2^-9 + 2^-16 + 2^-20 by the identity: each output equals v after its operands have been
rounded, and which terms survive says how:
    all three          full float32 (or six bfloat16 passes)   "float32"
    2^-9 + 2^-16       three bfloat16 passes (hi*hi + hi*lo + lo*hi)   "bfloat16_3x"
    2^-9               operands rounded to TF32 (10-bit mantissa)      "tensorfloat32"
    none               operands rounded to bfloat16 (7-bit mantissa)   "bfloat16"
Both rounding to nearest and truncation give these answers (every dropped part is below half a
unit in the last place).
"""

from __future__ import annotations

import contextlib
import os
import platform

import jax
import jax.numpy as jnp
import jaxlib

from mdm_jax.numerics import emulate as emulate_lib

__all__ = ["SETTINGS", "matmul_context", "environment", "matmul_probe", "classify"]

# The matmul-precision settings the report runs under; "default" = whatever is in force.
SETTINGS = ("default", "bfloat16", "tensorfloat32", "float32")

_PROBE = 1.0 + 2.0**-9 + 2.0**-16 + 2.0**-20
_CLASSES = {
    2.0**-9 + 2.0**-16 + 2.0**-20: "float32",
    2.0**-9 + 2.0**-16: "bfloat16_3x",
    2.0**-9: "tensorfloat32",
    0.0: "bfloat16",
}


def matmul_context(setting: str):
    """`jax.default_matmul_precision(setting)`, or nothing for "default" (the setting in force)."""
    if setting == "default":
        return contextlib.nullcontext()
    return jax.default_matmul_precision(setting)


def in_force() -> str:
    """The default matmul precision in force here ("unset": the backend's own default)."""
    value = jax.config.jax_default_matmul_precision
    return "unset" if value is None else str(value)


def classify(excess: float) -> str:
    for value, name in _CLASSES.items():
        if excess == value:
            return name
    return f"other (v - 1 = {excess!r})"


def _probe(fn) -> str:
    a = jnp.full((64, 64), _PROBE, jnp.float32)
    out = jax.jit(fn)(a, jnp.eye(64, dtype=jnp.float32))
    return classify(float(out[0, 0]) - 1.0)


def matmul_probe() -> dict:
    """{setting: effective float32 matmul arithmetic}, and {emulated format: what it gives}."""
    native = {}
    for setting in SETTINGS:
        with matmul_context(setting):
            native[setting] = _probe(lambda a, b: a @ b)
    emulated = {fmt: _probe(emulate_lib.emulate(lambda a, b: a @ b, fmt)) for fmt in emulate_lib.FORMATS}
    return {"native": native, "emulated": emulated}


def environment() -> dict:
    dev = jax.devices()[0]
    return {
        "backend": jax.default_backend(),
        "device_kind": dev.device_kind,
        "device_count": jax.device_count(),
        "process_count": jax.process_count(),
        "platform_version": getattr(dev.client, "platform_version", "unknown"),
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "x64": bool(jax.config.jax_enable_x64),
        "default_matmul_precision": in_force(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
    }
