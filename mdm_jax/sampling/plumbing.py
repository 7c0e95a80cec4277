"""What every sampler does around its draws: per-row keys, the batch sharding, the call set-up.

The samplers (`first_hitting`, `ancestral`, `autoregressive`) differ in their loops only; the
rest is here, once:
- `sampler_call(fn, precision, temperature, batch_sharding)`: the set-up around a jitted loop
  (precision checked, x64 / mesh scope entered, the model function split into its static part
  and traced params, the temperature as a float32 scalar);
- `row_keys` / `step_keys` / `row_bits`: randomness per row, so a row's sample does not depend
  on the batch size or on how the batch is split over devices;
- `constrain`: pins per-row arrays to the batch sharding;
- `tempered`: logits cast to the policy dtype and divided by the temperature in that dtype;
- `StaticSchedule`: a schedule as a hashable static jit argument;
- `initial_tokens`: all masks, or a checked `init` (prompts, infilling).
"""

from __future__ import annotations

import contextlib

import jax
import jax.numpy as jnp

from mdm_jax import schedules
from mdm_jax.sampling import fn_args
from mdm_jax.sampling.categorical import check_precision, policy_dtype, x64_scope

__all__ = [
    "sampler_call",
    "sampler_scope",
    "row_keys",
    "step_keys",
    "row_bits",
    "constrain",
    "tempered",
    "StaticSchedule",
    "initial_tokens",
]


def row_keys(key, batch_size: int):
    """Per-row keys fold_in(key, row): a row's randomness does not depend on sharding or on B."""
    return jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(batch_size, dtype=jnp.int32))


def step_keys(keys, step):
    """fold_in(row_key, step) for every row (step: int scalar, may be traced)."""
    return jax.vmap(lambda k: jax.random.fold_in(k, step))(keys)


def row_bits(keys, length: int):
    """uint32[B, length]: 32 random bits per position, drawn with each row's own key."""
    return jax.vmap(lambda k: jax.random.bits(k, (length,), jnp.uint32))(keys)


def constrain(x, batch_sharding):
    """Pins a per-row array (leading axis = batch) to the batch sharding, if one is given.

    Other arrays follow by propagation; the results never depend on the sharding because every
    random draw is per row (`row_keys`).
    """
    if batch_sharding is None:
        return x
    # Meshes with Explicit axes (jax.make_mesh's default) carry sharding in the types: reshard.
    if _explicit(batch_sharding):
        return jax.sharding.reshard(x, batch_sharding)
    return jax.lax.with_sharding_constraint(x, batch_sharding)


def _explicit(batch_sharding) -> bool:
    axis_types = getattr(batch_sharding.mesh, "axis_types", ())
    return any(t == jax.sharding.AxisType.Explicit for t in axis_types)


def tempered(logits, temperature, precision: str):
    """logits / temperature, both cast to the policy dtype first (a bfloat16 policy divides in
    bfloat16): the tensor the policy's categorical draw sees."""
    dtype = policy_dtype(precision)
    return logits.astype(dtype) / temperature.astype(dtype)


def sampler_scope(precision: str, batch_sharding=None):
    """What a sampler enters around its trace and call: x64 for "float64", and the mesh when the
    batch sharding has Explicit axes (jit needs it as context there)."""
    stack = contextlib.ExitStack()
    stack.enter_context(x64_scope(precision))
    if batch_sharding is not None and _explicit(batch_sharding):
        stack.enter_context(jax.set_mesh(batch_sharding.mesh))
    return stack


@contextlib.contextmanager
def sampler_call(fn, precision: str, temperature: float, batch_sharding=None):
    """The set-up every sampler makes around its jitted loop.

    Checks the precision name (an error before any tracing), enters `sampler_scope`, and yields
    (fn's static part, fn's traced leaves, the temperature as a float32 scalar): the jitted loop
    takes the first as a static argument and the other two as traced ones (`fn_args`), so a new
    temperature or new params never recompile it.
    """
    check_precision(precision)
    with sampler_scope(precision, batch_sharding):
        fn_static, fn_leaves = fn_args.split(fn)
        yield fn_static, fn_leaves, jnp.float32(temperature)


class StaticSchedule:
    """Hashable wrapper so a schedule can be a static jit argument.

    `schedules.get(...)` builds new lambdas on every call, so the dataclass itself compares
    unequal between calls and would force a retrace; the built-in schedules are fully named by
    (name, params), so those are the key. Custom schedules fall back to object identity.
    """

    def __init__(self, schedule):
        self.schedule = schedules.get(schedule) if isinstance(schedule, str) else schedule
        named = self.schedule.name in schedules.NAMES
        self._key = (self.schedule.name, self.schedule.params) if named else id(self.schedule)

    def __hash__(self):
        return hash(self._key)

    def __eq__(self, other):
        return isinstance(other, StaticSchedule) and self._key == other._key


def initial_tokens(init, batch_size: int, seq_len: int, mask_id: int) -> jax.Array:
    """The sampler's starting tokens: all masks, or `init` (prompts / infilling) checked for shape."""
    if init is None:
        return jnp.full((batch_size, seq_len), mask_id, jnp.int32)
    arr = jnp.asarray(init, jnp.int32)
    if arr.shape != (batch_size, seq_len):
        raise ValueError(f"init has shape {arr.shape}, expected {(batch_size, seq_len)}")
    return arr
