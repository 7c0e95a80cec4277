"""sampling.categorical under each precision policy against the exact finite-precision laws.

Distributions mix one large probability with small ones, like one original-sampler step. For
bfloat16/float16 the grid is coarse enough that the censoring shows in 2e5-4e5 draws; the float32
grids (2^-23, 2^-24) would need ~1e9 draws per check, so MDLM's arithmetic is tested on a coarse
grid of the very same code path (`exponential_race(uniform_bits=8)`), and the float32 policies
at full resolution only for agreement with their (there nearly true) laws.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.extend.random import define_prng_impl
from scipy import stats

from mdm_jax import precision as P, sampling
from mdm_jax.sampling.categorical import exponential_race

ALPHA = 1e-3  # tests fail when a correct law is rejected at this level (fixed seeds)


def _draws(fn, logits, n, chunk=100_000, seed=0):
    """Counts of n draws (vectorised in chunks) of fn(key, logits[chunk, C])."""
    c = logits.shape[-1]
    f = jax.jit(lambda k: jnp.bincount(fn(k, jnp.broadcast_to(logits, (chunk, c))), length=c))
    key = jax.random.key(seed)
    counts = sum(np.asarray(f(jax.random.fold_in(key, i))) for i in range(n // chunk))
    return counts.astype(float)


def _pvalue(counts, law):
    """Chi-square with the tiny-probability categories pooled by their (equal) probability."""
    law = np.asarray(law, float)
    groups = {}
    for i, q in enumerate(law):
        groups.setdefault(round(float(q), 15), []).append(i)
    obs = np.array([counts[idx].sum() for idx in groups.values()])
    exp = np.array([law[idx].sum() for idx in groups.values()]) * counts.sum()
    return stats.chisquare(obs, exp).pvalue


def _mix(big_share, small):
    small = np.asarray(small, float)
    return np.concatenate([[1.0 - small.sum()], small]) if big_share else small


CASES = {
    # policy: (probabilities, draws)
    "bfloat16": (_mix(True, [2e-3] * 8 + [1e-2] * 4), 200_000),
    "float16": (_mix(True, [3e-4] * 8 + [2e-3] * 4), 400_000),
}


@pytest.mark.parametrize("policy", ["bfloat16", "float16"])
def test_low_precision_matches_grid_law_not_truth(policy):
    probs, n = CASES[policy]
    logits = jnp.log(jnp.asarray(probs, jnp.float32))
    counts = _draws(functools.partial(sampling.categorical, precision=policy), logits, n)
    law = P.grid_law(probs, policy)
    assert _pvalue(counts, law) > ALPHA
    assert _pvalue(counts, probs) < 1e-12  # the truncation is real and visible
    assert law[1:].sum() < 0.8 * probs[1:].sum()


def test_pytorch_arithmetic_matches_grid_law_on_coarse_grid():
    probs = _mix(True, [1e-3] * 6 + [5e-3] * 2)
    logits = jnp.log(jnp.asarray(probs, jnp.float32))
    counts = _draws(lambda k, lg: exponential_race(k, lg, uniform_bits=8), logits, 400_000)
    grid = dataclasses.replace(P.policy_grid("float32-pytorch"), d=2.0**-8, num_points=256, u_max=1 - 2.0**-8)
    law = P.grid_law(probs, grid)
    assert _pvalue(counts, law) > ALPHA
    assert _pvalue(counts, probs) < 1e-12
    # Prop. 5.2 (truncation at the same cap) is not the law of this draw either.
    assert _pvalue(counts, P.prop52_law(probs, grid.cap)) < 1e-12


@pytest.mark.parametrize("policy", ["float64", "float32-high", "float32", "float32-pytorch"])
def test_fine_grids_match_their_law(policy):
    # Probabilities 1e-4..1e-2: the float32 grids change them by < 0.1% (undetectable here),
    # float64 and float32-high sample the true law.
    probs = _mix(True, [1e-4] * 10 + [1e-2] * 3)
    logits = jnp.log(jnp.asarray(probs, jnp.float32))
    with sampling.categorical_scope(policy):  # x64 for the float64 trace
        counts = _draws(
            functools.partial(sampling.categorical, precision=policy), logits, 100_000, chunk=50_000, seed=1
        )
    assert _pvalue(counts, P.grid_law(probs, policy)) > ALPHA
    if policy in ("float64", "float32-high"):
        assert _pvalue(counts, probs) > ALPHA


def test_policy_errors_and_dtypes():
    key, logits = jax.random.key(0), jnp.zeros((4, 3))
    with pytest.raises(ValueError, match="float32-pytorch"):
        sampling.categorical(key, logits, precision="float128")
    # Eager float64 turns x64 on for itself, leaves it off, returns int32.
    out = sampling.categorical(key, logits, precision="float64")
    assert out.dtype == jnp.int32 and not jax.config.jax_enable_x64
    # Inside a trace made without x64 a float64 draw must fail, not silently become float32.
    with pytest.raises(RuntimeError, match="x64"):
        jax.jit(lambda k, lg: sampling.categorical(k, lg, precision="float64"))(key, logits)


# ----------------------------------------------------------------------------- the 24-bit grid itself

TOP_BITS = 20


def _top_heavy_prng():
    """A PRNG whose random words have their top TOP_BITS bits set (the rest threefry's bits).

    With it every uniform u = k 2^-b lands in the top 2^-20 of [0, 1), where the grid is all there
    is: under 24-bit uniforms (torch.rand's float32) u = 1 - m 2^-24 with m uniform on 1..16, under
    23-bit ones only m = 2, 4, ..., 16. A uniform key stream reaches that region once in 2^20
    draws; this one every time, so the grid's resolution shows in 2e5 draws.
    """

    def wrap(k):
        return jax.random.wrap_key_data(k)

    def random_bits(k, bit_width, shape):
        dtype = jnp.dtype(f"uint{bit_width}")
        top = ((1 << TOP_BITS) - 1) << (bit_width - TOP_BITS)
        return jax.random.bits(wrap(k), shape, dtype) | jnp.asarray(top, dtype)

    return define_prng_impl(
        key_shape=(2,),
        seed=lambda s: jax.random.key_data(jax.random.key(s)),
        split=lambda k, shape: jax.random.key_data(jax.random.split(wrap(k), shape)),
        random_bits=random_bits,
        fold_in=lambda k, d: jax.random.key_data(jax.random.fold_in(wrap(k), d)),
        name="top_heavy",
    )


def _race_law(p0: float, bits: int) -> float:
    """P(category 0 of [p0, 1 - p0] wins MDLM's race) when both uniforms are uniform on the top
    grid points of a `bits`-bit grid, enumerated with the race's own formula."""
    steps = 1 << (bits - TOP_BITS)  # grid points in the top 2^-TOP_BITS
    u = 1.0 - np.arange(1, steps + 1) * 2.0**-bits
    e = 1e-10 - np.log(u + 1e-10)
    return float(np.mean(p0 / e[:, None] > (1 - p0) / e[None, :]))


def test_float32_pytorch_draws_from_the_24_bit_grid():
    # p1 / p0 = 3.3 is no ratio of two small integers: no ties on either grid.
    p0, n = 1 / 4.3, 200_000
    logits = jnp.log(jnp.asarray([[p0, 1 - p0]], jnp.float32))
    key = jax.random.key(0, impl=_top_heavy_prng())
    wins = int(
        np.sum(
            np.asarray(sampling.categorical(key, jnp.broadcast_to(logits, (n, 2)), "float32-pytorch")) == 0
        )
    )
    law24, law23 = _race_law(p0, 24), _race_law(p0, 23)  # 33/256 and 7/64
    assert abs(law24 - law23) > 0.015
    assert stats.binomtest(wins, n, law24).pvalue > ALPHA
    assert stats.binomtest(wins, n, law23).pvalue < 1e-8  # a 23-bit grid would be caught
