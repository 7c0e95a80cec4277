"""MDLM's DiT as the model family "mdlm": a run initialised from an MDLM checkpoint (`init_from`)
trains, checkpoints, resumes and samples through the project's normal paths.

The checkpoint is the mdlm-tiny fixture (random weights, 600 real tokens + mask, L = 64). Its data
comes from the embedded corpus through a GPT-2-format tokenizer of exactly 600 ids (the 256 byte
symbols, fillers, <|endoftext|> = 599), so the tokenizer matches the checkpoint's vocabulary.
"""

from __future__ import annotations

import contextlib
import io
import json
import os

import jax
import numpy as np
import pytest
from flax import traverse_util

from conftest import ROOT
from mdm_jax import cli, config as config_lib, generate, interop, models, modes, sharding, train
from mdm_jax.data import tokenizers
from mdm_jax.interop import init_from

FIXTURE = os.path.join(ROOT, "tests", "fixtures", "mdlm-tiny")
FIELDS = dict(
    family="mdlm",
    vocab_size=600,
    max_len=64,
    emb_dim=64,
    num_layers=2,
    num_heads=4,
    time_emb_dim=32,
    mlp_dim=256,
    mlp_type="gelu",
    time_conditioning=False,
)


@pytest.fixture(scope="module")
def vocab_600(tmp_path_factory):
    """vocab.json + merges.txt with 600 ids: byte-level symbols 0..255 (no merges), fillers, eot 599."""
    from tokenizers import pre_tokenizers

    d = tmp_path_factory.mktemp("vocab600")
    symbols = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {s: i for i, s in enumerate(symbols)}
    vocab.update({f"<filler_{i}>": i for i in range(256, 599)})
    vocab["<|endoftext|>"] = 599
    (d / "vocab.json").write_text(json.dumps(vocab))
    (d / "merges.txt").write_text("#version: 0.2\n")
    return str(d)


def mdlm_config(vocab_dir, packed_dir, **train_fields):
    c = config_lib.base()
    c.model.update(FIELDS)
    c.init_from = f"mdlm:{FIXTURE}"
    c.objective.schedule = "loglinear"
    c.data.update(tokenizer="gpt2", gpt2_vocab_dir=vocab_dir, seq_len=16, packed_dir=str(packed_dir))
    c.train.update(
        batch_size=4,
        num_steps=2,
        warmup_steps=0,
        lr=1e-3,
        log_every=1,
        eval_every=100,
        eval_batches=1,
        checkpoint_every=2,
        plot=False,
        **train_fields,
    )
    c.sampling.update(num_samples=2, batch_size=2, seq_len=16, precision="float32", prompt="The ")
    return c


def flat(tree):
    return {"/".join(k): np.asarray(v) for k, v in traverse_util.flatten_dict(tree).items()}


def test_config_that_describes_another_network_names_every_field():
    c = config_lib.base()
    c.init_from = f"mdlm:{FIXTURE}"
    with pytest.raises(ValueError) as e:
        init_from.check(c)
    msg = str(e.value)
    for field, value in FIELDS.items():
        assert f"--config.model.{field}={value}" in msg, (field, msg)
    assert "(config.json hidden_dim), the config has 512" in msg


def test_init_from_is_a_command_line_field():
    """`--config.init_from=FORMAT:DIR` parses (a group field named `from` could not: ml_collections
    parses override paths as Python, where `from` is a keyword)."""
    from absl import flags

    argv = [
        "m",
        f"--config={ROOT}/configs/quickstart.py",
        f"--config.init_from=mdlm:{FIXTURE}",
        "--config.model.family=mdlm",
        "--workdir=/unused",
    ]
    assert cli.unknown_override_message(argv) is None
    fv = flags.FlagValues()
    cli.define_flags(fv, sys_argv=argv)
    fv(argv)
    assert fv.config.init_from == f"mdlm:{FIXTURE}" and fv.config.model.family == "mdlm"
    assert init_from.source(fv.config) == ("mdlm", FIXTURE)


