"""The original (ancestral) sampler against its exact enumerated law, the joint and NFE counts."""

import importlib.util
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import ROOT
from mdm_jax import sampling, schedules
from mdm_jax.models import adapters
from mdm_jax.models.transformer import Transformer
from mdm_jax.reference.joint import ReferenceJoint, ancestral_law, chisquare_pvalue
from mdm_jax.sampling.ancestral import step_coefficients
from mdm_jax.sampling.plumbing import sampler_scope

ALPHA, REJECT = 1e-3, 1e-8
V, L, B = 3, 3, 20000
REF = ReferenceJoint(V, L, seed=0)
LINEAR = schedules.get("linear")


def _anc(key, n, **kw):
    kw.setdefault("schedule", LINEAR)
    return sampling.ancestral(
        REF.denoise_fn,
        jax.random.key(key),
        batch_size=kw.pop("b", B),
        seq_len=L,
        mask_id=V,
        num_steps=n,
        **kw,
    )


def _law(n, schedule=LINEAR, init=None):
    return ancestral_law(REF, step_coefficients(schedule, n)[3], init)


def test_one_step_samples_the_product_of_marginals():
    tokens, st = _anc(1, 1, precision="float32", cache=False)
    ids = REF.index(np.asarray(tokens))
    assert st["nfe"] == 1 and not (np.asarray(tokens) == V).any()
    np.testing.assert_allclose(_law(1), REF.product_of_marginals(), atol=1e-12)
    assert chisquare_pvalue(ids, REF.product_of_marginals()) > ALPHA
    assert chisquare_pvalue(ids, REF.probs) < REJECT


def test_approaches_the_joint_as_steps_grow():
    tv = [0.5 * np.abs(_law(n) - REF.probs).sum() for n in (1, 4, 16, 64, 256)]
    assert all(a > b for a, b in zip(tv, tv[1:])) and tv[-1] < 0.01 < tv[0]
    # The sampler follows the exact N-step law (float64, cosine schedule, no cache).
    cos = schedules.get("cosine")
    tokens, st = _anc(2, 6, precision="float64", schedule=cos, cache=False)
    assert st["nfe"] == 6 and st["precision"] == "float64"
    assert chisquare_pvalue(REF.index(np.asarray(tokens)), _law(6, cos)) > ALPHA


def test_factorized_float32_matches_the_exact_law():
    tokens, _ = _anc(3, 6, precision="float32", factorized=True)
    assert chisquare_pvalue(REF.index(np.asarray(tokens)), _law(6)) > ALPHA


def test_low_precision_truncation_and_factorized_immunity():
    # bfloat16 (cap 4.85) at N = 32: tokens of probability ~mu/32 race the mask class and lose,
    # so the plain sampler leaves the exact law (measured TV 0.077); the factorized draw has no
    # such race (TV 0.022, what is left being bfloat16's rounding of the V-way logits).
    n, b = 32, 8000
    plain, _ = _anc(4, n, precision="bfloat16", b=b)
    assert chisquare_pvalue(REF.index(np.asarray(plain)), _law(n)) < REJECT
    fact, _ = _anc(4, n, precision="bfloat16", factorized=True, b=b)

    def tv(ids):
        return 0.5 * np.abs(np.bincount(ids, minlength=V**L) / b - _law(n)).sum()

    assert tv(REF.index(np.asarray(fact))) < 0.5 * tv(REF.index(np.asarray(plain)))


def test_prompts_are_kept():
    init = np.tile(np.array([[V, 1, V]], np.int32), (B, 1))
    tokens, _ = _anc(5, 4, precision="float32", init=jnp.asarray(init))
    tokens = np.asarray(tokens)
    assert (tokens[:, 1] == 1).all()
    assert chisquare_pvalue(REF.index(tokens), _law(4, init=init[0])) > ALPHA


def test_cache_counts_real_calls():
    # Time-free net, small batch, many steps: most steps change nothing and reuse the output.
    n, b = 40, 2
    calls = []

    def counting(x, t):
        jax.debug.callback(lambda xx: calls.append(np.asarray(xx).copy()), x)
        return REF.denoise_fn(x, t)

    tok_nc, st_nc = sampling.ancestral(
        counting,
        jax.random.key(6),
        batch_size=b,
        seq_len=L,
        mask_id=V,
        schedule=LINEAR,
        num_steps=n,
        cache=False,
    )
    inputs_nc = list(calls)
    calls.clear()
    tok_c, st_c = sampling.ancestral(
        counting,
        jax.random.key(6),
        batch_size=b,
        seq_len=L,
        mask_id=V,
        schedule=LINEAR,
        num_steps=n,
        cache=True,
    )
    assert st_nc["nfe"] == n == len(inputs_nc)
    np.testing.assert_array_equal(tok_c, tok_nc)  # the cache is exact for a time-free net
    # Independent count: one call, then one more after every step whose input differs.
    changes = sum(not np.array_equal(a, b) for a, b in zip(inputs_nc, inputs_nc[1:]))
    assert st_c["nfe"] == len(calls) == 1 + changes < n


def _benchmark_module():
    """benchmarks/ancestral_cache.py, which keeps the cached loop's previous (lax.cond) formulation."""
    spec = importlib.util.spec_from_file_location(
        "bench_ancestral_cache", os.path.join(ROOT, "benchmarks", "ancestral_cache.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
@pytest.mark.parametrize("precision,factorized", [("float32", False), ("float64", False), ("float32", True)])
def test_restructured_cache_draws_the_tokens_of_the_cond_loop(precision, factorized):
    # A time-conditioned network (the cache then reuses an output computed at an earlier time, so
    # cached and uncached runs differ): the restructured loop must give bitwise the tokens, call
    # count and change count of the lax.cond formulation it replaced.
    v, length, b, n = 11, 6, 3, 24
    model = Transformer(
        vocab_size=v,
        max_len=length,
        num_layers=1,
        num_heads=2,
        emb_dim=16,
        mlp_dim=24,
        time_conditioning=True,
    )
    # Jitted: an eager init compiles each of its ~100 ops on its own (seconds on this CPU).
    params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, length), jnp.int32), jnp.zeros((1,)))[
        "params"
    ]
    params = jax.tree.map(lambda p: p + 0.3 * jax.random.normal(jax.random.key(1), p.shape), params)
    fn = adapters.denoise_fn(model, params)
    tokens, st = sampling.ancestral(
        fn,
        jax.random.key(7),
        batch_size=b,
        seq_len=length,
        mask_id=v,
        schedule=LINEAR,
        num_steps=n,
        precision=precision,
        factorized=factorized,
    )
    bench = _benchmark_module()
    with sampler_scope(precision):  # x64 on for float64: its coefficients stay float64
        coefs = jax.tree.map(jnp.asarray, bench.cond_coefficients(LINEAR, n, precision))
        ref, nfe, changes = bench.cond_loop(
            jax.random.key(7),
            jnp.full((b, length), v, jnp.int32),
            coefs,
            denoise_fn=lambda x, t: fn(x, t),
            mask_id=v,
            n=n,
            precision=precision,
            factorized=factorized,
        )
    np.testing.assert_array_equal(np.asarray(tokens), np.asarray(ref))
    assert (st["nfe"], st["steps_with_change"]) == (int(nfe), int(changes))
    assert 1 < st["nfe"] < n and not (np.asarray(tokens) == v).any()
