"""TFDS builders (array_record, feature {'text': Text}) for every dataset mdm-jax trains on.

Preparing and reading needs no TensorFlow: `download_and_prepare(file_format='array_record')`
writes with `array_record`, and the pipeline reads with `builder.as_data_source()` (text comes
back as UTF-8 bytes). `disable_shuffling=True` everywhere, so records keep the source order:
packing is then a deterministic function of the source, and "the last N documents" is
well defined.

Downloads go through the TFDS download manager. A file already present in the manual
directory (`<data_dir>/downloads/manual/` by default) is used instead of downloading it, which
is how the tests feed tiny fake archives and how offline users provide the real ones.
"""

from __future__ import annotations

import inspect
import io
import os
import re
import socket
import tarfile
import urllib.parse
import zipfile

import tensorflow_datasets as tfds
from etils import epath

from mdm_jax.data import corpus
from mdm_jax.errors import ConfigError

_FEATURES = lambda: tfds.features.FeaturesDict({"text": tfds.features.Text()})  # noqa: E731


def _local_or_download(dl_manager, files: dict[str, str]) -> dict[str, epath.Path]:
    """{filename: url} -> {filename: path}: `manual_dir/filename` where the user (or a test) put
    it, the rest downloaded (in parallel)."""
    try:
        manual = dl_manager.manual_dir
    except (AssertionError, ValueError):  # no manual dir, or it is empty
        manual = None
    local = {f: manual / f for f in files if manual is not None and (manual / f).exists()}
    remote = {f: url for f, url in files.items() if f not in local}
    fetched = dl_manager.download(remote) if remote else {}
    return {f: epath.Path(local[f] if f in local else fetched[f]) for f in files}


def manual_dir(data_dir: str) -> str:
    """TFDS's default manual directory under a data_dir: where offline users put the files."""
    return os.path.join(data_dir, "downloads", "manual")


def check_downloads_reachable(builder_cls, data_dir: str, *, dataset: str, timeout_s: float = 5.0) -> None:
    """Before preparing a dataset: the files it still has to download must be reachable.

    On a machine without network the TFDS download manager retries for minutes and ends in a long
    trace; this connects once to each host (seconds) and otherwise stops with the manual step.
    """
    manual = manual_dir(data_dir)
    missing = {
        f: u for f, u in builder_cls.remote_files().items() if not os.path.exists(os.path.join(manual, f))
    }
    hosts = sorted(
        {
            (
                urllib.parse.urlsplit(u).hostname,
                urllib.parse.urlsplit(u).port or (443 if u.startswith("https") else 80),
            )
            for u in missing.values()
        }
    )
    for host, port in hosts:
        try:
            socket.create_connection((host, port), timeout=timeout_s).close()
        except OSError as e:
            names = ", ".join(list(missing)[:3])
            names += f", ... ({len(missing)} files)" if len(missing) > 3 else ""
            first = next(iter(missing.values()))
            raise ConfigError(
                f"config.data.dataset={dataset!r} is not prepared in {data_dir} and needs {names}, but "
                f"{host}:{port} cannot be reached from this machine ({type(e).__name__}: {e}). Download "
                f"them on a machine with network access (e.g. {first}) and put them in {manual}/ "
                "(under config.data.data_dir), then rerun: nothing will be downloaded."
            ) from None


class _Builder(tfds.core.GeneratorBasedBuilder):
    """Shared base (abstract, so not registered with TFDS)."""

    @classmethod
    def remote_files(cls) -> dict[str, str]:
        """{filename: url} of what preparing downloads (unless it is in the manual directory)."""
        return {}

    # TFDS's default `code_path` needs the `importlib_resources` backport for builders that
    # live in a package (an undeclared dependency of tensorflow-datasets 4.9.x); the file of
    # the class is all it is used for (to look for a checksums file next to it).
    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        return epath.Path(inspect.getfile(cls))