def test_bad_init_from_and_family_settings_fail_early(vocab_600, tmp_path):
    c = mdlm_config(vocab_600, tmp_path)
    for spec in ("bert:/data/bert", "mdlm:", "/data/mdlm-owt"):
        c.init_from = spec
        with pytest.raises(ValueError, match="init_from=.*expected FORMAT:DIRECTORY"):
            init_from.check(c)
    c = mdlm_config(vocab_600, tmp_path)
    c.data.update(tokenizer="byte")
    with pytest.raises(
        ValueError,
        match=r"config.data.tokenizer: the 'byte' tokenizer does not match the "
        r"mdlm checkpoint .*256 token ids, the model 600",
    ):
        init_from.check(c)
    c = mdlm_config(vocab_600, tmp_path)
    c.objective.kind = "arm"
    with pytest.raises(ValueError, match="model.family='mdlm' has no causal form"):
        models.build(c)
    c = mdlm_config(vocab_600, tmp_path)
    c.model.mlp_type = "glu"
    with pytest.raises(ValueError, match="set --config.model.mlp_type=gelu"):
        models.build(c)


def test_step0_state_holds_the_loaded_weights(vocab_600, tmp_path):
    c = mdlm_config(vocab_600, tmp_path)
    init_from.check(c)
    mesh = sharding.make_mesh(c.mesh)
    state, shardings = train.create_train_state(c, mesh)
    _, loaded, _ = interop.load_mdlm_model(FIXTURE)
    want = flat(loaded)
    for name, tree in (("params", state.params), ("ema", state.ema_params)):
        got = flat(tree)
        assert got.keys() == want.keys(), name
        for k in want:
            np.testing.assert_array_equal(got[k], want[k], err_msg=f"{name}/{k}")
    assert int(state.step) == 0
    moments = [np.asarray(x) for x in jax.tree.leaves(state.opt_state) if np.ndim(x) > 0]
    assert moments and all(not m.any() for m in moments)  # fresh Adam moments
    for x, s in zip(jax.tree.leaves(state.params), jax.tree.leaves(shardings.params)):
        assert x.sharding == s


@pytest.mark.slow
def test_train_from_mdlm_checkpoint_then_sample_and_resume(vocab_600, tmp_path):
    workdir = str(tmp_path / "run")
    c = mdlm_config(vocab_600, tmp_path / "packed")
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        result = modes.run("train", c, workdir)
    assert (
        result["step"] == 2
        and np.isfinite(result["train/loss"])
        and np.isfinite(result["eval/nats_per_token"])
    )
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2"]

    with contextlib.redirect_stdout(buf):
        records = generate.sample(c, workdir)
    prompt = tokenizers.get(c.data).encode("The ").tolist()
    assert len(records) == 2 and len(prompt) == 4  # one byte-level symbol per byte
    for r in records:
        assert len(r["tokens"]) == 16 and all(0 <= t < 600 for t in r["tokens"])
        assert r["tokens"][:4] == prompt and r["text"].startswith("The ")
        assert r["checkpoint_step"] == 2 and r["nfe"] == 12

    # A resumed run restores its own checkpoint: init_from is not read again (here it is gone).
    c.init_from = f"mdlm:{tmp_path / 'gone'}"
    with contextlib.redirect_stdout(buf):
        result = modes.run("train", c, workdir)
    assert (
        result["step"] == 2
        and "resumed from" in buf.getvalue()
        and np.isfinite(result["eval/nats_per_token"])
    )


# ----------------------------------------------------------------------------- GPT-2 as an ARM family

GPT2_FIXTURE = os.path.join(os.path.dirname(FIXTURE), "gpt2-tiny")
GPT2_FIELDS = dict(
    family="gpt2",
    vocab_size=512,
    max_len=64,
    emb_dim=64,
    num_layers=2,
    num_heads=4,
    mlp_dim=256,
    mlp_type="gelu",
)


