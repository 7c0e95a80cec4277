"""mdm_jax.data: tokenizers, TFDS builders (no TensorFlow, no network) and the packed pipeline."""

import io
import json
import os
import sys
import tarfile
import zipfile

import numpy as np
import pytest

from mdm_jax import config as config_lib, errors
from mdm_jax.data import builders, corpus, packing, pipeline, tokenizers

WORDS = (
    "the quick brown fox jumps over a lazy dog while seven wizards quietly hex "
    "jolly boxing frogs and many other words appear here too"
).split()


def make_config(data_dir, **data):
    c = config_lib.base()
    c.data.data_dir = str(data_dir)
    c.data.seq_len = 64
    c.model.max_len = 64
    c.train.batch_size = 8
    for k, v in data.items():
        setattr(c.data, k, v)
    return c


def fake_text(n_words, seed):
    r = np.random.default_rng(seed)
    return " ".join(WORDS[i] for i in r.integers(0, len(WORDS), n_words))


@pytest.fixture(scope="module")
def embedded_dir(tmp_path_factory):
    """One prepared embedded corpus shared by the tests of this module (prepared in ~2 s)."""
    d = tmp_path_factory.mktemp("tfds")
    packing.packed_tokens(make_config(d), "train")
    packing.packed_tokens(make_config(d), "validation")
    return d


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    """A tiny byte-level BPE trained here and saved in GPT-2's file format."""
    from tokenizers import ByteLevelBPETokenizer

    d = tmp_path_factory.mktemp("gpt2")
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        [fake_text(200, s) for s in range(20)],
        vocab_size=400,
        special_tokens=[tokenizers.GPT2_EOT],
        show_progress=False,
    )
    bpe.save_model(str(d))
    return d


# ----------------------------------------------------------------------------- tokenizers


def test_byte_tokenizer_roundtrip_and_mask():
    tok = tokenizers.get(make_config("x").data)
    assert (tok.name, tok.vocab_size, tok.eot_id) == ("byte", 256, 0)
    ids = tok.encode("Naïve café\n")
    assert ids.dtype == np.int32 and ids.max() < 256
    assert tok.decode(ids) == "Naïve café\n"
    assert tok.decode(np.array([104, 256, 105])) == "h" + tokenizers.MASK_CHAR + "i"


def test_char_tokenizer_text8_style():
    tok = tokenizers.get(make_config("x", tokenizer="char").data)
    assert (tok.vocab_size, tok.eot_id) == (27, 0)
    ids = tok.encode("Hello, World!\n42 times")
    assert tok.decode(ids) == "hello world times"
    assert ids.min() >= 0 and ids.max() < 27
    assert tok.decode([1, 27, 26]) == "a_z"
    text8_like = "anarchism originated as a term of abuse"
    assert tok.decode(tok.encode(text8_like)) == text8_like


def test_gpt2_tokenizer_from_local_files(gpt2_dir):
    tok = tokenizers.get(make_config("x", tokenizer="gpt2", gpt2_vocab_dir=str(gpt2_dir)).data)
    vocab = json.loads((gpt2_dir / "vocab.json").read_text())
    assert tok.vocab_size == len(vocab) and tok.eot_id == vocab[tokenizers.GPT2_EOT]
    text = "the lazy dog jumps over the quick fox, ünïcode too."
    ids = tok.encode(text)
    assert ids.dtype == np.int32 and ids.max() < tok.vocab_size
    assert len(ids) < len(text.encode())  # merges were applied
    assert tok.decode(ids) == text
    assert tokenizers.MASK_CHAR in tok.decode(np.concatenate([ids[:2], [tok.vocab_size], ids[2:]]))
    assert [a.tolist() for a in tok.encode_batch([text, "dog"])] == [ids.tolist(), tok.encode("dog").tolist()]


def test_gpt2_missing_files_error(tmp_path):
    with pytest.raises(ValueError, match=r"config\.data\.gpt2_vocab_dir.*huggingface"):
        tokenizers.get(make_config("x", tokenizer="gpt2", gpt2_vocab_dir=str(tmp_path)).data)
    with pytest.raises(ValueError, match=r"config\.data\.gpt2_vocab_dir"):
        tokenizers.get(make_config("x", tokenizer="gpt2").data)


