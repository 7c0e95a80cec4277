"""Every sampler runs on a loaded MDLM checkpoint (the mdlm-tiny fixtures), in every precision policy.

The loaded denoiser is a `jax.tree_util.Partial` of the DiT and its params, so the samplers take
the params as traced arguments of their compiled loops, exactly as for the project's own models.
"""

from __future__ import annotations

import os

import jax
import numpy as np
import pytest

from mdm_jax import interop, sampling, schedules

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")
B, L = 4, 12
PROMPT = [5, 6, 7]


@pytest.fixture(scope="module")
def loaded():
    return {name: interop.load_mdlm(os.path.join(FIXTURES, name)) for name in ("mdlm-tiny", "mdlm-tiny-tc")}


def prompted(mask_id):
    init = np.full((B, L), mask_id, np.int32)
    init[:, : len(PROMPT)] = PROMPT
    return init


def check(tokens, info):
    tokens = np.asarray(tokens)
    assert tokens.shape == (B, L) and tokens.min() >= 0 and tokens.max() < info.vocab_size  # no mask left
    assert (tokens[:, : len(PROMPT)] == PROMPT).all()
    assert len(np.unique(tokens[:, len(PROMPT) :])) > 5  # 600-way draws, not a constant


@pytest.mark.slow
def test_first_hitting_with_prompts_in_every_precision(loaded):
    denoise_fn, info = loaded["mdlm-tiny-tc"]
    common = dict(
        batch_size=B,
        seq_len=L,
        mask_id=info.mask_id,
        schedule=schedules.get("loglinear"),
        init=prompted(info.mask_id),
    )
    for precision in sampling.PRECISIONS:
        tokens, stats = sampling.first_hitting(denoise_fn, jax.random.key(0), precision=precision, **common)
        check(tokens, info)
        assert stats["nfe"] == L - len(PROMPT), precision
    tokens, stats = sampling.first_hitting(
        denoise_fn, jax.random.key(0), precision="float32", tokens_per_step=4, **common
    )
    check(tokens, info)
    assert stats["nfe"] == 3  # ceil(9 / 4)


@pytest.mark.slow
def test_ancestral_cached_uncached_factorized(loaded):
    """For a time-free network (mdlm-tiny, like mdlm-owt) reusing the last output when nothing
    changed is exact: the cached sampler draws the same tokens as the uncached one, with fewer calls."""
    denoise_fn, info = loaded["mdlm-tiny"]
    assert not info.time_conditioning
    common = dict(
        batch_size=B,
        seq_len=L,
        mask_id=info.mask_id,
        schedule=schedules.get("loglinear"),
        num_steps=64,
        precision="float32",
        init=prompted(info.mask_id),
    )
    for factorized in (False, True):
        runs = {}
        for cache in (True, False):
            tokens, stats = sampling.ancestral(
                denoise_fn, jax.random.key(1), cache=cache, factorized=factorized, **common
            )
            check(tokens, info)
            runs[cache] = (np.asarray(tokens), stats["nfe"])
        assert runs[False][1] == 64 and runs[True][1] < 64
        np.testing.assert_array_equal(runs[True][0], runs[False][0])
