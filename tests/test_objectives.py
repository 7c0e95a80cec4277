"""Objectives against exact enumerable models (mdm_jax/reference/joint.py).

Statistical tests use fixed seeds; Monte Carlo means must match the exact value within 4 standard
errors (computed from the draws themselves: batch means of independent batches when the draws
within a batch are stratified), and the standard error itself must be small, so a broken
estimator cannot pass by being noisy.
"""

from __future__ import annotations

import functools
import itertools
import math
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special

from mdm_jax import config as config_lib, objectives, schedules
from mdm_jax.reference.joint import ReferenceJoint

V, L = 3, 4
DATA = ReferenceJoint(vocab=V, length=L, seed=0)  # the data distribution p
MODEL = ReferenceJoint(vocab=V, length=L, seed=1)  # a wrong denoiser q (NELBO strictly > H(p))
SCHEDULES = [
    ("linear", {}),
    ("cosine", {}),
    ("polynomial", {"schedule_k": 3.0}),
    ("loglinear", {"schedule_eps": 0.05}),
]


def objective(kind="continuous", schedule="linear", low_discrepancy=False, **kw):
    c = config_lib.base()
    c.objective.kind, c.objective.schedule, c.objective.low_discrepancy = kind, schedule, low_discrepancy
    c.objective.update(kw)
    return c.objective


def entropy(p):
    return float(-np.sum(p * np.log(p)))


def exact_per_n(denoise_fn):
    """c_n = E_{x~p, |M|=n} mean_{l in M} -log q(x_l | x_unmasked), n = 1..L, by enumeration."""
    c = np.zeros(L + 1)
    for n in range(1, L + 1):
        subsets = list(itertools.combinations(range(L), n))
        for m in subsets:
            x = DATA.seqs.copy()
            x[:, list(m)] = V
            logits = np.asarray(denoise_fn(jnp.asarray(x), None), np.float64)
            logq = logits - special.logsumexp(logits, axis=-1, keepdims=True)
            ce = -np.take_along_axis(logq, DATA.seqs[..., None], -1)[..., 0]  # [S, L]
            c[n] += np.sum(DATA.probs * ce[:, list(m)].mean(-1)) / len(subsets)
    return c


C_MODEL = exact_per_n(MODEL.denoise_fn)


def exact_continuous(c_n, sched, t_min):
    """The continuous NELBO over t in [t_min, 1], exactly: with m = 1 - alpha(t) the weight is dm/m,
    and n masks out of L have weight C(L,n) n m^(n-1)(1-m)^(L-n) dm = d betainc(n, L-n+1, m)."""
    lo, hi = float(sched.mask_level(t_min)), float(sched.mask_level(1.0))
    n = np.arange(1, L + 1)
    return float(np.sum(c_n[1:] * (special.betainc(n, L - n + 1, hi) - special.betainc(n, L - n + 1, lo))))


def draw_data(seed, n):
    ids = np.random.default_rng(seed).choice(len(DATA.probs), size=n, p=DATA.probs)
    return jnp.asarray(DATA.seqs[ids], jnp.int32)


@functools.cache
def _batched_estimator(items):
    obj = types.SimpleNamespace(**dict(items))

    def one_batch(x0, key):
        c = objectives.corrupt(x0, key, obj, vocab_size=V)
        return objectives.sequence_losses(MODEL.denoise_fn(c.inputs, c.t), c)

    return jax.jit(jax.vmap(one_batch))


def per_sequence(x0, key, obj):
    """Per-sequence NELBO estimates [batches, B] of q on x0 [batches, B, L]; batch i uses key fold(key, i)
    (independent batches: one shared u per batch when the draws are stratified)."""
    items = tuple(
        (k, obj[k]) for k in ("kind", "schedule", "schedule_k", "schedule_eps", "low_discrepancy", "t_min")
    )
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(x0.shape[0]))
    return np.asarray(_batched_estimator(items)(x0, keys), np.float64)


# ----------------------------------------------------------------------------- schedules


@pytest.mark.parametrize("name,kw", SCHEDULES)
def test_schedule_alpha_inverse_and_derivative_agree(name, kw):
    with jax.enable_x64(True):
        s = schedules.get(name, k=kw.get("schedule_k", 2.0), eps=kw.get("schedule_eps", 1e-3))
        t = np.linspace(0.01, 0.99, 99)
        a = np.asarray(s.alpha(t))
        assert float(s.alpha(0.0)) == pytest.approx(1.0, abs=1e-12)
        assert float(s.alpha(1.0)) == pytest.approx(kw.get("schedule_eps", 0.0), abs=1e-12)
        assert np.all(np.diff(a) < 0)  # strictly decreasing
        np.testing.assert_allclose(np.asarray(s.inverse(a)), t, atol=1e-10)
        h = 1e-6
        fd = (np.asarray(s.alpha(t + h)) - np.asarray(s.alpha(t - h))) / (2 * h)
        np.testing.assert_allclose(np.asarray(s.dalpha(t)), fd, rtol=1e-6, atol=1e-8)
        np.testing.assert_allclose(np.asarray(s.weight(t)), -fd / (1 - a), rtol=1e-6)


