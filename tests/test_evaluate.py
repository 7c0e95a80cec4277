"""Sample metrics on hand-computed cases, and likelihood / sample quality on tiny trained checkpoints."""

from __future__ import annotations

import copy
import json
import math
import os

import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny
from mdm_jax import config as config_lib, likelihood, loop, sample_metrics, sample_quality
from mdm_jax.data import pipeline
from mdm_jax.reference.joint import ReferenceJoint

# ---------------------------------------------------------------- entropy


def test_sequence_entropy_hand_computed():
    # [0,0,1,2]: p = (1/2, 1/4, 1/4) -> H = 1/2 ln 2 + 2 * 1/4 ln 4 = 1.5 ln 2; a constant row has H = 0.
    tokens = np.array([[0, 0, 1, 2], [5, 5, 5, 5]])
    np.testing.assert_allclose(
        sample_metrics.sequence_entropies(tokens), [1.5 * math.log(2), 0.0], rtol=1e-12
    )
    assert sample_metrics.sequence_entropy(tokens) == pytest.approx(0.75 * math.log(2), rel=1e-12)


def test_sequence_entropy_is_per_sequence_not_pooled():
    # Two rows of distinct single symbols: each row has entropy 0, the pooled unigram entropy would be ln 2.
    assert sample_metrics.sequence_entropy(np.array([[3, 3, 3], [7, 7, 7]])) == 0.0
    # Ragged input (a list of 1-D arrays): uniform over 8 distinct ids -> ln 8; [1, 2] -> ln 2.
    ragged = [np.arange(8), np.array([1, 2])]
    expected = (math.log(8) + math.log(2)) / 2
    assert sample_metrics.sequence_entropy(ragged) == pytest.approx(expected, rel=1e-12)


# ---------------------------------------------------------------- generative perplexity

# An exact first-order ARM over V = 3 tokens with BOS = 3: p(x_0) = FIRST, p(x_i | x_{i-1}) = TRANS.
FIRST = np.array([0.5, 0.3, 0.2])
TRANS = np.array([[0.1, 0.6, 0.3], [0.25, 0.25, 0.5], [0.7, 0.2, 0.1]])
BOS = 3


def _bigram_logits_fn(inputs):
    """Causal logits: position i sees inputs[:, i] (BOS or the previous token) -> its conditional."""
    table = jnp.log(jnp.asarray(np.vstack([TRANS, FIRST]), jnp.float32))  # row BOS = FIRST
    return table[inputs]


def test_generative_perplexity_equals_hand_computed_value():
    tokens = np.array([[0, 1, 2], [2, 2, 0]])
    # seq 1: p = 0.5 * TRANS[0,1]=0.6 * TRANS[1,2]=0.5; seq 2: p = 0.2 * TRANS[2,2]=0.1 * TRANS[2,0]=0.7
    nll1 = -(math.log(0.5) + math.log(0.6) + math.log(0.5))
    nll2 = -(math.log(0.2) + math.log(0.1) + math.log(0.7))
    expected = math.exp((nll1 + nll2) / 6)  # token-weighted over all 6 tokens
    got = sample_metrics.generative_perplexity(_bigram_logits_fn, tokens, bos_id=BOS, vocab_size=3)
    assert got == pytest.approx(expected, rel=1e-5)
    np.testing.assert_allclose(
        sample_metrics.sequence_nlls(_bigram_logits_fn, tokens, BOS), [nll1, nll2], rtol=1e-5
    )
    # Corpus mean, not the mean of per-sequence perplexities (which would be larger here).
    per_seq_mean = (math.exp(nll1 / 3) + math.exp(nll2 / 3)) / 2
    assert abs(got - per_seq_mean) > 0.1


def test_generative_perplexity_batching_and_errors():
    tokens = np.random.default_rng(0).integers(0, 3, size=(7, 5))
    full = sample_metrics.generative_perplexity(_bigram_logits_fn, tokens, BOS)
    chunked = sample_metrics.generative_perplexity(_bigram_logits_fn, tokens, BOS, batch_size=3)
    assert chunked == pytest.approx(full, rel=1e-6)
    # A sample with the mask id (= V) left in it cannot be scored.
    with pytest.raises(ValueError, match="token ids must be in"):
        sample_metrics.generative_perplexity(_bigram_logits_fn, np.array([[0, 3, 1]]), BOS, vocab_size=3)


def test_generative_perplexity_of_exact_reference_arm_equals_joint_likelihood():
    # Under the exact ARM of an enumerable joint, the NLL of a sequence is -log p(sequence):
    # the chain rule of the ARM's conditionals must reproduce the joint table exactly.
    ref = ReferenceJoint(vocab=3, length=4, seed=3)
    tokens = ref.seqs[np.random.default_rng(1).choice(len(ref.seqs), size=12, p=ref.probs)]
    expected = math.exp(-np.log(ref.probs[ref.index(tokens)]).sum() / tokens.size)
    got = sample_metrics.generative_perplexity(ref.arm_logits_fn, tokens, bos_id=3, vocab_size=3)
    assert got == pytest.approx(expected, rel=1e-4)


