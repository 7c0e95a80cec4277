"""A Hugging Face GPT-2 directory as the evaluator of generative perplexity (`eval.evaluator="gpt2:DIR"`).

    ev = gpt2_evaluator.load("gpt2:/data/gpt2-large")
    logits = ev(tokens)              # int32[B, T] -> float32[B, T, V], causal, T <= ev.context
    ev.tokenizer.encode(text), ev.tokenizer.decode(ids), ev.eot_id, ev.vocab_size, ev.info()

DIR is what `huggingface-cli download openai-community/gpt2-large` writes: `config.json` +
`model.safetensors` (read by `mdm_jax.interop.load_gpt2`, no torch) and the tokenizer files
(`tokenizer.json`, or `vocab.json` + `merges.txt`). The tokenizer is the same Rust `tokenizers`
object transformers' GPT2TokenizerFast wraps, with `<|endoftext|>` a special token: text containing
it encodes to the end-of-text id, which MDLM's definition of gen PPL relies on (`mdm_jax.gen_ppl`).
The evaluator's BOS for the project's definition is its end-of-text id (GPT-2 has no other).
"""

from __future__ import annotations

import os

import numpy as np
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

from mdm_jax import interop

__all__ = ["PREFIX", "parse", "EvalTokenizer", "load_tokenizer", "GPT2Evaluator", "load"]

PREFIX = "gpt2:"
EOT = "<|endoftext|>"
DOWNLOAD_HELP = ("e.g. on a networked host: huggingface-cli download openai-community/gpt2-large "
                 "--include 'config.json' 'model.safetensors' 'tokenizer.json' 'vocab.json' 'merges.txt' "
                 "--local-dir DIR")


def parse(spec: str, field: str = "eval.evaluator") -> str:
    """The directory of a "gpt2:DIR" spec (a bare directory is accepted too), checked to exist."""
    path = spec[len(PREFIX):] if spec.startswith(PREFIX) else spec
    if ":" in spec and not spec.startswith(PREFIX):
        raise ValueError(f"{field}={spec!r}: only GPT-2 evaluators are known; write gpt2:/path/to/gpt2-large")
    path = os.path.expanduser(path)
    if not path or not os.path.isdir(path):
        raise FileNotFoundError(f"{field}={spec!r}: {path!r} is not a directory. It must hold a Hugging Face "
                                f"GPT-2 checkpoint and its tokenizer ({DOWNLOAD_HELP})")
    return path


class EvalTokenizer:
    """The GPT-2 byte-level BPE of a checkpoint directory: `.encode(text) -> int64 ids` (end-of-text
    text -> eot_id), `.decode(ids) -> str` (special tokens kept, invalid UTF-8 -> U+FFFD)."""

    def __init__(self, path: str):
        tj = os.path.join(path, "tokenizer.json")
        vocab, merges = os.path.join(path, "vocab.json"), os.path.join(path, "merges.txt")
        if os.path.isfile(tj):
            tok = Tokenizer.from_file(tj)
            self.source = tj
        elif os.path.isfile(vocab) and os.path.isfile(merges):
            tok = Tokenizer(models.BPE.from_file(vocab, merges))
            tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
            tok.decoder = decoders.ByteLevel()
            tok.add_special_tokens([AddedToken(EOT, special=True)])
            self.source = f"{vocab} + {merges}"
        else:
            raise FileNotFoundError(f"{path} has no GPT-2 tokenizer: it needs tokenizer.json, or vocab.json "
                                    f"and merges.txt ({DOWNLOAD_HELP})")
        eot = tok.token_to_id(EOT)
        if eot is None:
            raise ValueError(f"the tokenizer in {path} has no {EOT!r} token: not a GPT-2 tokenizer")
        self._tok = tok
        self.eot_id = int(eot)
        self.vocab_size = int(tok.get_vocab_size(with_added_tokens=True))

    def encode(self, text: str) -> np.ndarray:
        return np.asarray(self._tok.encode(text, add_special_tokens=False).ids, np.int64)

    def decode(self, ids) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=False)


def load_tokenizer(path: str) -> EvalTokenizer:
    return EvalTokenizer(path)


class GPT2Evaluator:
    """A loaded GPT-2: callable as logits_fn(ids int32[B, T]) -> float32[B, T, V] for T <= context."""

    def __init__(self, path: str, apply_fn, params, model_info: dict, tokenizer: EvalTokenizer):
        self.path = os.path.abspath(path)
        self._apply, self._params = apply_fn, params
        self.model_info = dict(model_info)
        self.vocab_size = int(model_info["vocab_size"])
        self.context = int(model_info["context_length"])
        self.eot_id = int(model_info["eot_id"])
        self.tokenizer = tokenizer
        if tokenizer.vocab_size != self.vocab_size or tokenizer.eot_id != self.eot_id:
            raise ValueError(
                f"{path}: the tokenizer ({tokenizer.source}: {tokenizer.vocab_size} tokens, end-of-text id "
                f"{tokenizer.eot_id}) does not match the model (config.json: vocab_size {self.vocab_size}, "
                f"end-of-text id {self.eot_id}); put the model's own tokenizer files in the directory")

    def __call__(self, ids):
        if ids.shape[-1] > self.context:
            raise ValueError(f"the GPT-2 evaluator {self.path} reads at most {self.context} tokens, got "
                             f"{ids.shape[-1]}: score shorter samples, or use eval.gen_ppl_definition=mdlm "
                             "(it splits samples into chunks of the evaluator's context)")
        return self._apply(self._params, ids)

    def info(self) -> dict:
        """What reports record about the evaluator."""
        return {"evaluator": f"{PREFIX}{self.path}", "evaluator_vocab_size": self.vocab_size,
                "evaluator_context": self.context, "evaluator_eot_id": self.eot_id,
                "evaluator_bos_id": self.eot_id, "evaluator_tokenizer": self.tokenizer.source,
                "evaluator_dtype": str(self.model_info.get("dtype", ""))}


def load(spec: str, *, dtype: str = "float32", field: str = "eval.evaluator") -> GPT2Evaluator:
    """The GPT-2 of `spec` ("gpt2:DIR" or DIR), float32 by default (the scores of a report)."""
    path = parse(spec, field)
    tokenizer = load_tokenizer(path)       # the cheap check first: no weights read for a bad directory
    apply_fn, params, info = interop.load_gpt2(path, dtype=dtype)
    return GPT2Evaluator(path, apply_fn, params, {**info, "dtype": dtype}, tokenizer)