# ----------------------------------------------------------------------------- embedded corpus


def test_embedded_corpus_is_deterministic_english_with_fixed_split():
    docs = list(corpus.documents())
    assert docs == list(corpus.documents())
    assert len({n for n, _ in docs}) == len(docs)
    total = sum(len(t.encode()) for _, t in docs)
    val_names = corpus.validation_names(docs)
    val = sum(len(t.encode()) for n, t in docs if n in val_names)
    assert total > 1_500_000 and 0.05 <= val / total < 0.10 and len(val_names) > 5
    text = " ".join(t for _, t in docs)
    for word in (" the ", " is ", " and ", " of ", " returns "):
        assert text.count(word) > 250


def test_embedded_pipeline_prepares_without_tensorflow(embedded_dir):
    c = make_config(embedded_dir)
    info = packing.dataset_info(c, "train")
    assert info["bytes"] > 1_500_000 and info["documents"] > 200
    assert info["tokens"] == info["bytes"] + info["documents"]  # byte tokens + one separator each
    assert "tensorflow" not in sys.modules
    # The TFDS dataset is array_record and readable through the data source API.
    b = builders.EmbeddedCorpus(data_dir=str(embedded_dir))
    src = b.as_data_source(split="validation")
    assert len(src) == packing.dataset_info(c, "validation")["documents"]
    assert isinstance(src[0]["text"], bytes)


def test_packing_concatenates_documents_with_separator(embedded_dir):
    c = make_config(embedded_dir)
    tokens, meta = packing.packed_tokens(c, "validation")
    src = builders.EmbeddedCorpus(data_dir=str(embedded_dir)).as_data_source(split="validation")
    tok = tokenizers.get(c.data)
    expected = np.concatenate(
        [np.append(tok.encode(src[i]["text"].decode()), tok.eot_id) for i in range(len(src))]
    )
    np.testing.assert_array_equal(np.asarray(tokens), expected)
    # Eval batches are the first sequences in order: a plain reshape of the stream.
    ev = pipeline.eval_batches(c, 2, process_index=0, process_count=1)
    np.testing.assert_array_equal(np.concatenate(ev), expected[: 2 * 8 * 64].reshape(16, 64))


def test_train_batches_shape_ids_and_cache(embedded_dir, monkeypatch):
    c = make_config(embedded_dir)
    it = pipeline.make_iterator(c, process_index=0, process_count=1)
    batch = next(it)
    assert batch.shape == (8, 64) and batch.dtype == np.int32
    assert 0 <= batch.min() and batch.max() < c.model.vocab_size
    assert " the " in tokenizers.get(c.data).decode(np.concatenate(list(batch)))
    # Second use (fresh process cache) memory-maps the packed file: no TFDS work, no re-tokenizing.
    packing._STORE_CACHE.clear()
    monkeypatch.setattr(packing, "_pack", lambda *a: pytest.fail("re-packed"))
    it2 = pipeline.make_iterator(c, process_index=0, process_count=1)
    np.testing.assert_array_equal(next(it2), batch)


def test_epochs_are_permutations_seeded_by_rng(embedded_dir):
    c = make_config(embedded_dir, seq_len=1024)
    c.model.max_len, c.train.batch_size = 1024, 64
    tokens, _ = packing.packed_tokens(c, "train")
    n = len(tokens) // 1024
    it = pipeline.make_iterator(c, process_index=0, process_count=1)
    spe = it.steps_per_epoch
    assert spe == n // 64
    epochs = [np.concatenate([next(it) for _ in range(spe)]) for _ in range(2)]
    seqs = np.asarray(tokens[: n * 1024]).reshape(n, 1024)
    gen = np.random.Generator(np.random.PCG64(pipeline.rng.numpy_seed(c.seed, "data", 1)))
    np.testing.assert_array_equal(epochs[1], seqs[gen.permutation(n)[: spe * 64]])
    assert not np.array_equal(epochs[0], epochs[1])
    c.data.shuffle = False
    it = pipeline.make_iterator(c, process_index=0, process_count=1)
    np.testing.assert_array_equal(next(it), seqs[:64])