@pytest.fixture(scope="module")
def vocab_512(tmp_path_factory):
    """GPT-2-format files with 512 ids (byte-level symbols 0..255, fillers, <|endoftext|> = 511)."""
    from tokenizers import pre_tokenizers

    d = tmp_path_factory.mktemp("vocab512")
    vocab = {s: i for i, s in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    vocab.update({f"<filler_{i}>": i for i in range(256, 511)})
    vocab["<|endoftext|>"] = 511
    (d / "vocab.json").write_text(json.dumps(vocab))
    (d / "merges.txt").write_text("#version: 0.2\n")
    return str(d)


def gpt2_config(vocab_dir):
    c = config_lib.base()
    c.objective.kind = "arm"
    c.model.update(GPT2_FIELDS)
    c.init_from = f"gpt2:{GPT2_FIXTURE}"
    c.data.update(tokenizer="gpt2", gpt2_vocab_dir=vocab_dir, seq_len=16)
    c.train.update(batch_size=4, warmup_steps=0, lr=1e-3)
    c.sampling.update(method="autoregressive", precision="float32", seq_len=16)
    return c


@pytest.mark.slow
def test_gpt2_family_kv_cached_decoding_reproduces_transformers():
    """The "gpt2" family's decode path (the autoregressive sampler's) and its full causal forward both
    give the reference logits; the ARM's BOS (id V) is read as <|endoftext|>."""
    from mdm_jax.models import adapters

    apply_fn, params, info = interop.load_gpt2(GPT2_FIXTURE)
    ref = np.load(os.path.join(GPT2_FIXTURE, "reference.npz"))
    tokens = ref["tokens"][:2, :12]
    with jax.default_matmul_precision("highest"):
        full = np.asarray(adapters.ar_logits_fn(apply_fn.model, params)(tokens))
        step_fn, state = adapters.ar_step_fn(apply_fn.model, params, 2)
        decode = jax.jit(lambda f, s, x, p: f(s, x, p))  # one compile; params as traced arguments
        steps = []
        for pos in range(12):
            logits, state = decode(step_fn, state, tokens[:, pos], pos)
            steps.append(np.asarray(logits))
        as_bos = np.where(tokens == 511, 512, tokens)
        bos = np.asarray(adapters.ar_logits_fn(apply_fn.model, params)(as_bos))
    want = ref["logits"][:2, :12]
    assert np.max(np.abs(full - want)) <= 5e-5
    assert np.max(np.abs(np.stack(steps, 1) - want)) <= 5e-5
    np.testing.assert_array_equal(bos, full)


@pytest.mark.slow
def test_gpt2_family_from_checkpoint_trains_as_arm_and_samples(vocab_512):
    """init_from=gpt2: step 0 holds GPT-2's weights, and the ARM train loss at step 0 is GPT-2's own
    NLL of [<|endoftext|>, x_0, ..., x_L-1] (what the ARM objective scores); then it samples."""
    from mdm_jax import rng

    c = gpt2_config(vocab_512)
    bad = gpt2_config(vocab_512)
    bad.model.num_heads = 8
    with pytest.raises(
        ValueError,
        match=r"--config.model.num_heads=4 \(config.json n_head\), the config has "
        r"8",
    ):
        init_from.check(bad)
    init_from.check(c)
    mesh = sharding.make_mesh(c.mesh)
    state, shardings = train.create_train_state(c, mesh)
    apply_fn, loaded, _ = interop.load_gpt2(GPT2_FIXTURE)
    got, want = flat(state.params), flat(loaded)
    assert got.keys() == want.keys() and all(np.array_equal(got[k], want[k]) for k in want)

    batch = np.random.default_rng(0).integers(0, 511, (4, 16)).astype(np.int32)
    step = train.make_train_step(c, mesh, shardings)
    with jax.default_matmul_precision("highest"):
        key = rng.fold(rng.root_key(c.seed), "train", 0)
        state, metrics = step(state, sharding.global_batch(batch, mesh), key)
        with_eot = np.concatenate([np.full((4, 1), 511, np.int32), batch], axis=1)
        nll = np.asarray(interop.sequence_nll(apply_fn, loaded, with_eot))
    assert float(metrics["loss"]) == pytest.approx(float(nll.mean()), abs=1e-5)
    assert int(state.step) == 1

    run, seq_len, _ = generate.make_sampler(c, state.params, mesh)
    tokens, stats = run(jax.random.key(3), 2)
    tokens = np.asarray(tokens)
    assert tokens.shape == (2, 16) and tokens.min() >= 0 and tokens.max() < 512
    assert stats["nfe"] == 16
