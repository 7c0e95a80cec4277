"""Generative perplexity under MDLM's definition (mdm_jax/gen_ppl.py): every step against a hand-made
case or an independent loop, and the standard error against a simulation."""

import math

import jax.numpy as jnp
import numpy as np
import pytest

from mdm_jax import gen_ppl

EOT = 9


class CharTokenizer:
    """Characters 'a'-'i' are ids 0-8, the text '<|endoftext|>' is id 9; decode is the inverse."""

    def encode(self, text):
        out, i = [], 0
        while i < len(text):
            if text.startswith("<|endoftext|>", i):
                out.append(EOT)
                i += len("<|endoftext|>")
            else:
                out.append(ord(text[i]) - ord("a"))
                i += 1
        return np.asarray(out, np.int64)

    def decode(self, ids):
        return "".join("<|endoftext|>" if i == EOT else chr(ord("a") + i) for i in ids)


TABLE = np.random.default_rng(0).normal(size=(10, 10)).astype(np.float32) * 2


def bigram(ids):
    """A causal 'model' whose output at position i depends on ids[i] only."""
    return jnp.asarray(TABLE)[ids]


def _log_softmax(row):
    row = row.astype(np.float64)
    return row - np.log(np.exp(row - row.max()).sum()) - row.max()


def test_target_weights_follow_mdlms_code():
    # MDLM counts x != eot, or the first eot of the chunk: text after an end-of-text still counts,
    # only repeated end-of-text ids do not.
    chunk = np.array([[5, EOT, 7, EOT, EOT, 8], [1, 2, 3, 4, 5, 6], [EOT, EOT, 2, 3, EOT, 1]])
    w = gen_ppl.target_weights(chunk, EOT)
    np.testing.assert_array_equal(w, [[1, 1, 0, 0, 1], [1, 1, 1, 1, 1], [0, 1, 1, 0, 1]])


def test_chunked_nlls_match_an_explicit_loop():
    rng = np.random.default_rng(1)
    rows = [rng.integers(0, 10, size=11) for _ in range(3)] + [rng.integers(0, 10, size=9)]
    context = 4
    nll, count = gen_ppl.chunked_nlls(bigram, rows, eot_id=EOT, context=context, vocab_size=10, batch_size=2)
    for r, got_nll, got_count in zip(rows, nll, count):
        want_nll, want_count = 0.0, 0
        for start in range(0, len(r), context):
            chunk = r[start : start + context]
            seen_eot = 0
            for j, tok in enumerate(chunk):
                seen_eot += tok == EOT
                if j == 0 or (tok == EOT and seen_eot > 1):
                    continue
                want_nll -= _log_softmax(TABLE[chunk[j - 1]])[tok]
                want_count += 1
        assert got_count == want_count
        assert got_nll == pytest.approx(want_nll, rel=1e-5)
    # 11 tokens in chunks of 4: 3 + 3 + 2 targets unless repeated end-of-texts; 9 tokens: 3 + 3.
    assert count[3] <= 6 and max(count[:3]) <= 8


def test_decode_cleans_up_like_transformers_and_retokenize_pads_per_group():
    tok = CharTokenizer()

    class Spaced:
        def decode(self, ids):
            return "Hello , world . I do n't know ' s ?"

    assert gen_ppl.decode(Spaced(), [[0]]) == ["Hello, world. I don't know's?"]
    texts = ["abc", "abcdefgh", "a<|endoftext|>b", "ab"]
    rows, lengths = gen_ppl.retokenize(tok, texts, max_length=6, pad_id=EOT, group_size=2)
    assert lengths == [3, 6, 3, 2]
    # Group 1 is padded to 6 (the truncated second text), group 2 to 3.
    assert [r.tolist() for r in rows] == [
        [0, 1, 2, EOT, EOT, EOT],
        [0, 1, 2, 3, 4, 5],
        [0, EOT, 1],
        [0, 1, EOT],
    ]
    with pytest.raises(ValueError, match="max_length"):
        gen_ppl.retokenize(tok, texts, max_length=1, pad_id=EOT)


def test_mdlm_generative_perplexity_end_to_end_on_a_bigram():
    tok = CharTokenizer()
    tokens = np.array([[0, 1, 2, EOT, 3], [4, 5, 6, 7, 8]])
    out = gen_ppl.mdlm_generative_perplexity(
        bigram, tokens, sample_tokenizer=tok, eval_tokenizer=tok, eot_id=EOT, context=8, vocab_size=10
    )
    # One padding group of width 5 (no truncation, nothing to pad): every target counted.
    rows = tokens
    want = sum(-_log_softmax(TABLE[r[j - 1]])[r[j]] for r in rows for j in range(1, 5))
    assert out["sequence_count"].tolist() == [4, 4]
    assert out["gen_ppl"] == pytest.approx(math.exp(want / 8), rel=1e-5)
    assert out["texts"][0] == "abc<|endoftext|>d" and out["gen_ppl_definition"] == "mdlm"
    with pytest.raises(ValueError, match="vocabulary"):
        gen_ppl.chunked_nlls(bigram, [np.array([0, 12])], eot_id=EOT, context=8, vocab_size=10)


def test_ratio_stderr():
    # Equal counts: the standard error of the mean per-token NLL, exactly.
    nll = np.array([10.0, 12.0, 9.0, 14.0])
    assert gen_ppl.ratio_stderr(nll, np.full(4, 5.0)) == pytest.approx(np.std(nll / 5, ddof=1) / 2)
    # Unequal counts: the delta-method error matches the spread of R over 4,000 simulated data sets
    # of 16 sequences (tolerance 10%: the simulated spread itself is known to ~1.1%).
    rng = np.random.default_rng(2)
    rs, ses = [], []
    for _ in range(4000):
        count = rng.integers(200, 1000, size=16).astype(float)
        nll = count * rng.normal(3.0, 0.4, size=16) + rng.normal(0, 20, size=16)
        rs.append(nll.sum() / count.sum())
        ses.append(gen_ppl.ratio_stderr(nll, count))
    assert np.mean(ses) == pytest.approx(np.std(rs), rel=0.1)
    assert math.isnan(gen_ppl.ratio_stderr(np.array([1.0]), np.array([1.0])))


def test_definitions_are_checked():
    assert gen_ppl.check_definition("mdlm") == "mdlm"
    with pytest.raises(ValueError, match="eval.gen_ppl_definition"):
        gen_ppl.check_definition("gpt2")
