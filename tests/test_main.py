"""The CLI (`python -m mdm_jax.main`): flag errors, multi-host detection, train -> eval -> sample."""

from __future__ import annotations

import json
import os

import pytest

from conftest import ROOT, run_main as _run, tiny_flags
from mdm_jax import cli, distributed

# The tiny model on the embedded corpus: the whole round trip takes seconds per mode.
TINY = [
    "--config=configs/quickstart.py",
    *tiny_flags(),
    "--config.train.num_steps=12",
    "--config.train.warmup_steps=2",
    "--config.train.log_every=3",
    "--config.train.eval_every=6",
    "--config.train.checkpoint_every=6",
    "--config.train.eval_batches=1",
    "--config.eval.num_batches=2",
    "--config.sampling.num_samples=3",
    "--config.sampling.batch_size=2",
]


@pytest.mark.parametrize(
    "override, field, parent_listing",
    [
        ("--config.trian.lr=1", "'trian'", "Valid fields of config: data, dtype, eval"),
        ("--config.train.lrr=1", "'lrr'", "Valid fields of config.train: b1, b2, batch_size"),
    ],
)
def test_unknown_config_field_stops_early(tmp_path, override, field, parent_listing):
    r = _run("--config=configs/quickstart.py", f"--workdir={tmp_path}/w", override, timeout=120)
    assert r.returncode != 0
    assert f"unknown config field {field}" in r.stderr and parent_listing in r.stderr, r.stderr
    assert "did you mean" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "w").exists()  # stopped before anything ran


def test_unknown_override_message_is_none_for_valid_fields():
    argv = [
        "m",
        f"--config={ROOT}/configs/quickstart.py",
        "--config.train.lr=0.1",
        "--config.model.dropout=0.1",
    ]
    assert cli.unknown_override_message(argv) is None
    bad = cli.unknown_override_message(argv + ["--config.model.dropout.rate=1"])
    assert "config.model.dropout is a value, not a group" in bad


def test_multi_process_detection():
    assert not distributed.multi_process_requested({})
    assert not distributed.multi_process_requested({"SLURM_NTASKS": "1", "TPU_WORKER_HOSTNAMES": "localhost"})
    assert distributed.multi_process_requested({"SLURM_NTASKS": "4"})
    assert distributed.multi_process_requested({"TPU_WORKER_HOSTNAMES": "10.0.0.2,10.0.0.3"})
    assert distributed.multi_process_requested({"JAX_COORDINATOR_ADDRESS": "10.0.0.2:1234"})
    assert distributed.multi_process_requested({"OMPI_COMM_WORLD_SIZE": "2"})
    assert distributed.init_distributed(env={}) is False  # single process: nothing to initialise


def test_unwritable_workdir_cli(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    r = _run(*TINY, f"--workdir={blocker}/run", timeout=120)
    assert r.returncode != 0
    assert "cannot be written" in r.stderr and "writable --workdir" in r.stderr


def _snapshot(root):
    return sorted(
        (os.path.relpath(os.path.join(d, f), root), os.stat(os.path.join(d, f)).st_mtime_ns)
        for d, _, files in os.walk(root)
        for f in files
    )


@pytest.mark.slow
def test_cli_train_eval_sample_round_trip(tmp_path):
    wd = tmp_path / "run"
    r = _run(*TINY, f"--workdir={wd}", "--mode=train")
    assert r.returncode == 0, r.stderr[-4000:]
    assert "eval step 12" in r.stdout and "bits/token" in r.stdout
    records = [json.loads(line) for line in open(wd / "metrics.jsonl")]
    train_steps = [x["step"] for x in records if x["prefix"] == "train"]
    assert train_steps == [3, 6, 9, 12]
    assert {x["step"] for x in records if x["prefix"] == "eval"} == {6, 12}
    assert all(x["loss"] > 0 for x in records if x["prefix"] == "train")
    assert any(n.startswith("events.out.tfevents") for n in os.listdir(wd / "tb"))
    assert (wd / "loss_curve.png").stat().st_size > 5000
    assert (wd / "config.json").exists()
    assert sorted(os.listdir(wd / "checkpoints"))[:2] == ["12", "6"]

    history = [json.loads(line) for line in open(wd / "config_history.jsonl")]
    assert len(history) == 1 and history[0]["start_step"] == 0 and not (wd / "run.lock").exists()

    # The config file without the run's shape overrides: the model comes from wd/config.json.
    r = _run(
        "--config=configs/quickstart.py", "--config.eval.num_batches=2", f"--workdir={wd}", "--mode=eval"
    )
    assert r.returncode == 0, r.stderr[-4000:]
    assert "taken from" in r.stdout and "model.emb_dim" in r.stdout
    assert "eval step 12" in r.stdout and "bits/token" in r.stdout
    assert (wd / "eval" / "eval_12.json").exists()
    assert "Given directory is read only" not in r.stderr and "setting save_interval_steps" not in r.stderr

    # No --config at all (wd/config.json), outputs elsewhere (--output_dir): the workdir is not written.
    out = tmp_path / "out"
    before = _snapshot(wd)
    r = _run(f"--workdir={wd}", "--mode=sample", "--config.sampling.prompt=The ", f"--output_dir={out}")
    assert r.returncode == 0, r.stderr[-4000:]
    assert _snapshot(wd) == before
    path = out / "samples" / "first_hitting_float64_28.jsonl"  # 32 positions - 4 prompt tokens
    samples = [json.loads(line) for line in open(path)]
    assert len(samples) == 3 and "--- sample 2" in r.stdout and f"showing all 3 in {path}" in r.stdout
    for s in samples:
        assert len(s["tokens"]) == 32 and all(0 <= t < 256 for t in s["tokens"])
        assert s["tokens"][:4] == list(b"The ") and s["text"].startswith("The ")
        assert s["sampler"] == "first_hitting" and s["precision"] == "float64"
        assert s["nfe"] == 28 and s["steps"] == 28 and s["checkpoint_step"] == 12
        assert s["seed"] == 0 and s["wall_time_s"] > 0 and s["jax_version"] and s["device_kind"]
    assert [s["batch_index"] for s in samples] == [0, 0, 1]