def test_resume_from_state_is_exact_across_epochs(embedded_dir):
    c = make_config(embedded_dir, seq_len=1024)
    c.model.max_len, c.train.batch_size = 1024, 64
    it = pipeline.make_iterator(c, process_index=0, process_count=1)
    k = it.steps_per_epoch - 2
    for _ in range(k):
        next(it)
    state = json.loads(json.dumps(it.get_state()))
    expected = [next(it) for _ in range(5)]  # crosses into epoch 1
    assert it.get_state()["epoch"] == 1
    resumed = pipeline.make_iterator(c, process_index=0, process_count=1)
    resumed.set_state(state)
    for a, b in zip(expected, [next(resumed) for _ in range(5)]):
        np.testing.assert_array_equal(a, b)
    c.train.batch_size = 32
    with pytest.raises(ValueError, match="global_batch"):
        pipeline.make_iterator(c, process_index=0, process_count=1).set_state(state)


def test_processes_read_disjoint_rows_that_union_to_the_global_batch(embedded_dir):
    c = make_config(embedded_dir)
    single = pipeline.make_iterator(c, process_index=0, process_count=1)
    shards = [pipeline.make_iterator(c, process_index=p, process_count=4) for p in range(4)]
    for _ in range(3):
        parts = [next(s) for s in shards]
        assert all(p.shape == (2, 64) for p in parts)
        np.testing.assert_array_equal(np.concatenate(parts), next(single))
    ev1 = pipeline.eval_batches(c, 3, process_index=0, process_count=1)
    ev4 = [pipeline.eval_batches(c, 3, process_index=p, process_count=4) for p in range(4)]
    for b in range(3):
        np.testing.assert_array_equal(np.concatenate([e[b] for e in ev4]), ev1[b])


# ----------------------------------------------------------------------------- real datasets, locally faked


def test_text8_builder_split_and_continuous_packing(tmp_path):
    text = fake_text(4000, 0)[:20000]
    manual = tmp_path / "downloads" / "manual"
    manual.mkdir(parents=True)
    with zipfile.ZipFile(manual / "text8.zip", "w") as zf:
        zf.writestr("text8", text)
    c = make_config(tmp_path, dataset="text8", tokenizer="char")
    c.model.vocab_size = 27
    tok = tokenizers.get(c.data)
    for split, (a, b) in (("train", (0, 18000)), ("validation", (18000, 19000)), ("test", (19000, 20000))):
        tokens, meta = packing.packed_tokens(c, split)
        assert tok.decode(tokens) == text[a:b]  # no separators: one continuous stream
        assert meta["dtype"] == "uint16"
    batch = next(pipeline.make_iterator(c, process_index=0, process_count=1))
    assert batch.shape == (8, 64) and batch.max() < 27


def test_dataset_that_needs_a_download_without_network_says_so_at_once(tmp_path, monkeypatch):
    # A closed local port stands in for a host this machine cannot reach (no network is needed,
    # or used: the connection is refused at once).
    monkeypatch.setattr(builders.Text8, "URL", "http://127.0.0.1:9/text8.zip")
    c = make_config(tmp_path, dataset="text8", tokenizer="char")
    c.model.vocab_size = 27
    with pytest.raises(errors.ConfigError) as e:
        packing.packed_tokens(c, "train")
    msg = str(e.value)
    assert "config.data.dataset='text8'" in msg and "needs text8.zip" in msg and "127.0.0.1:9" in msg
    assert f"put them in {tmp_path}/downloads/manual/" in msg and "config.data.data_dir" in msg
    assert not (tmp_path / "text8").exists()  # nothing was prepared


