"""MDLM's original sampler, exactly: the procedure behind the "32-bit" row of the paper's Table 2.

This is `Diffusion._sample` with `sampling.predictor=ddpm_cache` of github.com/kuleshov-group/mdlm
(see docs/evaluation.md), step by step:

1. Time grid: t_i = linspace(1, eps, N + 1)[i] in float32, computed with torch's two-sided
   formula (t_i = 1 + step i for i < (N+1)//2, else eps - step (N - i), step = (eps - 1)/N), and
   s_i = t_i - dt with dt = (1 - eps)/N, rounded to float32 (torch subtracts a Python float from
   a float32 tensor in float32). eps = 1e-5, so the last step ends at s ~ 1e-5, not at 0.
2. `_ddpm_caching_update`: the network gives log p_x0 = logits - logsumexp(logits) (the SUBS
   parameterisation: the mask column is -inf, so it drops out; `denoise_fn` already returns only
   the V real columns; `normalized=True` takes MDLM's own log p_x0 as given), p_x0 = exp(log p_x0).
   The move chance is t itself (MDLM's log-linear schedule with the network fed sigma(t)), so every
   masked position draws from the unnormalised
       q = [ p_x0 (t_i - s_i) , s_i ]      (V tokens, then the mask id V)
   with `_sample_categorical`: argmax(q / (1e-10 - log(u + 1e-10))), u uniform. A position that
   is not masked keeps its token.
3. Cache: the network output p_x0 is reused in the next step when no token changed anywhere in
   the batch (`torch.allclose(x_next, x)`); MDLM never reuses it for a time-conditioned network
   (`cache=False` here, what `interop` MDLM checkpoints with time_conditioning=True need).
4. Noise removal (`sampling.noise_removal=True`, MDLM's default): one more network call at t = eps,
   and every position still masked takes the argmax of log p_x0 (greedy).

Arithmetic of the draw (`precision`):
  "float32-pytorch"  MDLM as published: p_x0 in the logits' dtype (torch computes an op on a
                     bfloat16 tensor in float32 and rounds the result to bfloat16; float32 logits
                     are simply float32), q and the race in float32, u = k 2^-24 (torch.rand's float32).
  "float64"          the paper's 64-bit row: grid, p_x0, q and the race in float64, u = k 2^-53
                     (torch.rand's float64).
`uniform_bits=b` draws u = k 2^-b instead (b <= 24 in float32, <= 53 in float64): `precision="float64",
uniform_bits=24` is the paper's third row, "64-bit with uniforms truncated as in 32-bit": float64
arithmetic on exactly the uniforms float32 would have drawn (their mantissa truncated to 24 bits),
which isolates the uniform grid as the cause of the 32-bit effect (docs/evaluation.md).

What cannot be the same: the random numbers (JAX keys, per row and step, not torch's generator),
and the last float32 bit of a few ops that differ between torch's and XLA's kernels (log, exp,
logsumexp's summation order; a GPU may fuse a multiply-add in the time grid). The law of the
samples is MDLM's; tests/test_sampling_mdlm.py checks it against exact enumerated laws.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from mdm_jax.sampling import fn_args
from mdm_jax.sampling.plumbing import constrain, initial_tokens, row_keys, sampler_scope, step_keys

__all__ = [
    "mdlm_ancestral",
    "time_grid",
    "race",
    "uniforms",
    "subs_log_probs",
    "subs_probs",
    "check",
    "PRECISIONS",
    "EPS",
]

PRECISIONS = ("float32-pytorch", "float64")
EPS = 1e-5  # `Diffusion._sample(eps=1e-5)`
_SHIFT = 1e-10  # `_sample_categorical`'s 1e-10 guards
_MAX_BITS = {"float32-pytorch": 24, "float64": 53}


def check(precision: str, uniform_bits=None) -> int:
    """The uniform resolution (bits) of this policy, or a ValueError naming the config fields."""
    if precision not in PRECISIONS:
        raise ValueError(
            f"sampling.precision={precision!r} is not available with MDLM's sampler "
            f"(sampling.method=mdlm_ancestral): it has MDLM's exponential race in "
            f"{' or '.join(PRECISIONS)}; use another sampling.method for the other policies"
        )
    top = _MAX_BITS[precision]
    bits = top if uniform_bits in (None, 0) else int(uniform_bits)
    if not 1 <= bits <= top:
        raise ValueError(
            f"sampling.uniform_bits={uniform_bits} must be in [1, {top}] under "
            f"precision={precision!r} (0 = the policy's own {top} bits)"
        )
    return bits


def time_grid(num_steps: int, eps: float = EPS, dtype=np.float32):
    """(t [N+1], s [N], t - s [N]) as MDLM computes them, in `dtype` (numpy).

    t[N] = eps is the noise-removal time. With float32 the values are torch's to the last bit on
    a CPU (see the module docstring).
    """
    n = int(num_steps)
    if n < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    dt_ = np.dtype(dtype).type
    start, end = dt_(1.0), dt_(eps)
    step = (end - start) / dt_(n)
    idx = np.arange(n + 1)
    forward = start + step * idx.astype(dtype)
    backward = end - step * (n - idx).astype(dtype)
    t = np.where(idx < (n + 1) // 2, forward, backward).astype(dtype)
    s = (t[:-1] - dt_((1.0 - eps) / n)).astype(dtype)
    return t, s, (t[:-1] - s).astype(dtype)


def uniforms(key, shape, dtype, bits: int):
    """u = k 2^-bits, k uniform on [0, 2^bits): torch.rand's grid for bits = 24 / 53."""
    if jnp.dtype(dtype) == jnp.float64:
        raw = jax.random.bits(key, shape, jnp.uint64)
        return (raw >> (64 - bits)).astype(jnp.float64) * (2.0**-bits)
    raw = jax.random.bits(key, shape, jnp.uint32)
    return (raw >> (32 - bits)).astype(jnp.float32) * jnp.float32(2.0**-bits)


