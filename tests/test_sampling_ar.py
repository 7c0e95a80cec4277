"""Autoregressive decoding: cached == uncached, exact ARM joint, prompts, temperature."""

import jax
import jax.numpy as jnp
import numpy as np

from mdm_jax import sampling
from mdm_jax.reference.joint import ReferenceJoint, chisquare_pvalue

ALPHA, REJECT = 1e-3, 1e-8
V, L, B = 3, 3, 20000
REF = ReferenceJoint(V, L, seed=1)


def _both(key, b=B, **kw):
    cached, st = sampling.autoregressive(
        REF.arm_step_fn, REF.init_arm_state(b), jax.random.key(key), batch_size=b, seq_len=L, **kw
    )
    full, st_u = sampling.autoregressive_uncached(
        REF.arm_logits_fn, jax.random.key(key), batch_size=b, seq_len=L, **kw
    )
    np.testing.assert_array_equal(np.asarray(cached), np.asarray(full))
    assert st["nfe"] == st_u["nfe"] == L
    return np.asarray(cached)


def test_cached_equals_uncached_and_samples_the_joint():
    for key, precision in ((1, "float64"), (2, "float32")):
        tokens = _both(key, precision=precision)
        assert tokens.dtype == np.int32 and tokens.shape == (B, L)
        assert chisquare_pvalue(REF.index(tokens), REF.probs) > ALPHA
    assert not jax.config.jax_enable_x64


def test_prompt_and_temperature():
    prompt = np.tile(np.array([[2]], np.int32), (B, 1))
    tokens = _both(3, precision="float32", prompt=jnp.asarray(prompt), temperature=0.5)
    assert (tokens[:, 0] == 2).all()
    # Exact law: prompt fixed, then each conditional raised to 1/T and renormalised.
    law = np.zeros(V**L)
    for s, seq in enumerate(REF.seqs):
        if seq[0] != 2:
            continue
        p = 1.0
        for pos in (1, 2):
            ok = np.all(REF.seqs[:, :pos] == seq[:pos], axis=1)
            cond = np.bincount(REF.seqs[ok, pos], weights=REF.probs[ok], minlength=V)
            tempered = cond**2 / (cond**2).sum()
            p *= tempered[seq[pos]]
        law[s] = p
    ids = REF.index(tokens)
    assert chisquare_pvalue(ids, law) > ALPHA
    assert chisquare_pvalue(ids, REF.conditional_joint([2, V, V], V)) < REJECT
