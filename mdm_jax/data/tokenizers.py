"""Tokenizers: `byte`, `char` (text8-style) and `gpt2` (BPE from local files).

The real GPT-2 vocabulary ships with the package (`BUNDLED_GPT2_DIR`, `assets/gpt2.tiktoken`, from
openai-whisper, MIT licence; see `assets/README.md`): `--config.data.tokenizer=gpt2
--config.data.gpt2_vocab_dir=<BUNDLED_GPT2_DIR>` works offline. Any directory with the Hugging Face
files `vocab.json` + `merges.txt` (e.g. a downloaded openai-community/gpt2 directory) works too.

Every tokenizer has `.name`, `.vocab_size` (real tokens; the model's mask token is id
`vocab_size` of the *model*, not part of any tokenizer), `.eot_id` (the separator inserted
between packed documents), `.encode(str) -> np.int32[n]` and `.decode(ids) -> str`, where ids
outside the vocabulary (the mask) are shown as `MASK_CHAR`.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterable
from typing import Protocol

import numpy as np
import tiktoken
from tiktoken_ext import openai_public
from tokenizers import Tokenizer as HFTokenizer, decoders, models as hf_models, pre_tokenizers

MASK_CHAR = "_"
GPT2_EOT = "<|endoftext|>"
BUNDLED_GPT2_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets")
TIKTOKEN_FILE = "gpt2.tiktoken"
GPT2_FILES_HELP = (
    "The real GPT-2 vocabulary ships with this package: set "
    f"--config.data.gpt2_vocab_dir={BUNDLED_GPT2_DIR}. "
    "Or get the Hugging Face files with network access once, e.g. "
    "`curl -LO https://huggingface.co/openai-community/gpt2/resolve/main/vocab.json` and "
    "`curl -LO https://huggingface.co/openai-community/gpt2/resolve/main/merges.txt`, into a "
    "directory, and set --config.data.gpt2_vocab_dir=THAT_DIR."
)

NAMES = ("byte", "char", "gpt2")


class Tokenizer(Protocol):
    name: str
    vocab_size: int
    eot_id: int

    def encode(self, text: str) -> np.ndarray: ...
    def decode(self, ids: Iterable[int]) -> str: ...


class ByteTokenizer:
    """UTF-8 bytes, 256 symbols. The separator is byte 0 (NUL), which never occurs in prose.

    Decoding replaces invalid UTF-8 (e.g. a sampled split of a multi-byte character) with U+FFFD.
    """

    name = "byte"
    vocab_size = 256
    eot_id = 0

    def encode(self, text: str) -> np.ndarray:
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int32)

    def encode_bytes(self, data: bytes) -> np.ndarray:
        """Fast path for the pipeline: TFDS returns text fields as UTF-8 bytes already."""
        return np.frombuffer(data, dtype=np.uint8)

    def decode(self, ids: Iterable[int]) -> str:
        out, chunk = [], bytearray()
        for i in np.asarray(list(ids) if not isinstance(ids, np.ndarray) else ids).reshape(-1):
            i = int(i)
            if 0 <= i < 256:
                chunk.append(i)
            else:
                out.append(chunk.decode("utf-8", errors="replace") + MASK_CHAR)
                chunk = bytearray()
        out.append(chunk.decode("utf-8", errors="replace"))
        return "".join(out)


class CharTokenizer:
    """text8's 27 symbols: space = 0, 'a'..'z' = 1..26. The separator is the space (id 0).

    Like text8's preprocessing, text is lowercased and every other character becomes a space,
    then runs of spaces collapse to one (text8 itself is already in this form: encoding it is
    the identity).
    """

    name = "char"
    vocab_size = 27
    eot_id = 0
    _ALPHABET = " abcdefghijklmnopqrstuvwxyz"

    def __init__(self):
        table = np.zeros(256, dtype=np.uint8)  # every byte not a-z/A-Z -> space (0)
        for i, ch in enumerate(self._ALPHABET[1:], start=1):
            table[ord(ch)] = i
            table[ord(ch.upper())] = i
        self._table = table

    def encode(self, text: str) -> np.ndarray:
        return self.encode_bytes(text.encode("utf-8")).astype(np.int32)

    def encode_bytes(self, data: bytes) -> np.ndarray:
        ids = self._table[np.frombuffer(data, dtype=np.uint8)]
        if ids.size:  # collapse runs of spaces (non-ASCII multi-byte chars become one space)
            keep = np.ones(ids.size, dtype=bool)
            keep[1:] = (ids[1:] != 0) | (ids[:-1] != 0)
            ids = ids[keep]
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        arr = np.asarray(list(ids) if not isinstance(ids, np.ndarray) else ids).reshape(-1)
        return "".join(self._ALPHABET[i] if 0 <= i < 27 else MASK_CHAR for i in arr.tolist())


class GPT2Tokenizer:
    """GPT-2 byte-level BPE read from local files (never downloaded), in either published form:

    - `vocab.json` + `merges.txt` (Hugging Face's form), read with `tokenizers`; any files in this
      format work (the tests also use a tiny BPE trained locally);
    - `gpt2.tiktoken` (tiktoken's form: base64 bytes and rank per line, `<|endoftext|>` after the
      last rank), read with `tiktoken` and GPT-2's pre-tokenisation pattern; the real file is
      bundled (`BUNDLED_GPT2_DIR`).
    If a directory has both, the Hugging Face files are used. With the real GPT-2 vocabulary:
    vocab_size 50257, eot_id 50256 (`<|endoftext|>`). `<|endoftext|>` in input text is encoded as
    ordinary text in both forms; documents are separated by `eot_id`, inserted by the data pipeline.
    """

    name = "gpt2"

    def __init__(self, vocab_dir: str):
        vocab_dir = os.path.expanduser(vocab_dir or "")
        vocab, merges, ranks = (
            os.path.join(vocab_dir, f) for f in ("vocab.json", "merges.txt", TIKTOKEN_FILE)
        )
        if vocab_dir and os.path.isfile(vocab) and os.path.isfile(merges):
            self.files = (vocab, merges)  # what the vocabulary depends on (packed-data fingerprints)
            self._init_hf(vocab_dir, vocab, merges)
        elif vocab_dir and os.path.isfile(ranks):
            self.files = (ranks,)
            self._init_tiktoken(vocab_dir, ranks)
        else:
            missing = [p for p in (vocab, merges) if not os.path.isfile(p)]
            raise ValueError(
                f"config.data.gpt2_vocab_dir={vocab_dir!r}: tokenizer 'gpt2' needs vocab.json and "
                f"merges.txt there (missing: {missing or ['vocab.json', 'merges.txt']}), or {TIKTOKEN_FILE}. "
                + GPT2_FILES_HELP
            )

    def _init_hf(self, vocab_dir: str, vocab: str, merges: str) -> None:
        with open(vocab, encoding="utf-8") as f:
            vocab_map = json.load(f)
        if GPT2_EOT not in vocab_map:
            raise ValueError(
                f"config.data.gpt2_vocab_dir={vocab_dir!r}: vocab.json has no {GPT2_EOT!r} token "
                "(the document separator); use the GPT-2 vocabulary files. " + GPT2_FILES_HELP
            )
        tok = HFTokenizer(hf_models.BPE.from_file(vocab, merges))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        self._hf, self._tt = tok, None
        self.vocab_size = max(vocab_map.values()) + 1
        self.eot_id = int(vocab_map[GPT2_EOT])

    def _init_tiktoken(self, vocab_dir: str, path: str) -> None:
        # Read directly rather than with tiktoken.load.load_tiktoken_bpe, which also copies the
        # file into a cache directory under the system temp dir.
        try:
            with open(path, "rb") as f:
                ranks = {
                    base64.b64decode(tok): int(rank)
                    for tok, rank in (line.split() for line in f if line.strip())
                }
        except ValueError as e:
            raise ValueError(
                f"config.data.gpt2_vocab_dir={vocab_dir!r}: {path} is not a tiktoken rank file "
                f"(lines of base64 bytes and a rank): {e}"
            ) from e
        if sorted(ranks.values()) != list(range(len(ranks))):
            raise ValueError(
                f"config.data.gpt2_vocab_dir={vocab_dir!r}: the ranks in {path} are not "
                f"0..{len(ranks) - 1} without gaps"
            )
        self.eot_id = len(ranks)
        self._hf = None
        self._tt = tiktoken.Encoding(
            name="gpt2",
            pat_str=openai_public.r50k_pat_str,
            mergeable_ranks=ranks,
            special_tokens={GPT2_EOT: self.eot_id},
        )
        self.vocab_size = self._tt.n_vocab

    def encode(self, text: str) -> np.ndarray:
        if self._tt is not None:
            return np.asarray(self._tt.encode_ordinary(text), dtype=np.int32)
        return np.asarray(self._hf.encode(text).ids, dtype=np.int32)

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        """Multi-threaded batch encoding, used when packing large corpora."""
        if self._tt is not None:
            return [np.asarray(ids, dtype=np.int32) for ids in self._tt.encode_ordinary_batch(texts)]
        return [np.asarray(e.ids, dtype=np.int32) for e in self._hf.encode_batch(texts)]

    def _decode_run(self, run: list[int]) -> str:
        return self._tt.decode(run) if self._tt is not None else self._hf.decode(run)

    def decode(self, ids: Iterable[int]) -> str:
        arr = np.asarray(list(ids) if not isinstance(ids, np.ndarray) else ids).reshape(-1)
        out, run = [], []
        for i in arr.tolist():
            if 0 <= i < self.vocab_size:
                run.append(int(i))
            else:
                out.append(self._decode_run(run) + MASK_CHAR)
                run = []
        out.append(self._decode_run(run))
        return "".join(out)


def get(data_config) -> Tokenizer:
    """The tokenizer named by `config.data.tokenizer` (ValueError naming the field otherwise)."""
    name = data_config.tokenizer
    if name == "byte":
        return ByteTokenizer()
    if name == "char":
        return CharTokenizer()
    if name == "gpt2":
        return GPT2Tokenizer(data_config.gpt2_vocab_dir)
    raise ValueError(f"config.data.tokenizer={name!r} is not a known tokenizer; set it to one of {NAMES}.")