class EmbeddedCorpus(_Builder):
    """English prose shipped with Python (see `mdm_jax.data.corpus`); no network needed.

    One builder config per Python minor version, since the text comes from the interpreter.
    Split: ~95% train / ~5% validation (by bytes), documents chosen by a stable hash of their name.
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "pydoc topics + docstrings of a fixed list of stdlib modules."}
    BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=corpus.python_tag())]

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self, description=__doc__, features=_FEATURES(), disable_shuffling=True
        )

    def _split_generators(self, dl_manager):
        return {s: self._generate_examples(s) for s in ("train", "validation")}

    def _generate_examples(self, split):
        docs = list(corpus.documents())
        validation = corpus.validation_names(docs)
        for name, text in docs:
            if (name in validation) == (split == "validation"):
                yield name, {"text": text}


class Text8(_Builder):
    """text8 (first 1e8 characters of a cleaned 2006 Wikipedia dump, 27 symbols).

    Standard split: characters [0, 90M) train, [90M, 95M) validation, [95M, 100M) test. text8
    is one continuous stream, so it is stored as consecutive chunks of `CHUNK` characters that
    the pipeline concatenates *without* separators.
    """

    VERSION = tfds.core.Version("1.0.0")
    URL = "http://mattmahoney.net/dc/text8.zip"
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Optionally place text8.zip (from http://mattmahoney.net/dc/text8.zip) here."
    )
    CHUNK = 1 << 20
    SPLIT_FRACTIONS = {"train": (0.0, 0.9), "validation": (0.9, 0.95), "test": (0.95, 1.0)}

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            features=_FEATURES(),
            disable_shuffling=True,
            homepage="http://mattmahoney.net/dc/textdata.html",
        )

    @classmethod
    def remote_files(cls) -> dict[str, str]:
        return {"text8.zip": cls.URL}

    def _split_generators(self, dl_manager):
        path = _local_or_download(dl_manager, self.remote_files())["text8.zip"]
        with zipfile.ZipFile(path.open("rb")) as zf:
            text = zf.read("text8").decode("ascii")
        n = len(text)
        return {
            split: self._generate_examples(text[int(a * n) : int(b * n)])
            for split, (a, b) in self.SPLIT_FRACTIONS.items()
        }

    def _generate_examples(self, text):
        for i in range(0, len(text), self.CHUNK):
            yield i, {"text": text[i : i + self.CHUNK]}


class Lm1bText(_Builder):
    """One Billion Word benchmark: one sentence per record.

    TFDS's own `lm1b` builder globs files with `tf.io.gfile`, i.e. needs TensorFlow; this one
    reads the same archive with the standard library. train = the 100 training shards,
    validation = the 50 held-out shards (TFDS's `lm1b` "test" split, as used by MDLM).
    """

    VERSION = tfds.core.Version("1.0.0")
    URL = "http://www.statmt.org/lm-benchmark/1-billion-word-language-modeling-benchmark-r13output.tar.gz"
    ARCHIVE = "1-billion-word-language-modeling-benchmark-r13output.tar.gz"
    TOP = "1-billion-word-language-modeling-benchmark-r13output"
    MANUAL_DOWNLOAD_INSTRUCTIONS = f"Optionally place {ARCHIVE} (from {URL}) here."

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            features=_FEATURES(),
            disable_shuffling=True,
            homepage="http://www.statmt.org/lm-benchmark/",
        )

    @classmethod
    def remote_files(cls) -> dict[str, str]:
        return {cls.ARCHIVE: cls.URL}

    def _split_generators(self, dl_manager):
        # Streamed with `tarfile` (TFDS's extractor needs TensorFlow), once per split.
        archive = _local_or_download(dl_manager, self.remote_files())[self.ARCHIVE]
        return {
            "train": self._generate_examples(archive, "training-monolingual.tokenized.shuffled/news.en-"),
            "validation": self._generate_examples(
                archive, "heldout-monolingual.tokenized.shuffled/news.en.heldout-"
            ),
        }

    def _generate_examples(self, archive, prefix):
        prefix = f"{self.TOP}/{prefix}"
        with tarfile.open(fileobj=archive.open("rb"), mode="r|*") as tar:
            for member in tar:  # archive order (the shards are stored in name order)
                if not (member.isfile() and member.name.startswith(prefix)):
                    continue
                shard = os.path.basename(member.name)
                lines = tar.extractfile(member).read().decode("utf-8").split("\n")  # ~40 MB shards
                for i, line in enumerate(lines):
                    if line := line.strip():
                        yield f"{shard}_{i}", {"text": line}


class Openwebtext(_Builder):
    """OpenWebText (Gokaslan & Cohen 2019), ~8M documents, as one split `train` in source order.

    Source: the 21 archives `subsets/urlsf_subsetNN.tar` of the Hugging Face dataset
    `Skylion007/openwebtext` (the files its own loader reads). Each holds xz-compressed tars
    of .txt documents; documents are read in archive order and cleaned like the Hugging Face
    loader (3+ newlines -> 2, stripped). The validation split (last 100k documents) is cut by
    the pipeline, which reads records by index.
    """

    VERSION = tfds.core.Version("1.0.0")
    URL = "https://huggingface.co/datasets/Skylion007/openwebtext/resolve/main/subsets/urlsf_subset{:02d}.tar"
    NUM_SUBSETS = 21
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Optionally place urlsf_subset00.tar ... urlsf_subset20.tar (from "
        "https://huggingface.co/datasets/Skylion007/openwebtext/tree/main/subsets) here."
    )
    _MANY_NEWLINES = re.compile(r"\n{3,}")

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            features=_FEATURES(),
            disable_shuffling=True,
            homepage="https://skylion007.github.io/OpenWebTextCorpus/",
        )

    @classmethod
    def remote_files(cls) -> dict[str, str]:
        return {f"urlsf_subset{i:02d}.tar": cls.URL.format(i) for i in range(cls.NUM_SUBSETS)}

    def _split_generators(self, dl_manager):
        files = self.remote_files()
        paths = _local_or_download(dl_manager, files)
        return {"train": self._generate_examples([paths[f] for f in files])}

    def _generate_examples(self, archives):
        for archive in archives:
            with tarfile.open(fileobj=archive.open("rb"), mode="r|*") as outer:
                for member in outer:
                    if not (member.isfile() and member.name.endswith(".xz")):
                        continue
                    inner_bytes = outer.extractfile(member).read()
                    with tarfile.open(fileobj=io.BytesIO(inner_bytes), mode="r:xz") as inner:
                        for doc in inner:
                            if not (doc.isfile() and doc.name.endswith(".txt")):
                                continue
                            raw = inner.extractfile(doc).read().decode("utf-8", errors="replace")
                            text = self._MANY_NEWLINES.sub("\n\n", raw).strip()
                            if text:
                                key = f"{os.path.basename(member.name)}/{os.path.basename(doc.name)}"
                                yield key, {"text": text}