def test_lm1b_builder_reads_archive_without_tensorflow(tmp_path):
    top = "1-billion-word-language-modeling-benchmark-r13output"
    files = {
        f"{top}/training-monolingual.tokenized.shuffled/news.en-00001-of-00100": ["a b c .", "d e ."],
        f"{top}/training-monolingual.tokenized.shuffled/news.en-00002-of-00100": ["f g h ."],
        f"{top}/heldout-monolingual.tokenized.shuffled/news.en.heldout-00000-of-00050": ["x y ."],
    }
    manual = tmp_path / "downloads" / "manual"
    manual.mkdir(parents=True)
    with tarfile.open(manual / builders.Lm1bText.ARCHIVE, "w:gz") as tf:
        for name, lines in files.items():
            data = ("\n".join(lines) + "\n").encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    c = make_config(tmp_path, dataset="lm1b")
    tokens, meta = packing.packed_tokens(c, "train")
    assert bytes(np.asarray(tokens, np.uint8)) == b"a b c .\0d e .\0f g h .\0"
    assert meta["documents"] == 3
    tokens, _ = packing.packed_tokens(c, "validation")
    assert bytes(np.asarray(tokens, np.uint8)) == b"x y .\0"
    assert "tensorflow" not in sys.modules


def _owt_archives(manual, docs_per_inner=3, inner_per_subset=2):
    """21 fake `urlsf_subsetNN.tar`, each holding xz tars of .txt documents, like the real ones."""
    docs = []
    for s in range(builders.Openwebtext.NUM_SUBSETS):
        with tarfile.open(manual / f"urlsf_subset{s:02d}.tar", "w") as outer:
            for j in range(inner_per_subset):
                buf = io.BytesIO()
                with tarfile.open(fileobj=buf, mode="w:xz") as inner:
                    for k in range(docs_per_inner):
                        text = f"doc {s} {j} {k}: " + fake_text(30, 100 * s + 10 * j + k)
                        docs.append(text)
                        data = (text + "\n\n\n\n").encode()
                        info = tarfile.TarInfo(f"{s:04d}{j:03d}-{k}.txt")
                        info.size = len(data)
                        inner.addfile(info, io.BytesIO(data))
                info = tarfile.TarInfo(f"openwebtext/urlsf_subset{s:02d}-{j}_data.xz")
                info.size = buf.tell()
                buf.seek(0)
                outer.addfile(info, buf)
    return docs


def test_openwebtext_builder_holds_out_last_documents_gpt2(tmp_path, gpt2_dir, monkeypatch):
    manual = tmp_path / "downloads" / "manual"
    manual.mkdir(parents=True)
    docs = _owt_archives(manual)
    monkeypatch.setattr(packing, "OWT_VALIDATION_DOCS", 5)
    c = make_config(tmp_path, dataset="openwebtext", tokenizer="gpt2", gpt2_vocab_dir=str(gpt2_dir))
    c.data.seq_len = c.model.max_len = 16
    tok = tokenizers.get(c.data)
    c.model.vocab_size = tok.vocab_size
    for split, part in (("train", docs[:-5]), ("validation", docs[-5:])):
        tokens, meta = packing.packed_tokens(c, split)
        expected = np.concatenate([np.append(tok.encode(d), tok.eot_id) for d in part])
        np.testing.assert_array_equal(np.asarray(tokens), expected)
        assert meta["documents"] == len(part)
    assert len(pipeline.eval_batches(c, None, process_index=0, process_count=1)) >= 1
    monkeypatch.setattr(packing, "OWT_VALIDATION_DOCS", len(docs))  # nothing left for train
    packing._STORE_CACHE.clear()
    with pytest.raises(ValueError, match=r"0 documents.*config\.train\.batch_size"):
        pipeline.make_iterator(c, process_index=0, process_count=1)


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "field,value,match",
    [
        ("dataset", "wikitext", r"config\.data\.dataset='wikitext'.*one of"),
        ("tokenizer", "sentencepiece", r"config\.data\.tokenizer='sentencepiece'.*one of"),
    ],
)
def test_unknown_dataset_or_tokenizer(tmp_path, field, value, match):
    with pytest.raises(ValueError, match=match):
        pipeline.validate(make_config(tmp_path, **{field: value}), process_count=1)


def test_seq_len_over_max_len(tmp_path):
    c = make_config(tmp_path, seq_len=128)
    with pytest.raises(ValueError, match=r"config\.data\.seq_len=128.*config\.model\.max_len=64"):
        pipeline.make_iterator(c, process_index=0, process_count=1)


