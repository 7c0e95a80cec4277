"""Packed-token input pipeline: TFDS records -> one token file per split -> global batches.

Flow for (dataset, split, tokenizer):
1. the dataset's TFDS builder is prepared once into `config.data.data_dir` (array_record);
2. its records are streamed, tokenized, and written back to back (each document followed by
   the tokenizer's `eot_id`, except for continuous streams like text8) into one flat uint16 /
   uint32 file next to the TFDS data (`<builder dir>/packed/`, or under `config.data.packed_dir`,
   which must be local and is required when data_dir is remote), plus a JSON metadata file
   written last as the completion marker. Later runs only memory-map it: no re-tokenization,
   and nothing larger than one read batch of documents is ever held in RAM (OpenWebText's ~9B
   tokens fit this scheme);
3. sequence i is tokens[i*L:(i+1)*L] (L = `config.data.seq_len`; no padding, the tail that
   does not fill a sequence is dropped).

Training order: epoch e visits the sequences in the permutation drawn by
`np.random.Generator(PCG64(rng.numpy_seed(seed, "data", e)))` (identity if not
`config.data.shuffle`), in global batches of `config.train.batch_size` (an incomplete last
batch is dropped). Process p of P materialises only rows [p*B/P, (p+1)*B/P) of each global
batch, so the processes' batches stacked in process order are exactly the single-process
global batch. The iterator state is {epoch, index} (+ shape fields checked on restore).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import tempfile
from typing import Iterator

import numpy as np

from mdm_jax import rng
from mdm_jax.data import tokenizers

log = logging.getLogger(__name__)

# OpenWebText has no official validation split; like MDLM we hold out its last 100k documents.
OWT_VALIDATION_DOCS = 100_000
_PACK_FORMAT = 1          # bump to invalidate packed files when the packing rules change
_READ_BATCH = 1024        # records tokenized at once while packing


@dataclasses.dataclass(frozen=True)
class _Split:
    tfds_split: str
    start: int | None = None   # record range [start, stop) within the TFDS split (Python slice
    stop: int | None = None    # semantics, negative = from the end)


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    builder: str               # class name in mdm_jax.data.builders
    splits: dict
    separate_documents: bool = True   # False: one continuous stream (text8), no separators


def _specs() -> dict[str, DatasetSpec]:
    return {
        "embedded": DatasetSpec("EmbeddedCorpus", {"train": _Split("train"),
                                                   "validation": _Split("validation")}),
        "text8": DatasetSpec("Text8", {s: _Split(s) for s in ("train", "validation", "test")},
                             separate_documents=False),
        "lm1b": DatasetSpec("Lm1bText", {"train": _Split("train"),
                                         "validation": _Split("validation")}),
        "openwebtext": DatasetSpec("Openwebtext", {
            "train": _Split("train", None, -OWT_VALIDATION_DOCS),
            "validation": _Split("train", -OWT_VALIDATION_DOCS, None)}),
    }


DATASETS = ("embedded", "text8", "lm1b", "openwebtext")


# ----------------------------------------------------------------------------- validation

def _spec(config) -> DatasetSpec:
    specs = _specs()
    if config.data.dataset not in specs:
        raise ValueError(
            f"config.data.dataset={config.data.dataset!r} is not a known dataset; set it to one "
            f"of {DATASETS}."
        )
    return specs[config.data.dataset]


def _process(process_index, process_count) -> tuple[int, int]:
    if process_index is None or process_count is None:
        import jax

        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    return int(process_index), int(process_count)


def validate(config, process_count: int | None = None) -> tokenizers.Tokenizer:
    """Cheap checks of the data config against the model/train config, before any data work.

    Raises ValueError naming the field and the fix; returns the tokenizer.
    """
    _spec(config)
    tok = tokenizers.get(config.data)
    _check_packed_dir_local(config)
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


def _is_remote(path: str) -> bool:
    return "://" in path


def data_dir(config) -> str:
    d = config.data.data_dir or "~/tensorflow_datasets"
    return d if _is_remote(d) else os.path.abspath(os.path.expanduser(d))


def _check_writable(path: str, field: str) -> None:
    try:
        if _is_remote(path):  # e.g. gs:// through etils.epath (gcsfs)
            from etils import epath

            probe = epath.Path(path) / f".mdm_jax_write_test.{os.getpid()}"
            probe.parent.mkdir(parents=True, exist_ok=True)
            probe.write_text("")
            probe.unlink()
        else:
            os.makedirs(path, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=path):
                pass
    except Exception as e:  # OSError locally; backend-specific errors remotely
        raise ValueError(
            f"{field}={path!r} is not writable ({type(e).__name__}: {e}); the data must be "
            f"prepared there once. Set --{field} to a writable directory."
        ) from None


# ----------------------------------------------------------------------------- packing

def _builder(config):
    from mdm_jax.data import builders

    cls = getattr(builders, _spec(config).builder)
    return cls(data_dir=data_dir(config), file_format="array_record")


def _packed_dir(config, builder) -> tuple[str, str]:
    """Local directory of the packed files (memory-mapped, so never remote) and its config field."""
    if config.data.packed_dir:
        root = os.path.abspath(os.path.expanduser(config.data.packed_dir))
        parts = [builder.name, builder.builder_config.name if builder.builder_config else "",
                 str(builder.version)]
        return os.path.join(root, *filter(None, parts)), "config.data.packed_dir"
    return os.path.join(os.fspath(builder.data_dir), "packed"), "config.data.data_dir"


def _check_packed_dir_local(config) -> None:
    if _is_remote(config.data.packed_dir):
        raise ValueError(
            f"config.data.packed_dir={config.data.packed_dir!r}: the packed token files are "
            "memory-mapped and must be local; set --config.data.packed_dir to a local directory."
        )
    if not config.data.packed_dir and _is_remote(data_dir(config)):
        raise ValueError(
            f"config.data.data_dir={data_dir(config)!r} is remote, but the packed token files are "
            "memory-mapped and must be local: set --config.data.packed_dir to a local directory."
        )


def _fingerprint(tok, config, split: _Split) -> str:
    """Names a packed file by everything its content depends on besides the TFDS data."""
    h = hashlib.sha1(f"{tok.name}:{tok.vocab_size}:{tok.eot_id}:{_PACK_FORMAT}:{split}".encode())
    for path in getattr(tok, "files", ()):  # the vocabulary files of a file-based tokenizer (gpt2)
        with open(path, "rb") as fh:
            h.update(fh.read())
    return h.hexdigest()[:12]


def _encode_records(tok, texts: list[bytes]) -> list[np.ndarray]:
    if hasattr(tok, "encode_bytes"):
        return [tok.encode_bytes(t) for t in texts]
    return tok.encode_batch([t.decode("utf-8") for t in texts])


def _pack(builder, split: _Split, tok, separate: bool, out_bin: str, out_meta: str) -> dict:
    """Streams a split's records into a flat token file (atomic: tmp file + rename)."""
    source = builder.as_data_source(split=split.tfds_split)
    start, stop, _ = slice(split.start, split.stop).indices(len(source))
    dtype = np.uint16 if tok.vocab_size <= 1 << 16 else np.uint32
    eot = np.array([tok.eot_id], dtype=dtype)
    n_docs = n_bytes = n_tokens = 0
    max_id = -1
    os.makedirs(os.path.dirname(out_bin), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(out_bin), suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            for lo in range(start, stop, _READ_BATCH):
                idx = list(range(lo, min(lo + _READ_BATCH, stop)))
                texts = [r["text"] if isinstance(r["text"], bytes) else r["text"].encode("utf-8")
                         for r in source.__getitems__(idx)]
                chunks = []
                for ids in _encode_records(tok, texts):
                    chunks.append(ids.astype(dtype, copy=False))
                    if separate:
                        chunks.append(eot)
                if chunks:
                    arr = np.concatenate(chunks)
                    if arr.size:
                        max_id = max(max_id, int(arr.max()))
                    f.write(arr.tobytes())
                    n_tokens += arr.size
                n_docs += len(texts)
                n_bytes += sum(len(t) for t in texts)
        meta = {"documents": n_docs, "bytes": n_bytes, "tokens": n_tokens, "max_id": max_id,
                "dtype": np.dtype(dtype).name, "tokenizer": tok.name,
                "vocab_size": tok.vocab_size, "eot_id": tok.eot_id}
        os.chmod(tmp, 0o644)  # mkstemp makes it private; the store may be shared
        os.replace(tmp, out_bin)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(out_meta), suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(meta, f)
    os.chmod(tmp, 0o644)
    os.replace(tmp, out_meta)
    return meta


_STORE_CACHE: dict[str, tuple[np.ndarray, dict]] = {}


def packed_tokens(config, split: str, tok=None) -> tuple[np.ndarray, dict]:
    """The split's packed tokens (memory-mapped, read-only) and their metadata.

    Prepares the TFDS dataset and packs it on first use; cached on disk and in-process.
    """
    spec = _spec(config)
    if split not in spec.splits:
        raise ValueError(
            f"split={split!r} does not exist for config.data.dataset={config.data.dataset!r}; "
            f"use one of {tuple(spec.splits)}."
        )
    tok = tok or tokenizers.get(config.data)
    _check_packed_dir_local(config)
    builder = _builder(config)
    pdir, pfield = _packed_dir(config, builder)
    stem = os.path.join(pdir, f"{split}.{tok.name}-{_fingerprint(tok, config, spec.splits[split])}")
    out_bin, out_meta = stem + ".bin", stem + ".json"
    if out_meta in _STORE_CACHE:
        return _STORE_CACHE[out_meta]
    if not os.path.exists(out_meta):
        _check_writable(pdir if config.data.packed_dir else data_dir(config), pfield)
        if not (builder.data_path / "dataset_info.json").exists():
            _check_writable(data_dir(config), "config.data.data_dir")
            log.info("Preparing TFDS dataset %s in %s", builder.name, data_dir(config))
            builder.download_and_prepare()
            builder = _builder(config)  # re-read the finished dataset_info
        meta = _pack(builder, spec.splits[split], tok, spec.separate_documents, out_bin, out_meta)
        log.info("Packed %s/%s with %s: %d documents, %.2f MB of text, %d tokens -> %s",
                 config.data.dataset, split, tok.name, meta["documents"], meta["bytes"] / 1e6,
                 meta["tokens"], out_bin)
    with open(out_meta) as f:
        meta = json.load(f)
    tokens = (np.memmap(out_bin, dtype=meta["dtype"], mode="r") if meta["tokens"]
              else np.zeros((0,), meta["dtype"]))
    _STORE_CACHE[out_meta] = (tokens, meta)
    return tokens, meta


def dataset_info(config, split: str = "train") -> dict:
    """{documents, bytes, tokens, max_id, ...} of a split (prepares it if needed)."""
    return dict(packed_tokens(config, split)[1])


# ----------------------------------------------------------------------------- batching

def _open(config, split, process_index, process_count):
    tok = validate(config, process_count)
    tokens, meta = packed_tokens(config, split, tok)
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
        out[j] = tokens[r * seq_len:(r + 1) * seq_len]
    return out


class TrainIterator(Iterator[np.ndarray]):
    """Infinite iterator over this process's rows of the global training batches."""

    def __init__(self, tokens, num_seqs, seq_len, global_batch, process_index, process_count,
                 seed, shuffle):
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
        rows = self._permutation(self.epoch)[start:start + self._local]
        self.index += 1
        return _gather(self._tokens, rows, self._seq_len)

    def get_state(self) -> dict:
        """JSON-serialisable position; the shape fields guard against restoring into another setup."""
        return {"epoch": self.epoch, "index": self.index, "num_sequences": self._num_seqs,
                "global_batch": self._global_batch, "seq_len": self._seq_len}

    def set_state(self, state: dict) -> None:
        for key, mine in (("num_sequences", self._num_seqs), ("global_batch", self._global_batch),
                          ("seq_len", self._seq_len)):
            if key in state and int(state[key]) != mine:
                raise ValueError(
                    f"data iterator state was saved with {key}={state[key]} but the current "
                    f"config gives {mine}; resume with the same config.data.dataset/seq_len/"
                    "tokenizer and config.train.batch_size as the checkpoint, or start a new workdir."
                )
        self.epoch, self.index = int(state["epoch"]), int(state["index"])


def make_iterator(config, split: str = "train", process_index: int | None = None,
                  process_count: int | None = None) -> TrainIterator:
    """This process's infinite stream of np.int32[batch_size // process_count, seq_len] batches."""
    process_index, process_count = _process(process_index, process_count)
    tokens, num_seqs = _open(config, split, process_index, process_count)
    return TrainIterator(tokens, num_seqs, config.data.seq_len, config.train.batch_size,
                         process_index, process_count, config.seed, config.data.shuffle)


def eval_batches(config, num_batches: int | None, split: str = "validation",
                 process_index: int | None = None, process_count: int | None = None
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
        _gather(tokens, np.arange(b * batch + process_index * local, b * batch + (process_index + 1) * local),
                config.data.seq_len)
        for b in range(num_batches)
    ]
