"""Packed token files: TFDS records -> one flat token file per (dataset, split, tokenizer).

1. the dataset's TFDS builder is prepared once into `config.data.data_dir` (array_record);
2. its records are streamed, tokenized, and written back to back (each document followed by
   the tokenizer's `eot_id`, except for continuous streams like text8) into one flat uint16 /
   uint32 file next to the TFDS data (`<builder dir>/packed/`, or under `config.data.packed_dir`,
   which must be local and is required when data_dir is remote), plus a JSON metadata file
   written last as the completion marker. Later runs only memory-map it: no re-tokenization,
   and nothing larger than one read batch of documents is ever held in RAM (OpenWebText's ~9B
   tokens fit this scheme).
`packed_tokens(config, split)` returns the memory-mapped tokens; `mdm_jax.data.pipeline` cuts
them into batches.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import tempfile

import numpy as np
from etils import epath

from mdm_jax.data import builders, tokenizers

log = logging.getLogger(__name__)

# OpenWebText has no official validation split; like MDLM we hold out its last 100k documents.
OWT_VALIDATION_DOCS = 100_000
_PACK_FORMAT = 1  # bump to invalidate packed files when the packing rules change
_READ_BATCH = 1024  # records tokenized at once while packing


@dataclasses.dataclass(frozen=True)
class _Split:
    tfds_split: str
    start: int | None = None  # record range [start, stop) within the TFDS split (Python slice
    stop: int | None = None  # semantics, negative = from the end)


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    builder: str  # class name in mdm_jax.data.builders
    splits: dict
    separate_documents: bool = True  # False: one continuous stream (text8), no separators


def _specs() -> dict[str, DatasetSpec]:
    return {
        "embedded": DatasetSpec(
            "EmbeddedCorpus", {"train": _Split("train"), "validation": _Split("validation")}
        ),
        "text8": DatasetSpec(
            "Text8", {s: _Split(s) for s in ("train", "validation", "test")}, separate_documents=False
        ),
        "lm1b": DatasetSpec("Lm1bText", {"train": _Split("train"), "validation": _Split("validation")}),
        "openwebtext": DatasetSpec(
            "Openwebtext",
            {
                "train": _Split("train", None, -OWT_VALIDATION_DOCS),
                "validation": _Split("train", -OWT_VALIDATION_DOCS, None),
            },
        ),
    }


DATASETS = ("embedded", "text8", "lm1b", "openwebtext")


# ----------------------------------------------------------------------------- data directories


def dataset_spec(config) -> DatasetSpec:
    """The DatasetSpec of config.data.dataset (ValueError naming the field if unknown)."""
    specs = _specs()
    if config.data.dataset not in specs:
        raise ValueError(
            f"config.data.dataset={config.data.dataset!r} is not a known dataset; set it to one "
            f"of {DATASETS}."
        )
    return specs[config.data.dataset]


def _is_remote(path: str) -> bool:
    return "://" in path


def data_dir(config) -> str:
    d = config.data.data_dir or "~/tensorflow_datasets"
    return d if _is_remote(d) else os.path.abspath(os.path.expanduser(d))


def _check_writable(path: str, field: str) -> None:
    try:
        if _is_remote(path):  # e.g. gs:// through etils.epath (gcsfs)
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
    cls = getattr(builders, dataset_spec(config).builder)
    return cls(data_dir=data_dir(config), file_format="array_record")


def _packed_dir(config, builder) -> tuple[str, str]:
    """Local directory of the packed files (memory-mapped, so never remote) and its config field."""
    if config.data.packed_dir:
        root = os.path.abspath(os.path.expanduser(config.data.packed_dir))
        parts = [
            builder.name,
            builder.builder_config.name if builder.builder_config else "",
            str(builder.version),
        ]
        return os.path.join(root, *filter(None, parts)), "config.data.packed_dir"
    return os.path.join(os.fspath(builder.data_dir), "packed"), "config.data.data_dir"


def check_packed_dir_local(config) -> None:
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
                texts = [
                    r["text"] if isinstance(r["text"], bytes) else r["text"].encode("utf-8")
                    for r in source.__getitems__(idx)
                ]
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
        meta = {
            "documents": n_docs,
            "bytes": n_bytes,
            "tokens": n_tokens,
            "max_id": max_id,
            "dtype": np.dtype(dtype).name,
            "tokenizer": tok.name,
            "vocab_size": tok.vocab_size,
            "eot_id": tok.eot_id,
        }
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
    spec = dataset_spec(config)
    if split not in spec.splits:
        raise ValueError(
            f"split={split!r} does not exist for config.data.dataset={config.data.dataset!r}; "
            f"use one of {tuple(spec.splits)}."
        )
    tok = tok or tokenizers.get(config.data)
    check_packed_dir_local(config)
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
            if not _is_remote(data_dir(config)):
                builders.check_downloads_reachable(
                    type(builder), data_dir(config), dataset=config.data.dataset
                )
            log.info("Preparing TFDS dataset %s in %s", builder.name, data_dir(config))
            builder.download_and_prepare()
            builder = _builder(config)  # re-read the finished dataset_info
        meta = _pack(builder, spec.splits[split], tok, spec.separate_documents, out_bin, out_meta)
        log.info(
            "Packed %s/%s with %s: %d documents, %.2f MB of text, %d tokens -> %s",
            config.data.dataset,
            split,
            tok.name,
            meta["documents"],
            meta["bytes"] / 1e6,
            meta["tokens"],
            out_bin,
        )
    with open(out_meta) as f:
        meta = json.load(f)
    tokens = (
        np.memmap(out_bin, dtype=meta["dtype"], mode="r") if meta["tokens"] else np.zeros((0,), meta["dtype"])
    )
    _STORE_CACHE[out_meta] = (tokens, meta)
    return tokens, meta


def dataset_info(config, split: str = "train") -> dict:
    """{documents, bytes, tokens, max_id, ...} of a split (prepares it if needed)."""
    return dict(packed_tokens(config, split)[1])
