"""The real GPT-2 tokenizer, offline: the bundled ranks (tiktoken form) and the Hugging Face form.

`mdm_jax/data/assets/gpt2.tiktoken` is GPT-2's BPE (50,256 ranks + <|endoftext|> = 50,257 ids).
The Hugging Face form (vocab.json + merges.txt) of the same vocabulary is derived from it here, so
both code paths of `data.tokenizer="gpt2"` are tested on the real vocabulary and must agree.
"""

from __future__ import annotations

import base64
import json
import os

import numpy as np
import pytest
from ml_collections import ConfigDict

from mdm_jax.data import tokenizers

# Known GPT-2 token ids (the published vocabulary).
KNOWN = {
    "Hello world": [15496, 995],
    "Hello, world!": [15496, 11, 995, 0],
    " the": [262],
    "The quick brown fox": [464, 2068, 7586, 21831],
}
TEXT = (
    "The quick brown fox jumps over the lazy dog. It's 2024; naïve café, 日本語 and emoji 🙂!\n\n"
    "  Indented   spaces, tabs\tand CRLF\r\nlines: don't, we'll, they've, I'm... <|endoftext|> 3.14159"
)


def data_config(vocab_dir):
    return ConfigDict({"tokenizer": "gpt2", "gpt2_vocab_dir": str(vocab_dir)})


@pytest.fixture(scope="module")
def real():
    return tokenizers.get(data_config(tokenizers.BUNDLED_GPT2_DIR))


def test_bundled_real_gpt2_vocabulary(real):
    assert (real.vocab_size, real.eot_id) == (50257, 50256)
    assert real.files == (os.path.join(tokenizers.BUNDLED_GPT2_DIR, "gpt2.tiktoken"),)
    for text, ids in KNOWN.items():
        assert real.encode(text).tolist() == ids
        assert real.decode(ids) == text
    ids = real.encode(TEXT)
    assert ids.dtype == np.int32 and ids.max() < 50256
    assert real.decode(ids) == TEXT
    assert [x.tolist() for x in real.encode_batch(list(KNOWN))] == list(KNOWN.values())
    assert real.decode([50256]) == "<|endoftext|>"
    assert real.decode([15496, 50257, 995]) == "Hello" + tokenizers.MASK_CHAR + " world"  # 50257: the mask


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's printable stand-in for every byte, the alphabet of vocab.json / merges.txt."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    out, extra = {b: chr(b) for b in keep}, 0
    for b in range(256):
        if b not in out:
            out[b] = chr(256 + extra)
            extra += 1
    return out


def _hf_form(ranks_path, out_dir):
    """vocab.json + merges.txt of a tiktoken rank file: token r (>= 256) is the merge of the two
    parts that byte-pair merging with ranks < r leaves of its bytes."""
    with open(ranks_path, "rb") as f:
        ranks = {base64.b64decode(t): int(r) for t, r in (line.split() for line in f if line.strip())}
    u = _bytes_to_unicode()
    show = lambda b: "".join(u[x] for x in b)  # noqa: E731
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(token) < 2:
            continue
        parts = [bytes([b]) for b in token]
        while len(parts) > 2:
            pairs = [(ranks.get(a + b, rank), i) for i, (a, b) in enumerate(zip(parts, parts[1:]))]
            best, i = min(pairs)
            assert best < rank
            parts[i : i + 2] = [parts[i] + parts[i + 1]]
        merges.append(f"{show(parts[0])} {show(parts[1])}")
    vocab = {show(t): r for t, r in ranks.items()}
    vocab[tokenizers.GPT2_EOT] = len(ranks)
    (out_dir / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (out_dir / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")


def test_hugging_face_form_of_the_same_vocabulary_tokenizes_identically(real, tmp_path):
    _hf_form(os.path.join(tokenizers.BUNDLED_GPT2_DIR, "gpt2.tiktoken"), tmp_path)
    hf = tokenizers.get(data_config(tmp_path))
    assert hf.files == (str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt"))
    assert (hf.vocab_size, hf.eot_id) == (real.vocab_size, real.eot_id)
    for text in [*KNOWN, TEXT]:
        np.testing.assert_array_equal(hf.encode(text), real.encode(text))
    assert hf.decode(real.encode(TEXT)) == TEXT


def test_missing_or_malformed_tokenizer_files(tmp_path):
    with pytest.raises(ValueError, match=f"gpt2_vocab_dir={tokenizers.BUNDLED_GPT2_DIR}"):
        tokenizers.get(data_config(tmp_path))  # the error names the bundled vocabulary as the fix
    (tmp_path / "gpt2.tiktoken").write_text("SGVsbG8= 0\nd29ybGQ= 5\n")
    with pytest.raises(ValueError, match="not 0..1 without gaps"):
        tokenizers.get(data_config(tmp_path))
    (tmp_path / "gpt2.tiktoken").write_text("not a rank file\n")
    with pytest.raises(ValueError, match="is not a tiktoken rank file"):
        tokenizers.get(data_config(tmp_path))