# ----------------------------------------------------------------------------- exact NELBO


def test_exact_nelbo_bounds_the_entropy():
    """Prop. 3.1's sum over n is >= H(p) for any denoiser, with equality for the true one (it is the
    chain rule averaged over random orders)."""
    h = entropy(DATA.probs)
    true_nelbo = exact_per_n(DATA.denoise_fn)[1:].sum()
    assert true_nelbo == pytest.approx(h, rel=1e-4)
    assert C_MODEL[1:].sum() > h + 0.05


@pytest.mark.parametrize(
    "name,kw,low_discrepancy", [(n, kw, False) for n, kw in SCHEDULES] + [("linear", {}, True)]
)
def test_continuous_estimator_is_unbiased(name, kw, low_discrepancy):
    obj = objective("continuous", name, low_discrepancy, t_min=1e-4, **kw)
    sched = objectives.schedule_of(obj)
    target = exact_continuous(C_MODEL, sched, obj.t_min)
    batches, batch = 400, 64
    x0 = draw_data(1, batches * batch).reshape(batches, batch, L)
    means = per_sequence(x0, jax.random.key(2), obj).mean(-1)  # iid batch means
    se = means.std(ddof=1) / math.sqrt(batches)
    assert se < 0.03 * target
    assert abs(means.mean() - target) < 4 * se, (means.mean(), target, se)
    if name != "loglinear":  # alpha(1) = 0: the continuous NELBO is Prop. 3.1's sum (up to t_min)
        assert target == pytest.approx(C_MODEL[1:].sum(), rel=1e-3)
    else:  # alpha(1) = eps: mask levels above 1 - eps are left out
        assert target < C_MODEL[1:].sum() - 0.05


@pytest.mark.parametrize("low_discrepancy", [False, True])
def test_discrete_estimator_is_unbiased(low_discrepancy):
    obj = objective("discrete", low_discrepancy=low_discrepancy)
    target = C_MODEL[1:].sum()
    batches, batch = 400, 64
    x0 = draw_data(3, batches * batch).reshape(batches, batch, L)
    means = per_sequence(x0, jax.random.key(4), obj).mean(-1)
    se = means.std(ddof=1) / math.sqrt(batches)
    assert se < 0.02 * target
    assert abs(means.mean() - target) < 4 * se, (means.mean(), target, se)


def test_discrete_masks_exactly_n_and_gives_the_mask_ratio_as_time():
    x0 = draw_data(5, 256)
    obj = objective("discrete", low_discrepancy=True)
    c = jax.jit(lambda x, k: objectives.corrupt(x, k, obj, vocab_size=V))(x0, jax.random.key(6))
    n = np.asarray(c.scored.sum(-1))
    np.testing.assert_array_equal(np.sort(n), np.repeat(np.arange(1, L + 1), 256 // L))
    np.testing.assert_allclose(np.asarray(c.t), n / L, rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(c.inputs == V), np.asarray(c.scored))
    np.testing.assert_allclose(np.asarray(c.weights)[np.asarray(c.scored)], np.repeat(L / n, n), rtol=1e-6)


def test_continuous_mask_rate_follows_the_schedule():
    """Each token is masked independently with prob 1 - alpha(t): check the rate in t-bins."""
    obj = objective("continuous", "cosine", low_discrepancy=True)
    length = 512
    x0 = jnp.zeros((128, length), jnp.int32)
    c = jax.jit(lambda x, k: objectives.corrupt(x, k, obj, vocab_size=V))(x0, jax.random.key(7))
    rate = np.asarray(c.scored.mean(-1))
    m = np.asarray(objectives.schedule_of(obj).mask_level(c.t))
    # Binomial(512, m) rate: sd <= 0.5/sqrt(512) = 0.022; 5 sd.
    assert np.max(np.abs(rate - m)) < 0.11
    assert abs(np.mean(rate - m)) < 0.5 / math.sqrt(length * 128) * 5


# ----------------------------------------------------------------------------- low discrepancy


def test_low_discrepancy_draws_are_stratified():
    for b in (1, 7, 64):
        for i in range(5):
            u = np.asarray(objectives.uniforms(jax.random.key(i), b, True))
            np.testing.assert_array_equal(np.floor(u * b), np.arange(b))  # one per bin
        t = np.asarray(objectives.sample_times(jax.random.key(9), b, 0.1, True))
        np.testing.assert_array_equal(np.floor((t - 0.1) / 0.9 * b), np.arange(b))
    n = np.asarray(objectives.sample_num_masked(jax.random.key(10), 3 * L, L, True))
    np.testing.assert_array_equal(np.sort(n), np.repeat(np.arange(1, L + 1), 3))
    # iid draws are not stratified (so the check above can fail).
    u = np.asarray(objectives.uniforms(jax.random.key(0), 64, False))
    assert len(np.unique(np.floor(u * 64))) < 64


def ratio_aware_logits(tokens, t):
    """A fixed network whose confidence grows with the mask ratio r of its input row: logits
    6 r * onehot(0) over 8 tokens. Its CE then depends strongly on t (as a real model's does),
    which is the part of the variance that stratifying t (or n) across the batch removes."""
    r = jnp.mean(tokens == 8, axis=-1, keepdims=True)[..., None]
    return jnp.broadcast_to(6.0 * r * jax.nn.one_hot(0, 8), (*tokens.shape, 8))


@pytest.mark.parametrize("kind", ["continuous", "discrete"])
def test_low_discrepancy_reduces_variance(kind):
    """Variance of the batch-mean loss over 300 batches of 32 sequences (L = 128, iid uniform tokens
    over 8 symbols), stratified vs iid draws with the same keys."""
    batches, batch, length = 300, 32, 128
    x0 = jax.random.randint(jax.random.key(11), (batches, batch, length), 0, 8)
    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(12), i))(jnp.arange(batches))
    var = {}
    for ld in (False, True):
        obj = objective(kind, "linear", ld)

        def one_batch(x, k, obj=obj):
            c = objectives.corrupt(x, k, obj, vocab_size=8)
            return jnp.mean(objectives.sequence_losses(ratio_aware_logits(c.inputs, c.t), c))

        var[ld] = float(np.var(np.asarray(jax.jit(jax.vmap(one_batch))(x0, keys)), ddof=1))
    # F-test with 299/299 dof: a ratio < 0.5 has p < 1e-8 if the variances were equal.
    assert var[True] < 0.5 * var[False], var


