"""Generative perplexity under MDLM's definition, and the standard error every definition reports.

Two definitions exist in this project; every report names the one it used (`DEFINITIONS`):
- "project": the token ids exactly as sampled, each sequence after the evaluator's BOS, every token
  scored (`sample_metrics.sequence_nlls`); it needs the evaluator's tokenizer to be the samples'.
- "mdlm": MDLM's `compute_generative_perplexity` (github.com/kuleshov-group/mdlm, `diffusion.py`):
  1. decode every sample to text with the samples' tokenizer, then transformers' default
     `clean_up_tokenization_spaces` (" ." -> ".", " n't" -> "n't", ...: MDLM's `batch_decode`);
  2. retokenise with the evaluator's tokenizer, `<|endoftext|>` in the text becoming the
     end-of-text id, truncated to `max_length` (MDLM: the model length) and right-padded with the
     end-of-text id to the longest sequence of its padding group (MDLM: one sampling batch);
  3. split every row into chunks of the evaluator's context; in each chunk the first token is
     context only and every later token is a target, predicted from the chunk's tokens before it;
  4. a target counts when it is not the end-of-text id, or is the chunk's first end-of-text
     (`(x == eot).cumsum() == 1` or `x != eot`); so text after an end-of-text is still counted and
     only repeated end-of-text ids (and the padding after the first one) are not;
  5. gen PPL = exp(sum of counted NLLs / number of counted targets) over all samples together.
  The differences from MDLM's code are listed in docs/evaluation.md.

Every function here is pure (token ids, texts and a logits function in, numbers out).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

__all__ = [
    "DEFINITIONS",
    "DESCRIPTIONS",
    "check_definition",
    "clean_up_tokenization",
    "decode",
    "retokenize",
    "target_weights",
    "chunked_nlls",
    "mdlm_generative_perplexity",
    "ratio_stderr",
]

DEFINITIONS = ("project", "mdlm")
DESCRIPTIONS = {
    "project": "exp(sum of NLL over all sampled tokens / their number); token ids as sampled (no "
    "retokenisation), each sequence after the evaluator's BOS, separators scored like any token",
    "mdlm": "MDLM's compute_generative_perplexity: decode, clean up spaces, retokenise with the "
    "evaluator's tokenizer (truncate to the sample length, pad with end-of-text per padding group), "
    "chunks of the evaluator's context, every token after a chunk's first scored except repeated "
    "end-of-text ids; exp(sum NLL / count) over all samples",
}


def check_definition(definition: str) -> str:
    if definition not in DEFINITIONS:
        raise ValueError(
            f"eval.gen_ppl_definition={definition!r}: choose one of {', '.join(DEFINITIONS)} "
            "(docs/evaluation.md)"
        )
    return definition


def clean_up_tokenization(text: str) -> str:
    """transformers' `clean_up_tokenization` (default on in the version MDLM pins, 4.38.2)."""
    for old, new in (
        (" .", "."),
        (" ?", "?"),
        (" !", "!"),
        (" ,", ","),
        (" ' ", "'"),
        (" n't", "n't"),
        (" 'm", "'m"),
        (" 's", "'s"),
        (" 've", "'ve"),
        (" 're", "'re"),
    ):
        text = text.replace(old, new)
    return text


def decode(tokenizer, tokens) -> list[str]:
    """MDLM's `tokenizer.batch_decode(samples)`: special tokens kept as text, spaces cleaned up."""
    return [clean_up_tokenization(tokenizer.decode(np.asarray(row).tolist())) for row in tokens]


def retokenize(
    tokenizer, texts: Sequence[str], *, max_length: int, pad_id: int, group_size: int | None = None
) -> tuple[list[np.ndarray], list[int]]:
    """(rows, lengths): evaluator token ids of each text truncated to max_length, padded with pad_id
    to the longest row of its group of `group_size` consecutive texts (None: one group), and the
    unpadded lengths."""
    if max_length < 2:
        raise ValueError(f"max_length={max_length}: MDLM's definition needs at least 2 tokens per sample")
    ids = [np.asarray(tokenizer.encode(t), np.int64)[:max_length] for t in texts]
    size = len(ids) if not group_size else int(group_size)
    out = []
    for g in range(0, len(ids), max(size, 1)):
        group = ids[g : g + size]
        width = max(len(r) for r in group)
        out += [np.pad(r, (0, width - len(r)), constant_values=pad_id) for r in group]
    return out, [len(r) for r in ids]


def target_weights(chunk: np.ndarray, eot_id: int) -> np.ndarray:
    """[..., n] ids of a chunk -> [..., n - 1] 0/1 weights of the targets chunk[..., 1:] (step 4)."""
    is_eot = chunk == eot_id
    first = np.cumsum(is_eot, axis=-1) == 1
    return (first | ~is_eot)[..., 1:].astype(np.float64)


