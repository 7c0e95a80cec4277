"""The first-hitting sampler (FHS, Prop. 4.1 of Zheng et al.): exact, one token per network call.

With n masks left at mask level m_n = 1 - alpha(tau_n), the time at which the next token is
unmasked is a first-hitting time: m_{n-1} = m_n u^(1/n), u ~ U(0, 1), tau_{n-1} = alpha^-1(1 - m_{n-1}).
One masked position, chosen uniformly, takes a token drawn from mu(x, tau_{n-1}). This is exact
for every schedule (through its inverse); with a time-free network it is random-order decoding.

`tokens_per_step=k > 1` is the paper's parallel variant: k positions (uniform without replacement
among the masks) are filled from one network output, so ceil(L/k) calls. It is exact only for
k = 1: the k tokens are drawn independently from their conditionals, not from their joint. The
network is queried at the time of the first of the k hits (the state x is exact at that time)
and the mask level then advances through all k levels, so later times stay on the exact law.

Only one V-way categorical per chosen position is drawn: the [B, L, V] logits are gathered down
to [B, k, V] before any cast to the policy dtype, so "float64" never builds a [B, L, V] float64
tensor.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from mdm_jax.sampling import fn_args
from mdm_jax.sampling.categorical import rowwise_categorical
from mdm_jax.sampling.plumbing import (
    StaticSchedule,
    constrain,
    initial_tokens,
    row_bits,
    row_keys,
    sampler_call,
    step_keys,
    tempered,
)

__all__ = ["first_hitting"]


def _max_masks(init, mask_id, seq_len):
    if init is None or isinstance(init, jax.core.Tracer):
        return seq_len
    counts = (np.asarray(init) == mask_id).sum(axis=1)
    return int(counts.max()) if counts.size else 0


def first_hitting(
    denoise_fn,
    key,
    *,
    batch_size: int,
    seq_len: int,
    mask_id: int,
    schedule,
    precision: str = "float64",
    tokens_per_step: int = 1,
    init=None,
    temperature: float = 1.0,
    batch_sharding=None,
):
    """Samples int32[batch_size, seq_len] with the first-hitting sampler; returns (tokens, stats).

    denoise_fn(tokens int32[B, L], t float32[B]) -> logits [B, L, V], mask id = V (a time-free
    net ignores t). init: optional int32[B, L], set positions are kept and the rest (= mask_id)
    is sampled; each row starts from its own number of masks, and the loop runs
    ceil(max masks / k) steps (rows that finish earlier stop changing). The loop is one compiled
    `lax.fori_loop`; compiled code is cached on (denoise_fn, shapes, schedule, precision, k,
    sharding), so pass the same denoise_fn object to avoid retracing; a `jax.tree_util.Partial`
    (what `models.adapters.denoise_fn` returns) is keyed on its function only, its params are
    traced arguments (see `sampling.fn_args`). stats["nfe"] counts the
    network calls made (= loop length; each runs on the whole batch).
    """
    k = int(tokens_per_step)
    if k < 1:
        raise ValueError(f"tokens_per_step must be >= 1, got {tokens_per_step}")
    sched = StaticSchedule(schedule)
    max_masks = _max_masks(init, mask_id, seq_len)
    num_iters = math.ceil(max_masks / k)
    with sampler_call(denoise_fn, precision, temperature, batch_sharding) as (fn_static, fn_leaves, temp):
        init_arr = initial_tokens(init, batch_size, seq_len, mask_id)
        tokens = _fhs(
            key,
            init_arr,
            temp,
            fn_leaves,
            denoise_fn=fn_static,
            batch_size=batch_size,
            seq_len=seq_len,
            mask_id=mask_id,
            sched=sched,
            precision=precision,
            k=k,
            num_iters=num_iters,
            batch_sharding=batch_sharding,
        )
    stats = dict(
        method="first_hitting",
        precision=precision,
        nfe=num_iters,
        num_steps=num_iters,
        tokens_per_step=k,
        schedule=str(sched.schedule),
        temperature=float(temperature),
        batch_size=batch_size,
        seq_len=seq_len,
    )
    return tokens, stats


@functools.partial(
    jax.jit,
    static_argnames=(
        "denoise_fn",
        "batch_size",
        "seq_len",
        "mask_id",
        "sched",
        "precision",
        "k",
        "num_iters",
        "batch_sharding",
    ),
)
def _fhs(
    key,
    init,
    temperature,
    fn_leaves,
    *,
    denoise_fn,
    batch_size,
    seq_len,
    mask_id,
    sched,
    precision,
    k,
    num_iters,
    batch_sharding,
):
    denoise_fn = fn_args.join(denoise_fn, fn_leaves)
    schedule = sched.schedule
    # Times in float64 under the float64 policy (x64 is on), float32 otherwise.
    tdtype = jnp.float64 if precision == "float64" else jnp.float32
    keys = constrain(row_keys(key, batch_size), batch_sharding)
    k_time = step_keys(keys, 0)
    k_pos = step_keys(keys, 1)
    k_tok = step_keys(keys, 2)
    logm0 = jnp.log(jnp.asarray(schedule.mask_level(jnp.asarray(1.0, tdtype)), tdtype))
    x0 = constrain(init, batch_sharding)
    logm_init = constrain(jnp.full((batch_size,), logm0, tdtype), batch_sharding)
    ranks = jnp.arange(k, dtype=jnp.int32)
    tiny = jnp.finfo(tdtype).tiny

    def body(i, carry):
        x, logm = carry
        masked = x == mask_id
        n = jnp.sum(masked, axis=1, dtype=jnp.int32)  # [B]
        # First-hitting levels n, n-1, ..., n-k+1 (levels below 1 belong to finished rows).
        u = jax.vmap(lambda kk: jax.random.uniform(kk, (k,), tdtype, minval=tiny))(
            step_keys(k_time, i)
        )  # [B, k]
        n_r = n[:, None] - ranks[None, :]
        dlog = jnp.where(n_r >= 1, jnp.log(u) / jnp.maximum(n_r, 1).astype(tdtype), 0.0)
        logm_hit = logm + dlog[:, 0]
        tau = schedule.time_of_mask_level(jnp.exp(logm_hit)).astype(jnp.float32)
        logits = denoise_fn(x, tau)  # [B, L, V]
        # k distinct positions uniformly among the masked ones (random 31-bit scores, top-k).
        bits = row_bits(step_keys(k_pos, i), seq_len)
        score = jnp.where(masked, (bits >> 1).astype(jnp.int32), -1)
        top, pos = jax.lax.top_k(score, k)  # [B, k]
        sel = jnp.take_along_axis(logits, pos[:, :, None], axis=1)  # [B, k, V]
        sel = tempered(sel, temperature, precision)
        tok = rowwise_categorical(step_keys(k_tok, i), sel, precision)  # [B, k]
        # Write back as a one-hot select rather than a scatter (partitions cleanly over rows).
        hit = (pos[:, :, None] == jnp.arange(seq_len, dtype=jnp.int32)) & (top >= 0)[:, :, None]
        new = jnp.sum(jnp.where(hit, tok[:, :, None], 0), axis=1, dtype=jnp.int32)
        x = jnp.where(jnp.any(hit, axis=1), new, x)
        logm = jnp.where(n > 0, logm + jnp.sum(dlog, axis=1), logm)
        return constrain(x, batch_sharding), constrain(logm, batch_sharding)

    x, _ = jax.lax.fori_loop(0, num_iters, body, (x0, logm_init))
    return x
