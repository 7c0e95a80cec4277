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
A step without a call costs only its draw: the cached loop runs one outer iteration per network
call and the steps that reuse its output in an inner loop (benchmarks/ancestral_cache.py measures
the saving against the uncached loop and the earlier `lax.cond` formulation).
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


def ancestral(
    denoise_fn,
    key,
    *,
    batch_size: int,
    seq_len: int,
    mask_id: int,
    schedule,
    num_steps: int,
    precision: str = "float32",
    cache: bool = True,
    factorized: bool = False,
    init=None,
    temperature: float = 1.0,
    batch_sharding=None,
):
    """Samples int32[batch_size, seq_len] with N = num_steps ancestral steps; returns (tokens, stats).

    Same denoise_fn contract as `first_hitting`. The N steps are one compiled loop
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
        coefs = (
            jnp.asarray(t.astype(np.float32)),
            jnp.asarray(log_mask.astype(cdtype)),
            jnp.asarray(log_tok.astype(cdtype)),
            jnp.asarray(thr),
            jnp.asarray(always),
        )
        tokens, nfe, changes = _ancestral(
            key,
            init_arr,
            temp,
            coefs,
            fn_leaves,
            denoise_fn=fn_static,
            batch_size=batch_size,
            seq_len=seq_len,
            mask_id=mask_id,
            num_steps=n,
            precision=precision,
            cache=bool(cache),
            factorized=bool(factorized),
            batch_sharding=batch_sharding,
        )
        nfe, changes = int(nfe), int(changes)
    stats = dict(
        method="ancestral",
        precision=precision,
        nfe=nfe,
        num_steps=n,
        steps_with_change=changes,
        cache=bool(cache),
        factorized=bool(factorized),
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
        "num_steps",
        "precision",
        "cache",
        "factorized",
        "batch_sharding",
    ),
)
def _ancestral(
    key,
    init,
    temperature,
    coefs,
    fn_leaves,
    *,
    denoise_fn,
    batch_size,
    seq_len,
    mask_id,
    num_steps,
    precision,
    cache,
    factorized,
    batch_sharding,
):
    denoise_fn = fn_args.join(denoise_fn, fn_leaves)
    ts, log_mask, log_tok, thr, always = coefs
    dtype = policy_dtype(precision)
    keys = constrain(row_keys(key, batch_size), batch_sharding)
    x0 = constrain(init, batch_sharding)

    def net(x, i):
        return denoise_fn(x, jnp.full((batch_size,), ts[i], jnp.float32))

    out = jax.eval_shape(net, x0, 0)

    def prepare(logits):
        """Per network call: what every step drawing from this output shares."""
        lg = tempered(logits, temperature, precision)
        return lg if factorized else jax.nn.log_softmax(lg, axis=-1)

    def step(x, prepared, i):
        """One ancestral step t_i -> s_i from the prepared network output: (x_new, changed)."""
        keys_i = step_keys(keys, i)
        if factorized:
            tok = rowwise_categorical(step_keys(keys_i, 0), prepared, precision)
            bits = row_bits(step_keys(keys_i, 1), seq_len)
            unmask = jnp.logical_or(bits < thr[i], always[i])
            new = jnp.where(unmask, tok, mask_id)
        else:
            logp_tok = prepared + log_tok[i].astype(dtype)
            logp_mask = constrain(
                jnp.broadcast_to(log_mask[i].astype(dtype), prepared.shape[:-1] + (1,)), batch_sharding
            )
            draw = rowwise_categorical(keys_i, jnp.concatenate([logp_tok, logp_mask], -1), precision)
            new = jnp.where(draw == prepared.shape[-1], mask_id, draw)
        x_new = constrain(jnp.where(x == mask_id, new, x), batch_sharding)
        return x_new, jnp.any(x_new != x)

    if not cache:

        def body(i, carry):
            x, changes = carry
            x, changed = step(x, prepare(net(x, i)), i)
            return x, changes + changed.astype(jnp.int32)

        x, changes = jax.lax.fori_loop(0, num_steps, body, (x0, jnp.int32(0)))
        return x, jnp.int32(num_steps), changes

    # Cached: one outer iteration per network call, then steps from that output until one of them
    # changes a token (or the steps run out). Nested loops instead of a `lax.cond` around the
    # network in a loop over steps: the network sits in a plain loop body (XLA hoists its
    # loop-invariant work, e.g. the RoPE tables, out of the loop; in a conditional branch it
    # cannot), and a step without a call does only the draw, reusing the call's log-softmax.
    # The steps, keys and arithmetic are the same as the uncached loop's, so with a time-free
    # network the tokens are bitwise those of cache=False (tests/test_sampling_ancestral.py).
    def calls_left(carry):
        return carry[1] < num_steps

    def one_call(carry):
        x, i, nfe, changes = carry
        prepared = prepare(constrain(net(x, i).astype(out.dtype), batch_sharding))

        def unchanged(inner):
            j, _, changed = inner
            return jnp.logical_and(j < num_steps, jnp.logical_not(changed))

        def draw(inner):
            j, x, _ = inner
            x, changed = step(x, prepared, j)
            return j + 1, x, changed

        i, x, changed = jax.lax.while_loop(unchanged, draw, (i, x, jnp.bool_(False)))
        return x, i, nfe + 1, changes + changed.astype(jnp.int32)

    x, _, nfe, changes = jax.lax.while_loop(
        calls_left, one_call, (x0, jnp.int32(0), jnp.int32(0), jnp.int32(0))
    )
    return x, nfe, changes
