"""A Hugging Face GPT-2 directory as the evaluator of generative perplexity (`eval.evaluator="gpt2:DIR"`).

    ev = gpt2_evaluator.load("gpt2:/data/gpt2-large")
    logits = ev(tokens)              # int32[B, T] -> float32[B, T, V], causal, T <= ev.context
    ev.tokenizer.encode(text), ev.tokenizer.decode(ids), ev.eot_id, ev.vocab_size, ev.info()

DIR is what `huggingface-cli download openai-community/gpt2-large` writes: `config.json` +
`model.safetensors` (read by `mdm_jax.interop.load_gpt2`, no torch) and the tokenizer files
`vocab.json` + `merges.txt` (or tiktoken's `gpt2.tiktoken`). `<|endoftext|>` in a text encodes to
the end-of-text id, as with transformers' tokenizer, which MDLM's definition of gen PPL relies on
(`mdm_jax.gen_ppl`). The evaluator's BOS for the project's definition is its end-of-text id (GPT-2
has no other).
"""

from __future__ import annotations

import json
import os

import jax
import numpy as np

from mdm_jax import interop
from mdm_jax.data import tokenizers
from mdm_jax.interop import vocab

__all__ = ["PREFIX", "parse", "EvalTokenizer", "load_tokenizer", "GPT2Evaluator", "load"]

PREFIX = "gpt2:"
EOT = "<|endoftext|>"
DOWNLOAD_HELP = (
    "e.g. on a networked host: huggingface-cli download openai-community/gpt2-large "
    "config.json model.safetensors vocab.json merges.txt --local-dir DIR"
)


def parse(spec: str, field: str = "eval.evaluator") -> str:
    """The directory of a "gpt2:DIR" spec (a bare directory is accepted too), checked to exist."""
    path = spec[len(PREFIX) :] if spec.startswith(PREFIX) else spec
    if ":" in spec and not spec.startswith(PREFIX):
        raise ValueError(f"{field}={spec!r}: only GPT-2 evaluators are known; write gpt2:/path/to/gpt2-large")
    path = os.path.expanduser(path)
    if not path or not os.path.isdir(path):
        raise FileNotFoundError(
            f"{field}={spec!r}: {path!r} is not a directory. It must hold a Hugging "
            f"Face GPT-2 checkpoint and its tokenizer ({DOWNLOAD_HELP})"
        )
    return path


class EvalTokenizer:
    """The GPT-2 BPE of a checkpoint directory, as transformers' GPT2TokenizerFast uses it for MDLM:
    `.encode(text)` turns `<|endoftext|>` in the text into the end-of-text id and byte-pair encodes
    the text between (what tokenizers and tiktoken do with a special token); `.decode(ids)` keeps
    special tokens as text. The files are read by `mdm_jax.data.tokenizers.GPT2Tokenizer`:
    `vocab.json` + `merges.txt` (Hugging Face's form) or `gpt2.tiktoken`."""

    def __init__(self, path: str):
        try:
            self._tok = tokenizers.GPT2Tokenizer(path)
        except ValueError as e:
            raise FileNotFoundError(
                f"{path} has no GPT-2 tokenizer: it needs vocab.json and merges.txt ({DOWNLOAD_HELP}), "
                f"or gpt2.tiktoken (the real one ships in {tokenizers.BUNDLED_GPT2_DIR})"
            ) from e
        self.base = self._tok  # the project tokenizer (ordinary text only)
        self.source = " + ".join(self._tok.files)
        self.eot_id = int(self._tok.eot_id)
        self.vocab_size = int(self._tok.vocab_size)

    def encode(self, text: str) -> np.ndarray:
        parts = [self._tok.encode(piece) for piece in text.split(EOT)]
        out = []
        for i, ids in enumerate(parts):
            if i:
                out.append(np.array([self.eot_id], np.int64))
            out.append(np.asarray(ids, np.int64))
        return np.concatenate(out)

    def decode(self, ids) -> str:
        return self._tok.decode(np.asarray(ids, np.int64))


def load_tokenizer(path: str) -> EvalTokenizer:
    return EvalTokenizer(path)


class GPT2Evaluator:
    """A loaded GPT-2: callable as logits_fn(ids int32[B, T]) -> float32[B, T, V] for T <= context.

    Its tokenizer must number tokens as the model does (checked: vocabulary size, end-of-text id)."""

    def __init__(self, path: str, apply_fn, params, model_info, tokenizer: EvalTokenizer):
        self.path = os.path.abspath(path)
        # One compiled forward per input shape (the params are a traced argument, not constants).
        self._apply, self._params = jax.jit(apply_fn), params
        self.model_info = model_info  # interop.GPT2Info
        self.vocab_size = int(model_info.vocab_size)
        self.context = int(model_info.context_length)
        self.eot_id = int(model_info.eot_id)
        self.tokenizer = tokenizer
        if tokenizer.vocab_size != self.vocab_size or tokenizer.eot_id != self.eot_id:
            raise ValueError(
                f"{path}: the tokenizer ({tokenizer.source}: {tokenizer.vocab_size} tokens, end-of-text id "
                f"{tokenizer.eot_id}) does not match the model ({self.vocab_size} tokens, end-of-text id "
                f"{self.eot_id}); put the model's own tokenizer files in the directory"
            )

    def __call__(self, ids):
        if ids.shape[-1] > self.context:
            raise ValueError(
                f"the GPT-2 evaluator {self.path} reads at most {self.context} tokens, got "
                f"{ids.shape[-1]}: score shorter samples, or use eval.gen_ppl_definition=mdlm "
                "(it splits samples into chunks of the evaluator's context)"
            )
        return self._apply(self._params, ids)

    def info(self) -> dict:
        """What reports record about the evaluator."""
        return {
            "evaluator": f"{PREFIX}{self.path}",
            "evaluator_vocab_size": self.vocab_size,
            "evaluator_context": self.context,
            "evaluator_eot_id": self.eot_id,
            "evaluator_bos_id": self.eot_id,
            "evaluator_tokenizer": self.tokenizer.source,
            "evaluator_dtype": str(self.model_info.dtype),
        }


def _check_config(path: str, tokenizer: EvalTokenizer, field: str) -> None:
    """The tokenizer against config.json, before any weight is read (a missing or foreign config.json
    is left to `interop.load_gpt2`, which names the problem)."""
    cfg_path = os.path.join(path, "config.json")
    if not os.path.isfile(cfg_path):
        return
    with open(cfg_path) as f:
        cfg = json.load(f)
    if cfg.get("model_type") == "gpt2" and "vocab_size" in cfg:
        vocab.check_tokenizer(
            tokenizer.base,
            vocab_size=int(cfg["vocab_size"]),
            eot_id=cfg.get("eos_token_id"),
            model=f"the GPT-2 in {path}",
            field=f"{field} (its tokenizer files)",
        )


def load(spec: str, *, dtype: str = "float32", field: str = "eval.evaluator") -> GPT2Evaluator:
    """The GPT-2 of `spec` ("gpt2:DIR" or DIR), float32 by default (the scores of a report)."""
    path = parse(spec, field)
    tokenizer = load_tokenizer(path)  # the cheap checks first: no weight is read for a bad directory
    _check_config(path, tokenizer, field)
    apply_fn, params, info = interop.load_gpt2(path, dtype=dtype)
    return GPT2Evaluator(path, apply_fn, params, info, tokenizer)
