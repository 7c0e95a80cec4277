"""Input pipeline: packed token files (`mdm_jax.data.packing`) -> this process's global batches.

Sequence i is tokens[i*L:(i+1)*L] (L = `config.data.seq_len`; no padding, the tail that does
not fill a sequence is dropped).

Training order: epoch e visits the sequences in the permutation drawn by
`np.random.Generator(PCG64(rng.numpy_seed(seed, "data", e)))` (identity if not
`config.data.shuffle`), in global batches of `config.train.batch_size` (an incomplete last
batch is dropped). Process p of P materialises only rows [p*B/P, (p+1)*B/P) of each global
batch, so the processes' batches stacked in process order are exactly the single-process
global batch. The iterator state is {epoch, index} (+ shape fields checked on restore).
"""

from __future__ import annotations

from collections.abc import Iterator

import jax
import numpy as np

from mdm_jax import rng
from mdm_jax.data import packing, tokenizers

# ----------------------------------------------------------------------------- validation


def _process(process_index, process_count) -> tuple[int, int]:
    if process_index is None or process_count is None:
        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    return int(process_index), int(process_count)


def validate(config, process_count: int | None = None) -> tokenizers.Tokenizer:
    """Cheap checks of the data config against the model/train config, before any data work.

    Raises ValueError naming the field and the fix; returns the tokenizer.
    """
    packing.dataset_spec(config)
    tok = tokenizers.get(config.data)
    packing.check_packed_dir_local(config)
    if config.data.seq_len < 1:
        raise ValueError(f"config.data.seq_len={config.data.seq_len} must be >= 1.")
    if config.data.seq_len > config.model.max_len:
        raise ValueError(
            f"config.data.seq_len={config.data.seq_len} is longer than config.model.max_len="
            f"{config.model.max_len}; lower --config.data.seq_len or raise --config.model.max_len."
        )
    if tok.vocab_size > config.model.vocab_size:
        raise ValueError(
            f"config.model.vocab_size={config.model.vocab_size} is smaller than the vocabulary of "
            f"config.data.tokenizer={tok.name!r} ({tok.vocab_size}): a token id >= "
            f"{config.model.vocab_size} would have no embedding; set "
            f"--config.model.vocab_size={tok.vocab_size}."
        )
    if process_count is None:
        _, process_count = _process(0, None)
    if config.train.batch_size < 1 or config.train.batch_size % process_count:
        raise ValueError(
            f"config.train.batch_size={config.train.batch_size} (the global batch) must be a "
            f"positive multiple of the number of processes ({process_count}); set "
            f"--config.train.batch_size to a multiple of {process_count}."
        )
    return tok


# ----------------------------------------------------------------------------- batching


def _open(config, split, process_index, process_count):
    tok = validate(config, process_count)
    tokens, meta = packing.packed_tokens(config, split, tok)
    if meta["max_id"] >= config.model.vocab_size:
        raise ValueError(
            f"config.model.vocab_size={config.model.vocab_size}: the packed {split} data contains "
            f"token id {meta['max_id']} >= it; set --config.model.vocab_size to at least "
            f"{meta['max_id'] + 1}."
        )
    seq_len, batch = config.data.seq_len, config.train.batch_size
    num_seqs = len(tokens) // seq_len
    if num_seqs < batch:
        raise ValueError(
            f"config.data.dataset={config.data.dataset!r} split {split!r} is too small: "
            f"{meta['documents']} documents, {len(tokens)} tokens = {num_seqs} sequences of "
            f"config.data.seq_len={seq_len}, fewer than one global batch "
            f"(config.train.batch_size={batch}). Use a larger dataset or lower the batch size "
            "or sequence length."
        )
    return tokens, num_seqs


def _gather(tokens: np.ndarray, rows: np.ndarray, seq_len: int) -> np.ndarray:
    out = np.empty((len(rows), seq_len), dtype=np.int32)
    for j, r in enumerate(rows.tolist()):
        out[j] = tokens[r * seq_len : (r + 1) * seq_len]
    return out