def test_vocab_larger_than_model(tmp_path):
    c = make_config(tmp_path)
    c.model.vocab_size = 100
    with pytest.raises(ValueError, match=r"config\.model\.vocab_size=100.*token id >= 100.*=256"):
        pipeline.eval_batches(c, 1, process_index=0, process_count=1)


def test_data_token_id_over_model_vocab(embedded_dir, monkeypatch):
    # A tokenizer that under-reports its vocabulary passes the config check; the packed data's
    # actual maximum id (non-ASCII bytes of the corpus) is then caught.
    c = make_config(embedded_dir)
    c.model.vocab_size = 128
    monkeypatch.setattr(tokenizers.ByteTokenizer, "vocab_size", 128)
    packing._STORE_CACHE.clear()
    with pytest.raises(ValueError, match=r"config\.model\.vocab_size=128.*token id \d+ >= it"):
        pipeline.make_iterator(c, process_index=0, process_count=1)
    packing._STORE_CACHE.clear()


def test_batch_not_divisible_by_process_count(tmp_path):
    c = make_config(tmp_path)
    c.train.batch_size = 6
    with pytest.raises(ValueError, match=r"config\.train\.batch_size=6.*multiple of 4"):
        pipeline.make_iterator(c, process_index=0, process_count=4)


def test_dataset_smaller_than_one_batch_and_too_many_eval_batches(embedded_dir):
    c = make_config(embedded_dir)
    c.train.batch_size = 1 << 20
    with pytest.raises(ValueError, match=r"too small.*config\.train\.batch_size=1048576"):
        pipeline.make_iterator(c, process_index=0, process_count=1)
    c.train.batch_size = 8
    with pytest.raises(ValueError, match=r"10000 eval batches.*at most \d+"):
        pipeline.eval_batches(c, 10000, process_index=0, process_count=1)


def test_data_dir_not_writable(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")  # a directory cannot be created below a file, even as root
    c = make_config(blocker / "tfds")
    with pytest.raises(ValueError, match=r"config\.data\.data_dir=.*not writable"):
        pipeline.make_iterator(c, process_index=0, process_count=1)
    assert not os.path.exists(blocker / "tfds")


def test_text8_download_path_works_without_tensorflow(tmp_path, monkeypatch):
    """The TFDS download manager fetches over HTTP without TensorFlow (from a localhost server)."""
    import functools
    import http.server
    import threading

    serve = tmp_path / "www"
    serve.mkdir()
    text = fake_text(2000, 1)
    with zipfile.ZipFile(serve / "text8.zip", "w") as zf:
        zf.writestr("text8", text)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(serve))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setattr(builders.Text8, "URL", f"http://127.0.0.1:{server.server_port}/text8.zip")
        c = make_config(tmp_path / "tfds", dataset="text8", tokenizer="char")
        tokens, _ = packing.packed_tokens(c, "validation")
    finally:
        server.shutdown()
        server.server_close()
    n = len(text)
    assert tokenizers.get(c.data).decode(tokens) == text[int(0.9 * n) : int(0.95 * n)]
    assert "tensorflow" not in sys.modules


def test_process_defaults_come_from_jax(embedded_dir):
    import jax

    c = make_config(embedded_dir)
    batch = next(pipeline.make_iterator(c))
    assert batch.shape == (c.train.batch_size // jax.process_count(), 64)


def test_packed_dir_separate_from_tfds_data_and_remote_data_dir_needs_it(embedded_dir, tmp_path):
    c = make_config(embedded_dir, packed_dir=str(tmp_path / "packed"))
    tokens, _ = packing.packed_tokens(c, "validation")
    reference, _ = packing.packed_tokens(make_config(embedded_dir), "validation")
    np.testing.assert_array_equal(np.asarray(tokens), np.asarray(reference))
    assert list((tmp_path / "packed").rglob("validation.byte-*.bin"))
    c = make_config("gs://some-bucket/tfds")
    with pytest.raises(ValueError, match=r"config\.data\.packed_dir"):
        pipeline.make_iterator(c, process_index=0, process_count=1)