# ---------------------------------------------------------------- --mode=eval and sample quality on tiny runs


def _tiny(kind: str):
    c = tiny(config_lib.base())
    c.objective.kind = kind
    c.model.update(dict(vocab_size=256, time_conditioning=False))
    c.train.update(
        dict(
            num_steps=12,
            log_every=6,
            eval_every=1000,
            eval_batches=2,
            checkpoint_every=1000,
            plot=False,
            warmup_steps=2,
            lr=3e-3,
        )
    )
    c.eval.update(dict(num_batches=2, mc_draws=1))
    c.sampling.batch_size = 4
    return c


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny MDM and ARM, trained once for this module: {kind: (config, workdir, final metrics)}."""
    out = {}
    for kind in ("continuous", "arm"):
        c = _tiny(kind)
        wd = str(tmp_path_factory.mktemp(kind))
        out[kind] = (c, wd, loop.train_and_evaluate(c, wd))
    return out


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["continuous", "arm"])
def test_evaluate_reuses_the_train_eval_and_writes_its_report(trained, kind):
    c, wd, final = trained[kind]
    r = likelihood.evaluate(c, wd)
    # Same batches (eval.num_batches == train.eval_batches), same keys fold(root, "eval", 0, i) and the
    # same eval step: the validation number must equal the train loop's final eval.
    assert r["nats_per_token"] == pytest.approx(final["eval/nats_per_token"], rel=1e-5)
    assert r["bits_per_token"] == pytest.approx(r["nats_per_token"] / math.log(2), rel=1e-9)
    assert r["checkpoint_step"] == c.train.num_steps
    with open(os.path.join(wd, "eval", f"eval_{c.train.num_steps}.json")) as f:
        saved = json.load(f)
    assert saved["num_tokens"] == 2 * 8 * 32 and saved["objective"] == kind
    assert saved["metadata"]["jax_version"] and saved["metadata"]["device_kind"]
    assert saved["metadata"]["config"]["model"]["emb_dim"] == 32


@pytest.mark.slow
def test_mc_draws_average_independent_nelbo_draws(trained):
    c, wd, final = trained["continuous"]
    c2 = copy.deepcopy(c)
    c2.eval.mc_draws = 3
    r = likelihood.evaluate(c2, wd)
    assert r["mc_draws"] == 3 and r["num_tokens"] == 2 * 8 * 32
    # Draw 0 is the train eval's draw; two more draws move the mean, by a few standard errors at most.
    assert r["nats_per_token"] != pytest.approx(final["eval/nats_per_token"], rel=1e-7)
    assert abs(r["nats_per_token"] - final["eval/nats_per_token"]) < 6 * max(r["nats_per_token_stderr"], 1e-3)


@pytest.mark.slow
def test_sample_quality_of_real_text_matches_the_arm_eval(trained, tmp_path):
    """Scoring real validation sequences as 'samples' must reproduce the ARM's validation NLL on
    them (two code paths: objectives' ARM loss in the eval step vs sample_metrics.sequence_nlls),
    and their entropy is the reference entropy (the same sequences)."""
    c = copy.deepcopy(trained["continuous"][0])
    ca, wd_arm, _ = trained["arm"]
    ca1 = copy.deepcopy(ca)
    ca1.eval.num_batches = 1
    c.eval.evaluator_workdir = wd_arm
    batch = pipeline.eval_batches(ca, 1)[0]
    arm_eval = likelihood.evaluate(ca1, wd_arm)
    records = [
        {
            "tokens": row.tolist(),
            "sampler": "real_text",
            "steps": 0,
            "tokens_per_step": 1,
            "precision": "n/a",
            "temperature": 1.0,
            "seed": 0,
            "batch_index": 0,
            "nfe": 0,
            "wall_time_s": 0.0,
            "checkpoint_step": None,
            "device_kind": "cpu",
            "jax_version": "x",
        }
        for row in batch
    ]
    q = sample_quality.sample_quality(c, str(tmp_path), records, name="real")
    assert q["gen_nll_per_token"] == pytest.approx(arm_eval["nats_per_token"], rel=1e-5)
    assert q["gen_ppl"] == pytest.approx(arm_eval["perplexity"], rel=1e-5)
    assert q["reference_entropy"] == pytest.approx(q["entropy"], rel=1e-12)
    assert q["num_samples"] == 8 and q["evaluator_step"] == ca.train.num_steps
    for k in sample_quality.SETTINGS:
        assert k in q
    assert os.path.exists(tmp_path / "eval" / "real.json") and os.path.exists(tmp_path / "eval" / "real.md")
    # --mode=eval with an evaluator scores the JSONL files of --mode=sample the same way.
    os.makedirs(tmp_path / "samples")
    with open(tmp_path / "samples" / "real_text.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
    (scored,) = sample_quality.score_sample_files(c, str(tmp_path))
    assert scored["gen_ppl"] == pytest.approx(q["gen_ppl"], rel=1e-9)
    assert os.path.exists(tmp_path / "eval" / "sample_quality_real_text.json")