class TrainIterator(Iterator[np.ndarray]):
    """Infinite iterator over this process's rows of the global training batches."""

    def __init__(self, tokens, num_seqs, seq_len, global_batch, process_index, process_count, seed, shuffle):
        self._tokens, self._seq_len = tokens, seq_len
        self._num_seqs, self._global_batch = num_seqs, global_batch
        self._local = global_batch // process_count
        self._offset = process_index * self._local
        self._seed, self._shuffle = seed, shuffle
        self.steps_per_epoch = num_seqs // global_batch
        self.epoch, self.index = 0, 0
        self._perm_epoch, self._perm = None, None

    def _permutation(self, epoch: int) -> np.ndarray:
        if self._perm_epoch != epoch:
            if self._shuffle:
                gen = np.random.Generator(np.random.PCG64(rng.numpy_seed(self._seed, "data", epoch)))
                self._perm = gen.permutation(self._num_seqs)
            else:
                self._perm = np.arange(self._num_seqs)
            self._perm_epoch = epoch
        return self._perm

    def __iter__(self):
        return self

    def __next__(self) -> np.ndarray:
        if self.index >= self.steps_per_epoch:
            self.epoch, self.index = self.epoch + 1, 0
        start = self.index * self._global_batch + self._offset
        rows = self._permutation(self.epoch)[start : start + self._local]
        self.index += 1
        return _gather(self._tokens, rows, self._seq_len)

    def get_state(self) -> dict:
        """JSON-serialisable position; the shape fields guard against restoring into another setup."""
        return {
            "epoch": self.epoch,
            "index": self.index,
            "num_sequences": self._num_seqs,
            "global_batch": self._global_batch,
            "seq_len": self._seq_len,
        }

    def set_state(self, state: dict) -> None:
        for key, mine in (
            ("num_sequences", self._num_seqs),
            ("global_batch", self._global_batch),
            ("seq_len", self._seq_len),
        ):
            if key in state and int(state[key]) != mine:
                raise ValueError(
                    f"data iterator state was saved with {key}={state[key]} but the current "
                    f"config gives {mine}; resume with the same config.data.dataset/seq_len/"
                    "tokenizer and config.train.batch_size as the checkpoint, or start a new workdir."
                )
        self.epoch, self.index = int(state["epoch"]), int(state["index"])


def make_iterator(
    config, split: str = "train", process_index: int | None = None, process_count: int | None = None
) -> TrainIterator:
    """This process's infinite stream of np.int32[batch_size // process_count, seq_len] batches."""
    process_index, process_count = _process(process_index, process_count)
    tokens, num_seqs = _open(config, split, process_index, process_count)
    return TrainIterator(
        tokens,
        num_seqs,
        config.data.seq_len,
        config.train.batch_size,
        process_index,
        process_count,
        config.seed,
        config.data.shuffle,
    )


def eval_batches(
    config,
    num_batches: int | None,
    split: str = "validation",
    process_index: int | None = None,
    process_count: int | None = None,
) -> list[np.ndarray]:
    """The first `num_batches` global batches of `split` in order (no shuffle), this process's rows.

    `num_batches=None` takes every complete global batch of the split.
    """
    process_index, process_count = _process(process_index, process_count)
    tokens, num_seqs = _open(config, split, process_index, process_count)
    batch = config.train.batch_size
    available = num_seqs // batch
    if num_batches is None:
        num_batches = available
    if not 1 <= num_batches <= available:
        raise ValueError(
            f"{num_batches} eval batches requested (config.eval.num_batches / "
            f"config.train.eval_batches) but split {split!r} of config.data.dataset="
            f"{config.data.dataset!r} has only {available} global batches of "
            f"config.train.batch_size={batch} x config.data.seq_len={config.data.seq_len}; "
            f"request at most {available}."
        )
    local = batch // process_count
    return [
        _gather(
            tokens,
            np.arange(b * batch + process_index * local, b * batch + (process_index + 1) * local),
            config.data.seq_len,
        )
        for b in range(num_batches)
    ]
