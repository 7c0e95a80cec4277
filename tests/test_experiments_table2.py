"""GPT-2 as the evaluator of gen PPL (eval.evaluator=gpt2:DIR) and the table2 experiment end to end.

Fixture setup. No published weights are available offline, and no mock stands in for a model:
- the sampled model is the MDLM fixture `tests/fixtures/mdlm-tiny` (MDLM's real Hugging Face layout,
  random weights, 600 tokens + mask, length 64), loaded by `mdm_jax.interop.load_mdlm`;
- its token ids 0..599 are read as GPT-2 ids: they are decoded with the real GPT-2 tokenizer (the
  bundled `gpt2.tiktoken`, 50,257 ids) exactly as MDLM OpenWebText samples would be, and the text
  is retokenised with the same tokenizer (MDLM's definition);
- the evaluator is a random-weight GPT-2 of the full 50,257-token vocabulary that this module writes
  in the real layout (config.json + model.safetensors with `save_pretrained`'s tensor names, via the
  safetensors NumPy API) next to a copy of the real tokenizer file. The shipped `gpt2-tiny` fixture
  cannot be the evaluator here: its 512-token vocabulary is not GPT-2's, so the retokenised text
  would not fit it (it serves below to check the scoring against transformers' own numbers).
"""

from __future__ import annotations

import json
import math
import os
import shutil

import jax
import numpy as np
import pytest
from safetensors.numpy import save_file

from conftest import ROOT
from mdm_jax import (
    config as config_lib,
    evaluators,
    experiments,
    gen_ppl,
    gpt2_evaluator,
    interop,
    sample_metrics,
    sample_quality,
)
from mdm_jax.data import tokenizers
from mdm_jax.experiments import table2

FIXTURES = os.path.join(ROOT, "tests", "fixtures")
V, EOT = 50257, 50256


