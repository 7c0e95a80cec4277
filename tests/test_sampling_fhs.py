"""First-hitting sampler against exact reference distributions (chi-square, fixed seeds)."""

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from mdm_jax import sampling, schedules
from mdm_jax.reference.joint import ReferenceJoint, chisquare_pvalue, parallel_fhs_law

ALPHA = 1e-3  # a correct sampler is rejected at this level with probability 1e-3 (fixed seeds)
REJECT = 1e-8  # a wrong law must be rejected at least this strongly
V, L, B = 3, 3, 20000
REF = ReferenceJoint(V, L, seed=0)


def _fhs(key, **kw):
    kw.setdefault("schedule", schedules.get("linear"))
    return sampling.first_hitting(
        REF.denoise_fn, jax.random.key(key), batch_size=kw.pop("b", B), seq_len=L, mask_id=V, **kw
    )


@pytest.mark.parametrize("precision,schedule", [("float64", "linear"), ("float32", "cosine")])
def test_fhs_samples_the_joint(precision, schedule):
    tokens, stats_ = _fhs(1, precision=precision, schedule=schedules.get(schedule))
    tokens = np.asarray(tokens)
    assert tokens.dtype == np.int32 and tokens.shape == (B, L) and not (tokens == V).any()
    assert stats_["nfe"] == L and stats_["precision"] == precision
    assert chisquare_pvalue(REF.index(tokens), REF.probs) > ALPHA
    assert chisquare_pvalue(REF.index(tokens), REF.product_of_marginals()) < REJECT
    assert not jax.config.jax_enable_x64  # the float64 scope does not leak


def test_fhs_with_prompts_samples_the_conditionals():
    # Three prompt patterns, one fully set row type (nothing to do), rows differ in mask counts.
    patterns = np.array([[1, V, V], [V, V, 0], [V, 2, V], [2, 0, 1]], np.int32)
    rows = np.repeat(np.arange(4), [6000, 6000, 6000, 2000])
    init = patterns[rows]
    tokens, stats_ = _fhs(2, precision="float32", init=jnp.asarray(init))
    tokens = np.asarray(tokens)
    assert stats_["nfe"] == 2  # ceil(max masks / k): the busiest row has 2
    set_ = init != V
    np.testing.assert_array_equal(tokens[set_], init[set_])
    for r in range(3):
        sel = tokens[rows == r]
        assert chisquare_pvalue(REF.index(sel), REF.conditional_joint(patterns[r], V)) > ALPHA


def test_parallel_variant_exact_for_k1_biased_for_k2():
    # k = 2 over L = 3: exact law = uniform pair, independent draws, then the last token.
    tokens, stats_ = _fhs(3, precision="float32", tokens_per_step=2)
    ids = REF.index(np.asarray(tokens))
    assert stats_["nfe"] == 2 and stats_["tokens_per_step"] == 2
    assert chisquare_pvalue(ids, parallel_fhs_law(REF, 2)) > ALPHA
    assert chisquare_pvalue(ids, REF.probs) < REJECT
    # The enumerated law of k = 1 is the joint (sanity of the reference) and k = L the product.
    np.testing.assert_allclose(parallel_fhs_law(REF, 1), REF.probs, atol=1e-12)
    np.testing.assert_allclose(parallel_fhs_law(REF, L), REF.product_of_marginals(), atol=1e-12)


def _time_probe(threshold):
    """A net whose token at the chosen position says whether its time tau <= threshold."""

    def fn(x, t):
        hit = (t <= threshold)[:, None, None]
        one, zero = jnp.array([-1e9, 0.0]), jnp.array([0.0, -1e9])
        return jnp.broadcast_to(jnp.where(hit, one, zero), x.shape + (2,))

    return fn


@pytest.mark.parametrize("schedule", ["cosine", "loglinear"])
def test_fhs_times_are_first_hitting_times(schedule):
    # The L unmasking times are the reversed forward masking times: iid with CDF m(t)/m(1), so the
    # number of tokens unmasked at tau <= c is Binomial(L, m(c)/m(1)).
    sched, c, n = schedules.get(schedule), 0.4, 4
    tokens, _ = sampling.first_hitting(
        _time_probe(c),
        jax.random.key(4),
        batch_size=B,
        seq_len=n,
        mask_id=2,
        schedule=sched,
        precision="float32",
    )
    ones = np.asarray(tokens).sum(axis=1)
    q = float(sched.mask_level(c)) / float(sched.mask_level(1.0))
    exp = stats.binom.pmf(np.arange(n + 1), n, q) * B
    assert stats.chisquare(np.bincount(ones, minlength=n + 1), exp).pvalue > ALPHA


def _fhs_compiles(caplog, **kw):
    """(stats, whether the call compiled the sampler's loop), from JAX's compile log."""
    caplog.clear()
    with caplog.at_level(logging.WARNING), jax.log_compiles(True):
        _, stats_ = _fhs(**kw)
    return stats_, any("Compiling" in r.getMessage() and "_fhs" in r.getMessage() for r in caplog.records)


def test_nfe_and_compile_cache(caplog):
    s1, compiled = _fhs_compiles(caplog, key=5, precision="float32", tokens_per_step=2, b=64)
    assert compiled  # a new shape: the loop compiles (and the log shows it)
    s2, compiled = _fhs_compiles(
        caplog, key=6, precision="float32", tokens_per_step=2, b=64, schedule=schedules.get("linear")
    )  # a fresh but equal schedule
    assert s1["nfe"] == s2["nfe"] == 2
    assert not compiled
    with pytest.raises(ValueError, match="float32-pytorch"):
        _fhs(0, precision="fp32")


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_fhs_times_with_prompts_count_only_the_masks(schedule):
    # With P prompt positions set, a row has n = L - P masks, and its unmasking times are the
    # first-hitting times of those n masks: the number unmasked at tau <= c is Binomial(n, q). A
    # time formula that counted the prompt positions as masks would give the n *latest* of L
    # hitting times instead; the probe net sees the time it is called at, so that would show.
    sched, c, length = schedules.get(schedule), 0.4, 6
    prompt_lengths = np.repeat([0, 2, 4], B // 3)
    init = np.full((len(prompt_lengths), length), 2, np.int32)  # mask id 2
    for p in (2, 4):
        init[prompt_lengths == p, :p] = 0  # prompt token 0
    tokens, stats_ = sampling.first_hitting(
        _time_probe(c),
        jax.random.key(7),
        batch_size=len(init),
        seq_len=length,
        mask_id=2,
        schedule=sched,
        precision="float32",
        init=jnp.asarray(init),
    )
    tokens = np.asarray(tokens)
    assert stats_["nfe"] == length and (tokens[init == 0] == 0).all()
    q = float(sched.mask_level(c)) / float(sched.mask_level(1.0))
    for p in (0, 2, 4):
        n = length - p
        ones = tokens[prompt_lengths == p].sum(axis=1)  # prompt tokens are 0
        exp = stats.binom.pmf(np.arange(n + 1), n, q) * len(ones)
        assert stats.chisquare(np.bincount(ones, minlength=n + 1), exp).pvalue > ALPHA, p