def race(key, q, bits: int):
    """MDLM's `_sample_categorical`: argmax(q / (1e-10 - log(u + 1e-10))) over the last axis.

    q: unnormalised probabilities (float32 or float64, the dtype of the whole computation).
    """
    shift = jnp.asarray(_SHIFT, q.dtype)
    denom = shift - jnp.log(uniforms(key, q.shape, q.dtype, bits) + shift)
    return jnp.argmax(q / denom, axis=-1).astype(jnp.int32)


def _rounded(x, dtype):
    """Result of a torch op on a `dtype` tensor: computed in float32, rounded to `dtype`."""
    return x.astype(dtype).astype(jnp.float32)


def subs_log_probs(logits, precision: str, normalized: bool = False):
    """log p_x0 = logits - logsumexp(logits), as MDLM computes it, in the race's dtype (float32 array
    holding the rounded values for the 32-bit policy).

    "float64" computes in float64. Otherwise each op follows torch on a tensor of the logits' dtype:
    float32 stays float32; bfloat16 / float16 logits (a network under autocast) round every op's
    result (logsumexp's exp, sum, log and add, then the subtraction) to that dtype.
    normalized=True: `logits` already are MDLM's SUBS log-probabilities (`forward`'s output, what
    `interop.load_mdlm` returns) and are used as they are, only cast.
    """
    if normalized:
        return logits.astype(jnp.float64 if precision == "float64" else jnp.float32)
    if precision == "float64":
        lg = logits.astype(jnp.float64)
        return lg - jax.nn.logsumexp(lg, axis=-1, keepdims=True)
    dtype = logits.dtype if logits.dtype in (jnp.bfloat16, jnp.float16) else jnp.float32
    lg = logits.astype(jnp.float32)
    # torch's logsumexp: amax, exp(x - max), sum, log, + max, each rounded to the tensor's dtype.
    m = jnp.max(lg, axis=-1, keepdims=True)
    e = _rounded(jnp.exp(_rounded(lg - m, dtype)), dtype)
    lse = _rounded(jnp.log(_rounded(jnp.sum(e, axis=-1, keepdims=True), dtype)), dtype)
    return _rounded(lg - _rounded(lse + m, dtype), dtype)


def subs_probs(logits, precision: str, normalized: bool = False):
    """p_x0 = exp(log p_x0) (`forward(x, sigma).exp()`), rounded like `subs_log_probs`."""
    dtype = logits.dtype if precision != "float64" and logits.dtype in (jnp.bfloat16, jnp.float16) else None
    p = jnp.exp(subs_log_probs(logits, precision, normalized))
    return p if dtype is None else _rounded(p, dtype)