def write_gpt2(path, *, vocab=V, n_positions=64, d=32, layers=1, heads=2, seed=0, tokenizer=True):
    """A random-weight GPT-2 in the Hugging Face layout (what `save_pretrained` writes)."""
    os.makedirs(path, exist_ok=True)
    g = np.random.default_rng(seed)
    w = lambda *shape, s=0.2: (s * g.standard_normal(shape)).astype(np.float32)  # noqa: E731
    t = {
        "transformer.wte.weight": w(vocab, d),
        "transformer.wpe.weight": w(n_positions, d),
        "transformer.ln_f.weight": 1 + w(d, s=0.1),
        "transformer.ln_f.bias": w(d, s=0.05),
    }
    for i in range(layers):
        h = f"transformer.h.{i}."
        for ln in ("ln_1", "ln_2"):
            t[h + ln + ".weight"], t[h + ln + ".bias"] = 1 + w(d, s=0.1), w(d, s=0.05)
        for name, shape in (
            ("attn.c_attn", (d, 3 * d)),
            ("attn.c_proj", (d, d)),
            ("mlp.c_fc", (d, 4 * d)),
            ("mlp.c_proj", (4 * d, d)),
        ):
            t[h + name + ".weight"], t[h + name + ".bias"] = w(*shape), w(shape[1], s=0.05)
    save_file(t, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
    cfg = {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": vocab,
        "n_positions": n_positions,
        "n_embd": d,
        "n_layer": layers,
        "n_head": heads,
        "n_inner": None,
        "activation_function": "gelu_new",
        "layer_norm_epsilon": 1e-5,
        "bos_token_id": vocab - 1,
        "eos_token_id": vocab - 1,
        "tie_word_embeddings": True,
    }
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(cfg, f)
    if tokenizer:
        shutil.copy(os.path.join(tokenizers.BUNDLED_GPT2_DIR, "gpt2.tiktoken"), path)
    return str(path)


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    return write_gpt2(tmp_path_factory.mktemp("gpt2-random"))


@pytest.fixture(autouse=True)
def highest_precision():
    with jax.default_matmul_precision("highest"):
        yield


@pytest.mark.slow
def test_mdlm_scoring_reproduces_transformers_nll():
    # gpt2-tiny's reference NLL is transformers' mean over positions 1..63 of each row, what MDLM's
    # definition computes for a chunk without end-of-text ids (end-of-text is 511 here; none occur).
    apply_fn, params, info = interop.load_gpt2(os.path.join(FIXTURES, "gpt2-tiny"))
    ref = np.load(os.path.join(FIXTURES, "gpt2-tiny", "reference.npz"))
    rows = list(ref["tokens"].astype(np.int64))
    nll, count = gen_ppl.chunked_nlls(
        lambda x: apply_fn(params, x),
        rows,
        eot_id=info.eot_id,
        context=info.context_length,
        vocab_size=info.vocab_size,
    )
    assert count.tolist() == [63, 63, 63]
    np.testing.assert_allclose(nll / count, ref["nll"], atol=1e-5)  # the fixtures' NLL tolerance
    # Chunks of 16: 4 chunks of 15 targets each, the first token of every chunk unscored.
    nll16, count16 = gen_ppl.chunked_nlls(
        lambda x: apply_fn(params, x),
        rows,
        eot_id=info.eot_id,
        context=16,
        vocab_size=info.vocab_size,
        batch_size=2,
    )
    assert count16.tolist() == [60, 60, 60] and np.all(np.abs(nll16 / count16 - ref["nll"]) > 1e-3)


def test_gpt2_evaluator_and_the_real_tokenizer(gpt2_dir):
    ev = gpt2_evaluator.load(f"gpt2:{gpt2_dir}")
    assert (ev.vocab_size, ev.eot_id, ev.context) == (V, EOT, 64)
    assert ev.info()["evaluator"] == f"gpt2:{os.path.abspath(gpt2_dir)}"
    tok = ev.tokenizer
    # <|endoftext|> in text is the end-of-text id, as with transformers' GPT-2 tokenizer.
    assert tok.encode("Hello world<|endoftext|> the").tolist() == [15496, 995, EOT, 262]
    assert tok.decode([15496, 995, EOT, 262]) == "Hello world<|endoftext|> the"
    # MDLM's decode of ids: clean-up joins " ," and " n't".
    assert gen_ppl.decode(tok, [tok.encode("I do n't know , really")]) == ["I don't know, really"]
    # Project definition: BOS = end-of-text, every sampled token scored.
    tokens = np.random.default_rng(0).integers(0, 600, size=(3, 64))
    nll = sample_metrics.sequence_nlls(ev, tokens, ev.eot_id, vocab_size=V)
    assert nll.shape == (3,) and np.all(np.isfinite(nll)) and np.all(nll / 64 > 1.0)
    with pytest.raises(ValueError, match="reads at most 64 tokens"):
        ev(np.zeros((1, 65), np.int32))


def test_eval_config_hooks(gpt2_dir):
    c = config_lib.base()
    c.eval.evaluator = f"gpt2:{gpt2_dir}"
    with pytest.raises(ValueError, match="model.vocab_size=256"):
        evaluators.load_evaluator(c)  # a byte-level model's samples are not GPT-2 ids
    c.model.vocab_size = V
    c.data.tokenizer, c.data.gpt2_vocab_dir = "gpt2", tokenizers.BUNDLED_GPT2_DIR
    c.sampling.batch_size = 2
    ev, bos, info = evaluators.load_evaluator(c)
    assert bos == EOT and info["evaluator_vocab_size"] == V
    tokens = np.random.default_rng(1).integers(0, 600, size=(4, 48))
    out = sample_quality._mdlm_gen_ppl(c, ev, tokens)
    assert out["gen_ppl_definition"] == "mdlm" and len(out["texts"]) == 4
    assert out["gen_ppl"] == pytest.approx(math.exp(out["sequence_nll"].sum() / out["sequence_count"].sum()))
    ws = c.copy_and_resolve_references()
    ws.eval.evaluator = ""
    ws.eval.evaluator_workdir = "/nonexistent"
    with pytest.raises(ValueError, match="needs a GPT-2 evaluator"):
        sample_quality._mdlm_gen_ppl(ws, (lambda x: x), tokens)


def test_bad_evaluator_directories(gpt2_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="eval.evaluator='gpt2:/nonexistent'"):
        gpt2_evaluator.load("gpt2:/nonexistent")
    with pytest.raises(ValueError, match="only GPT-2 evaluators"):
        gpt2_evaluator.load("llama:/x")
    bare = write_gpt2(tmp_path / "no-tokenizer", tokenizer=False)
    with pytest.raises(FileNotFoundError, match="no GPT-2 tokenizer.*vocab.json and merges.txt"):
        gpt2_evaluator.load(bare)
    # The 512-token fixture with the real 50,257-token tokenizer: refused before any weight is read.
    small = tmp_path / "gpt2-tiny"
    shutil.copytree(os.path.join(FIXTURES, "gpt2-tiny"), small)
    shutil.copy(os.path.join(tokenizers.BUNDLED_GPT2_DIR, "gpt2.tiktoken"), small)
    with pytest.raises(ValueError, match="50257 token ids, the model 512"):
        gpt2_evaluator.load(str(small), field="experiment.evaluator_dir")


def _tiny_config(gpt2_dir, **over):
    """The :tiny config; `over` sets dotted fields, e.g. {"sampling.num_samples": 3}."""
    path = os.path.join(ROOT, "configs", "experiments", "table2.py")
    c = config_lib.load_file(path, "tiny")
    c.experiment.mdlm_dir = os.path.join(FIXTURES, "mdlm-tiny")
    c.experiment.evaluator_dir = gpt2_dir
    for dotted, v in over.items():
        group, name = dotted.split(".")
        c[group][name] = v
    return c


def test_table2_checks_its_fields_before_loading(gpt2_dir, tmp_path):
    for over, match in (
        ({"experiment.mdlm_dir": str(tmp_path / "none")}, "experiment.mdlm_dir"),
        ({"experiment.rows": ("mdlm_float32", "nope")}, "unknown row 'nope'"),
        ({"sampling.num_samples": 3}, "multiple of sampling.batch_size"),
    ):
        with pytest.raises((ValueError, FileNotFoundError), match=match):
            experiments.run(_tiny_config(gpt2_dir, **over), str(tmp_path / "wd"))
    assert not os.path.exists(tmp_path / "wd")


@pytest.mark.slow
def test_table2_end_to_end_on_the_fixtures(gpt2_dir, tmp_path):
    wd = str(tmp_path / "table2")
    out = experiments.run(_tiny_config(gpt2_dir), wd)
    for f in ("table2.json", "table2_rows.csv", "table2.png", "summary.md", "table2_samples.jsonl"):
        assert os.path.getsize(os.path.join(wd, f)) > 0, f
    rows = {r["row"]: r for r in out["rows"]}
    assert list(rows) == list(table2.ROWS)
    for name, (ppl, ent) in table2.PAPER.items():
        assert (rows[name]["paper_gen_ppl"], rows[name]["paper_entropy"]) == (ppl, ent)
    # NFE: the MDLM sampler at most 64 steps + noise removal (time-free fixture: cached); first-hitting
    # 64 calls; 4 tokens per call: 16.
    assert all(rows[k]["nfe_per_batch"] <= 65 for k in ("mdlm_float32", "mdlm_float64"))
    assert rows["fhs_float64"]["nfe_per_batch"] == 64 and rows["parallel_fhs_float64"]["nfe_per_batch"] == 16
    assert rows["mdlm_float64_truncated"]["uniform_bits"] == 24 and rows["mdlm_float64"]["uniform_bits"] == 53
    for r in rows.values():
        assert 0 < r["entropy"] <= math.log(64) and r["entropy_se"] > 0
        assert np.isfinite(r["gen_ppl"]) and r["gen_ppl_se"] > 0 and r["gen_ppl_project"] > 1
    # At V = 600 and 64 steps no token's per-step probability nears float32's 2^-24 grid: 32-bit and
    # 64-bit MDLM sampling must agree in entropy (|z| < 5 over 4 + 4 samples).
    z = (rows["mdlm_float32"]["entropy"] - rows["mdlm_float64"]["entropy"]) / math.hypot(
        rows["mdlm_float32"]["entropy_se"], rows["mdlm_float64"]["entropy_se"]
    )
    assert abs(z) < 5, z
    samples = [json.loads(x) for x in open(os.path.join(wd, "table2_samples.jsonl"))]
    assert len(samples) == 5 * 4 and all(max(s["tokens"]) < 600 for s in samples)
    summary = open(os.path.join(wd, "summary.md")).read()
    assert "31.24" in summary and "MDLM sampler, 32-bit" in summary and "standard errors" in summary
    # The report is a function of the JSON alone.
    os.remove(os.path.join(wd, "summary.md"))
    again = table2.report_from_json(os.path.join(wd, "table2.json"))
    assert open(again["summary"]).read() == summary