def chunked_nlls(
    logits_fn: Callable,
    rows: Sequence[np.ndarray],
    *,
    eot_id: int,
    context: int,
    vocab_size: int,
    batch_size: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(summed NLL [N], counted targets [N]) of MDLM's steps 3-4 for retokenised rows.

    logits_fn(ids int32[b, n]) -> logits [b, n, V] of a causal model, n <= context. The weights are
    those of each row as given (its own chunks); to run one compiled shape, every chunk is then
    right-padded with end-of-text to a common width and the batch to `batch_size` rows, with weight
    0: the model is causal, so padding on the right changes no counted target's logits.
    """
    n = len(rows)
    width_all = max(len(r) for r in rows)
    ids = np.full((n, width_all), eot_id, np.int64)
    weights = np.zeros((n, width_all))  # weights[i, j]: target ids[i, j] (never j = chunk start)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = r
        for start in range(0, len(r), context):
            chunk = np.asarray(r[start : start + context])
            if len(chunk) >= 2:  # a one-token chunk has no target (torch: logits[..., :-1] is empty)
                weights[i, start + 1 : start + len(chunk)] = target_weights(chunk, eot_id)
    if ids.min() < 0 or ids.max() >= vocab_size:
        raise ValueError(
            f"retokenised ids outside the evaluator's vocabulary [0, {vocab_size}): "
            "the tokenizer does not belong to this evaluator"
        )
    width = min(context, width_all)
    bs = min(batch_size or n, n)
    rows_pad = -n % bs
    ids = np.pad(ids, ((0, rows_pad), (0, -width_all % width)), constant_values=eot_id)
    weights = np.pad(weights, ((0, rows_pad), (0, ids.shape[1] - width_all)))
    nll = np.zeros(len(ids))
    for start in range(0, ids.shape[1], width):
        for b in range(0, len(ids), bs):
            w = weights[b : b + bs, start + 1 : start + width]
            if not w.any():
                continue
            x = jnp.asarray(ids[b : b + bs, start : start + width], jnp.int32)
            nll[b : b + bs] += (np.asarray(_target_nll(logits_fn(x), x), np.float64) * w).sum(axis=1)
    return nll[:n], weights[:n].sum(axis=1)


@jax.jit
def _target_nll(logits, x):
    """-log p(x[:, j] | x[:, :j]) for j >= 1 from causal logits [b, n, V], in float32."""
    return optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1].astype(jnp.float32), x[:, 1:])


def ratio_stderr(nll: np.ndarray, count: np.ndarray) -> float:
    """Standard error of R = sum(nll) / sum(count) over sequences (delta method, ratio estimator).

    With equal counts this is the standard error of the mean per-token NLL; gen PPL = exp(R) has
    standard error exp(R) * ratio_stderr.
    """
    nll, count = np.asarray(nll, np.float64), np.asarray(count, np.float64)
    n = len(nll)
    if n < 2 or count.sum() <= 0:
        return float("nan")
    r = nll.sum() / count.sum()
    resid = nll - r * count
    return float(math.sqrt(np.sum(resid**2) / (n * (n - 1))) / count.mean())


def mdlm_generative_perplexity(
    logits_fn: Callable,
    tokens,
    *,
    sample_tokenizer,
    eval_tokenizer,
    eot_id: int,
    context: int,
    vocab_size: int,
    max_length: int | None = None,
    group_size: int | None = None,
    batch_size: int | None = None,
) -> dict:
    """Gen PPL of samples int[N, L] under MDLM's definition (module docstring).

    sample_tokenizer decodes the samples (`.decode(ids) -> str`); eval_tokenizer retokenises
    (`.encode(text) -> ids`, end-of-text text -> eot_id). max_length defaults to L (MDLM: the model
    length); group_size is the padding group (MDLM: the sampling batch; None: all samples).
    Returns gen_ppl, its standard error, the per-sequence sums and counts, and the texts.
    """
    tokens = np.asarray(tokens)
    if tokens.ndim != 2:
        raise ValueError(f"generative perplexity needs tokens of shape [N, L], got {tokens.shape}")
    texts = decode(sample_tokenizer, tokens)
    rows, lengths = retokenize(
        eval_tokenizer,
        texts,
        max_length=int(max_length or tokens.shape[1]),
        pad_id=eot_id,
        group_size=group_size,
    )
    nll, count = chunked_nlls(
        logits_fn, rows, eot_id=eot_id, context=context, vocab_size=vocab_size, batch_size=batch_size
    )
    if count.sum() == 0:
        raise ValueError("no token to score: every retokenised sample is shorter than 2 tokens")
    mean = float(nll.sum() / count.sum())
    se = ratio_stderr(nll, count)
    return {
        "gen_ppl": math.exp(mean),
        "gen_ppl_se": math.exp(mean) * se,
        "gen_nll_per_token": mean,
        "gen_nll_per_token_se": se,
        "sequence_nll": nll,
        "sequence_count": count,
        "retokenized_lengths": lengths,
        "texts": texts,
        "gen_ppl_definition": "mdlm",
    }