def mdlm_ancestral(
    denoise_fn,
    key,
    *,
    batch_size: int,
    seq_len: int,
    mask_id: int,
    num_steps: int,
    precision: str = "float32-pytorch",
    uniform_bits: int | None = None,
    cache: bool = True,
    noise_removal: bool = True,
    eps: float = EPS,
    normalized: bool = False,
    init=None,
    batch_sharding=None,
):
    """MDLM's sampler (module docstring) for N = num_steps; returns (tokens int32[B, L], stats).

    Same denoise_fn contract as the other samplers (mask id = V = number of logit columns; it
    receives t, which an MDLM checkpoint's adapter maps to sigma(t)). `cache=True` is MDLM's rule
    for a time-free network, `cache=False` its rule for a time-conditioned one. `normalized=True`
    when denoise_fn returns MDLM's SUBS log-probabilities (`interop.load_mdlm`): p_x0 is then their
    exp, exactly MDLM's, rather than a renormalisation of them. init: optional int32[B, L] whose set
    positions never change. stats["nfe"] counts real network calls,
    including the noise-removal call.
    """
    bits = check(precision, uniform_bits)
    n = int(num_steps)
    np_dtype = np.float64 if precision == "float64" else np.float32
    t, s, d = time_grid(n, eps, np_dtype)
    with sampler_scope(precision, batch_sharding):
        init_arr = initial_tokens(init, batch_size, seq_len, mask_id)
        grid = (jnp.asarray(t.astype(np.float32)), jnp.asarray(s), jnp.asarray(d))
        fn_static, fn_leaves = fn_args.split(denoise_fn)
        tokens, nfe, changes = _mdlm(
            key,
            init_arr,
            grid,
            fn_leaves,
            denoise_fn=fn_static,
            batch_size=batch_size,
            seq_len=seq_len,
            mask_id=mask_id,
            num_steps=n,
            precision=precision,
            bits=bits,
            cache=bool(cache),
            noise_removal=bool(noise_removal),
            normalized=bool(normalized),
            batch_sharding=batch_sharding,
        )
        nfe, changes = int(nfe), int(changes)
    stats = dict(
        method="mdlm_ancestral",
        precision=precision,
        uniform_bits=bits,
        nfe=nfe,
        normalized=bool(normalized),
        num_steps=n,
        steps_with_change=changes,
        cache=bool(cache),
        noise_removal=bool(noise_removal),
        eps=float(eps),
        schedule="mdlm (move chance t)",
        temperature=1.0,
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
        "bits",
        "cache",
        "noise_removal",
        "normalized",
        "batch_sharding",
    ),
)
def _mdlm(
    key,
    init,
    grid,
    fn_leaves,
    *,
    denoise_fn,
    batch_size,
    seq_len,
    mask_id,
    num_steps,
    precision,
    bits,
    cache,
    noise_removal,
    normalized,
    batch_sharding,
):
    denoise_fn = fn_args.join(denoise_fn, fn_leaves)
    ts, ss, ds = grid
    keys = constrain(row_keys(key, batch_size), batch_sharding)
    x0 = constrain(init, batch_sharding)

    def logits(x, t):
        return denoise_fn(x, jnp.full((batch_size,), t, jnp.float32))

    def probs(x, t):
        return constrain(subs_probs(logits(x, t), precision, normalized), batch_sharding)

    out = jax.eval_shape(probs, x0, ts[0])

    def body(i, carry):
        x, p, fresh, nfe, changes = carry
        # p is MDLM's p_x0_cache: kept while `fresh`, else recomputed from the current x.
        p = jax.lax.cond(fresh, lambda: p, lambda: probs(x, ts[i]))
        nfe = nfe + jnp.logical_not(fresh).astype(jnp.int32)
        q = jnp.concatenate([p * ds[i], jnp.broadcast_to(ss[i], p.shape[:-1] + (1,))], axis=-1)
        draw = jax.vmap(lambda k, qq: race(k, qq, bits))(step_keys(keys, i), q)
        x_new = constrain(jnp.where(x == mask_id, draw, x), batch_sharding)  # draw V = the mask id
        changed = jnp.any(x_new != x)
        fresh = jnp.logical_and(jnp.bool_(cache), jnp.logical_not(changed))
        return x_new, p, fresh, nfe, changes + changed.astype(jnp.int32)

    p0 = constrain(jnp.zeros(out.shape, out.dtype), batch_sharding)
    carry = (x0, p0, jnp.bool_(False), jnp.int32(0), jnp.int32(0))
    x, _, _, nfe, changes = jax.lax.fori_loop(0, num_steps, body, carry)
    if noise_removal:
        # `forward(x, sigma(eps)).argmax(-1)`: greedy at the positions still masked.
        log_p = subs_log_probs(logits(x, ts[num_steps]), precision, normalized)
        greedy = jnp.argmax(log_p, axis=-1).astype(jnp.int32)
        x = constrain(jnp.where(x == mask_id, greedy, x), batch_sharding)
        nfe = nfe + 1
    return x, nfe, changes