# ----------------------------------------------------------------------------- ARM and loss_fn


def test_arm_loss_is_the_exact_nll():
    c = config_lib.base()
    c.objective.kind = "arm"
    c.model.vocab_size = V
    x0 = draw_data(13, 512)
    apply_fn = lambda variables, tokens, t, deterministic, rngs: DATA.arm_logits_fn(tokens)  # noqa: E731
    loss, aux = jax.jit(lambda x, k: objectives.loss_fn(apply_fn, None, x, k, c, train=False))(
        x0, jax.random.key(0)
    )
    nll = -np.log(DATA.probs[DATA.index(np.asarray(x0))])
    assert float(loss) == pytest.approx(nll.mean() / L, rel=1e-5)
    assert float(aux["bits_per_token"]) == pytest.approx(nll.mean() / L / math.log(2), rel=1e-5)
    assert float(aux["perplexity"]) == pytest.approx(math.exp(nll.mean() / L), rel=1e-5)
    # The input is [BOS = V, x_0 .. x_{L-2}]: every token is predicted.
    ca = objectives.corrupt(x0, None, c.objective, vocab_size=V)
    np.testing.assert_array_equal(np.asarray(ca.inputs[:, 0]), V)
    np.testing.assert_array_equal(np.asarray(ca.inputs[:, 1:]), np.asarray(x0[:, :-1]))


def test_loss_fn_passes_time_only_to_time_conditioned_networks():
    """What the network receives (traced with eval_shape: the call signature is the point here)."""
    seen = {}

    def apply_fn(variables, tokens, t, deterministic, rngs):
        seen.update(t=t, det=deterministic, rngs=rngs)
        return MODEL.denoise_fn(tokens, t)

    c = config_lib.base()
    c.model.vocab_size = V
    x0 = draw_data(14, 8)
    for tc, kind, train in [
        (True, "continuous", True),
        (False, "continuous", True),
        (True, "discrete", False),
        (True, "arm", False),
    ]:
        c.model.time_conditioning, c.objective.kind = tc, kind
        jax.eval_shape(
            lambda x, k, train=train: objectives.loss_fn(apply_fn, None, x, k, c, train=train),
            x0,
            jax.random.key(1),
        )
        if tc and kind != "arm":
            assert seen["t"].shape == (8,) and seen["t"].dtype == jnp.float32
        else:
            assert seen["t"] is None
        assert seen["det"] is (not train)
        assert ("dropout" in seen["rngs"]) is train


def test_unknown_schedule_and_kind_name_the_field():
    x0 = draw_data(15, 4)
    with pytest.raises(ValueError, match="objective.schedule"):
        objectives.corrupt(x0, jax.random.key(0), objective("continuous", "cosin"), vocab_size=V)
    with pytest.raises(ValueError, match="objective.kind"):
        objectives.corrupt(x0, jax.random.key(0), objective("diffusion"), vocab_size=V)
