"""Sample metrics: pure functions of token ids, as the field computes them (docs/paper.md section 5).

- `sequence_entropy`: per sequence, the unigram entropy of its own token ids (nats), averaged;
- `generative_perplexity`: exp of the token-weighted mean NLL of *all* samples together under
  a causal evaluator (`sequence_nlls` per sequence). End-of-text handling: sequences are scored
  exactly as sampled, with the evaluator's own tokenizer (no retokenisation, the models of a
  project share it); each sequence is preceded by the evaluator's BOS (`sampling.shift_right`,
  the ARM objective's convention) and all L tokens are scored, document separators (`eot_id`)
  like any other token; nothing is truncated at a separator, so text after it is scored in the
  (packed-training) context of what precedes it;
- `reference_entropy`: the same entropy on real held-out (validation) sequences of the same
  length, the value a perfect sampler would match.
Evaluators come from `mdm_jax.evaluators`; `mdm_jax.sample_quality` writes them into reports.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import jax.numpy as jnp
import numpy as np
import optax
import scipy.stats

from mdm_jax.data import pipeline
from mdm_jax.sampling import shift_right

__all__ = [
    "sequence_entropies",
    "sequence_entropy",
    "sequence_nlls",
    "generative_perplexity",
    "reference_entropy",
]


def _as_sequences(tokens) -> list[np.ndarray]:
    if isinstance(tokens, (list, tuple)):  # possibly ragged
        return [np.asarray(t).reshape(-1) for t in tokens]
    arr = np.asarray(tokens)
    return list(arr.reshape(1, -1) if arr.ndim == 1 else arr)


def sequence_entropies(tokens) -> np.ndarray:
    """Unigram entropy (nats) of each sequence's own token ids; tokens: [N, L] or a list of 1-D."""
    out = []
    for seq in _as_sequences(tokens):
        if seq.size == 0:
            raise ValueError("sequence_entropy: empty sequence")
        _, counts = np.unique(seq, return_counts=True)
        out.append(scipy.stats.entropy(counts))  # normalises counts; natural log
    return np.asarray(out, np.float64)


def sequence_entropy(tokens) -> float:
    """Mean over sequences of the unigram entropy (nats) of each sequence's own ids."""
    return float(np.mean(sequence_entropies(tokens)))


def sequence_nlls(
    evaluator_logits_fn: Callable,
    tokens,
    bos_id: int,
    *,
    vocab_size: int | None = None,
    batch_size: int | None = None,
) -> np.ndarray:
    """Summed NLL (nats) of each sequence under a causal evaluator.

    evaluator_logits_fn(inputs int32[B, L]) -> logits[B, L, V], logits[:, i] predicting the token
    after inputs[:, :i+1]. The inputs are [bos, x_0, ..., x_{L-2}] and the targets x_0..x_{L-1},
    so every sampled token is scored (the ARM objective's convention).
    """
    tokens = np.asarray(tokens)
    if tokens.ndim != 2:
        raise ValueError(f"generative perplexity needs tokens of shape [N, L], got {tokens.shape}")
    if vocab_size is not None and (tokens.min() < 0 or tokens.max() >= vocab_size):
        raise ValueError(
            f"token ids must be in [0, {vocab_size}) for the evaluator (got min {tokens.min()}, max "
            f"{tokens.max()}): a mask token left in a sample, or an evaluator with another vocabulary"
        )
    n = tokens.shape[0]
    bs = batch_size or n
    out = []
    for i in range(0, n, bs):
        x = jnp.asarray(tokens[i : i + bs], jnp.int32)
        logits = jnp.asarray(evaluator_logits_fn(shift_right(x, bos_id)), jnp.float32)
        if vocab_size is None and int(tokens.max()) >= logits.shape[-1]:
            raise ValueError(f"token id {int(tokens.max())} >= evaluator vocabulary {logits.shape[-1]}")
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, x)
        out.append(np.asarray(ce, np.float64).sum(axis=1))
    return np.concatenate(out)


def generative_perplexity(
    evaluator_logits_fn: Callable,
    tokens,
    bos_id: int,
    *,
    vocab_size: int | None = None,
    batch_size: int | None = None,
) -> float:
    """exp(token-weighted mean NLL over all samples) under the evaluator (see module doc)."""
    tokens = np.asarray(tokens)
    nll = sequence_nlls(evaluator_logits_fn, tokens, bos_id, vocab_size=vocab_size, batch_size=batch_size)
    return float(np.exp(nll.sum() / tokens.size))


def reference_entropy(config, seq_len: int, num_sequences: int, split: str = "validation") -> float:
    """Mean unigram entropy of the first `num_sequences` real `split` sequences of length seq_len."""
    cfg = copy.deepcopy(config)
    with cfg.unlocked():
        cfg.data.seq_len = int(seq_len)
        cfg.train.batch_size = int(num_sequences)
    # One global batch of the wanted size; sequences are packed text with separators, like the
    # training data the samples imitate.
    batch = pipeline.eval_batches(cfg, 1, split=split, process_index=0, process_count=1)[0]
    return sequence_entropy(batch)
