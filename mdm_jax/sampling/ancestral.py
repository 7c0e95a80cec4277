"""The original (ancestral) sampler of MDLM/MD4, eq. (10): N uniform steps t_k = k/N from t = 1.

From t to s < t every masked position draws from the (V+1)-way categorical
    [ (1 - alpha_s) e_mask + (alpha_s - alpha_t) mu(x_t, t) ] / (1 - alpha_t),
built as log-probabilities in the policy dtype and drawn with `categorical(..., precision)`, so the
finite-precision effect of the paper (section 5) is reproduced: the mask class (probability about
1 - 1/N) races against tokens of probability about mu/N, and a capped Gumbel under-samples them.
The last step (s = 0) has zero mask probability, so no mask is left.

`factorized=True` draws "unmask or not" as a Bernoulli of probability (alpha_s - alpha_t)/(1 - alpha_t)
(a comparison of 32 random bits with a threshold computed in float64, resolution 2^-32) and the
token from the V-way mu: the same distribution, but it never puts a tiny probability in a race
with a huge one, so it is immune to the truncation even in float32.

`cache=True` reuses the previous network output when no token changed anywhere in the batch in
the previous step. For a time-free network this is exact. For a time-conditioned network it is
the paper's approximation: the reused output was computed at the earlier time t' > t, which
the time-agnostic results (Prop. 3.2) show carries almost no information beyond the mask count.
stats["nfe"] counts the calls actually made (expected N (1 - (1 - 1/N)^(B L)) for linear alpha).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from mdm_jax.sampling import fn_args
from mdm_jax.sampling.categorical import policy_dtype, rowwise_categorical
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

__all__ = ["ancestral", "step_coefficients"]


def step_coefficients(schedule, num_steps: int):
    """Per-step (t, log p_mask, log p_token-factor, p_unmask), float64 numpy, step i: t=(N-i)/N -> s.

    p_mask = (1 - alpha_s)/(1 - alpha_t); a token's probability is exp(log factor) * mu.
    Computed in float64 on the host so the difference alpha_s - alpha_t keeps its digits at large N.
    """
    n = int(num_steps)
    steps = np.arange(n, dtype=np.float64)
    t = (n - steps) / n
    s = (n - steps - 1) / n
    with jax.enable_x64(True):
        a_t = np.array(schedule.alpha(jnp.asarray(t, jnp.float64)), np.float64)
        a_s = np.array(schedule.alpha(jnp.asarray(s, jnp.float64)), np.float64)
    a_s[-1] = 1.0  # alpha(0) = 1 exactly: the last step leaves no mask
    with np.errstate(divide="ignore"):
        log_mask = np.log1p(-a_s) - np.log1p(-a_t)
        log_tok = np.log(a_s - a_t) - np.log1p(-a_t)
    p_unmask = (a_s - a_t) / (1.0 - a_t)
    return t, log_mask, log_tok, p_unmask


def ancestral(denoise_fn, key, *, batch_size: int, seq_len: int, mask_id: int, schedule,
              num_steps: int, precision: str = "float32", cache: bool = True,
              factorized: bool = False, init=None, temperature: float = 1.0,
              batch_sharding=None):
    """Samples int32[batch_size, seq_len] with N = num_steps ancestral steps; returns (tokens, stats).

    Same denoise_fn contract as `first_hitting`. The N steps are one compiled `lax.fori_loop`
    (cached on denoise_fn, shapes, schedule, N and the flags: pass the same denoise_fn object).
    init: optional int32[B, L]; set positions never change. stats["nfe"] is the number of real
    network calls (N without cache).
    """
    n = int(num_steps)
    if n < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    sched = StaticSchedule(schedule)
    t, log_mask, log_tok, p_unmask = step_coefficients(sched.schedule, n)
    # Bernoulli(p) as bits < round(p 2^32); p = 1 (the last step) is a separate flag.
    thr = np.minimum(np.round(p_unmask * 2.0**32), 2.0**32 - 1).astype(np.uint32)
    always = p_unmask >= 1.0
    cdtype = np.float64 if precision == "float64" else np.float32
    with sampler_call(denoise_fn, precision, temperature, batch_sharding) as (fn_static, fn_leaves, temp):
        init_arr = initial_tokens(init, batch_size, seq_len, mask_id)
        coefs = (jnp.asarray(t.astype(np.float32)), jnp.asarray(log_mask.astype(cdtype)),
                 jnp.asarray(log_tok.astype(cdtype)), jnp.asarray(thr), jnp.asarray(always))
        tokens, nfe, changes = _ancestral(
            key, init_arr, temp, coefs, fn_leaves, denoise_fn=fn_static,
            batch_size=batch_size, seq_len=seq_len, mask_id=mask_id, num_steps=n,
            precision=precision, cache=bool(cache), factorized=bool(factorized),
            batch_sharding=batch_sharding)
        nfe, changes = int(nfe), int(changes)
    stats = dict(method="ancestral", precision=precision, nfe=nfe, num_steps=n,
                 steps_with_change=changes, cache=bool(cache), factorized=bool(factorized),
                 schedule=str(sched.schedule), temperature=float(temperature),
                 batch_size=batch_size, seq_len=seq_len)
    return tokens, stats


@functools.partial(jax.jit, static_argnames=("denoise_fn", "batch_size", "seq_len", "mask_id",
                                             "num_steps", "precision", "cache", "factorized",
                                             "batch_sharding"))
def _ancestral(key, init, temperature, coefs, fn_leaves, *, denoise_fn, batch_size, seq_len,
               mask_id, num_steps, precision, cache, factorized, batch_sharding):
    denoise_fn = fn_args.join(denoise_fn, fn_leaves)
    ts, log_mask, log_tok, thr, always = coefs
    dtype = policy_dtype(precision)
    keys = constrain(row_keys(key, batch_size), batch_sharding)
    x0 = constrain(init, batch_sharding)

    def net(x, i):
        return denoise_fn(x, jnp.full((batch_size,), ts[i], jnp.float32))

    out = jax.eval_shape(net, x0, 0)

    def body(i, carry):
        x, logits, changed, nfe, changes = carry
        if cache:
            call = jnp.logical_or(i == 0, changed)
            logits = jax.lax.cond(
                call, lambda: constrain(net(x, i).astype(out.dtype), batch_sharding),
                lambda: logits)
        else:
            call = jnp.bool_(True)
            logits, placeholder = net(x, i), logits
        keys_i = step_keys(keys, i)
        lg = tempered(logits, temperature, precision)
        if factorized:
            tok = rowwise_categorical(step_keys(keys_i, 0), lg, precision)
            bits = row_bits(step_keys(keys_i, 1), seq_len)
            unmask = jnp.logical_or(bits < thr[i], always[i])
            new = jnp.where(unmask, tok, mask_id)
        else:
            logp_tok = jax.nn.log_softmax(lg, axis=-1) + log_tok[i].astype(dtype)
            logp_mask = constrain(jnp.broadcast_to(log_mask[i].astype(dtype), lg.shape[:-1] + (1,)),
                                  batch_sharding)
            draw = rowwise_categorical(keys_i, jnp.concatenate([logp_tok, logp_mask], -1),
                                       precision)
            new = jnp.where(draw == lg.shape[-1], mask_id, draw)
        x_new = constrain(jnp.where(x == mask_id, new, x), batch_sharding)
        changed = jnp.any(x_new != x)
        return (x_new, logits if cache else placeholder, changed, nfe + call.astype(jnp.int32),
                changes + changed.astype(jnp.int32))

    # Without cache the carried logits are a placeholder (no [B, L, V] buffer across steps).
    logits0 = (constrain(jnp.zeros(out.shape, out.dtype), batch_sharding) if cache
               else jnp.zeros((), out.dtype))
    carry = (x0, logits0, jnp.bool_(False), jnp.int32(0), jnp.int32(0))
    x, _, _, nfe, changes = jax.lax.fori_loop(0, num_steps, body, carry)
    return x, nfe, changes
