"""Checkpointing (mdm_jax.checkpoint) and metrics I/O (mdm_jax.metrics).

- save/restore round trip of a TrainState-shaped pytree (flax struct, optax state, typed key);
- keep-N; a save that fails half-way never replaces the last good checkpoint;
- a checkpoint of another config -> ValueError naming the mismatched paths;
- an unwritable workdir -> a clear error before anything runs;
- resume is exact: training N steps uninterrupted == N/2 steps, a lost checkpoint, restart;
- metrics.jsonl / TensorBoard events / loss_curve.png.
"""

from __future__ import annotations

import errno
import glob
import json
import logging
import os
import resource
import struct
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import struct as flax_struct
from tensorboardX.proto import event_pb2

from conftest import tiny
from mdm_jax import checkpoint, config as config_lib, loop, metrics, sharding, train


@flax_struct.dataclass
class _State:
    step: jax.Array
    params: dict
    opt_state: optax.OptState
    ema_params: dict
    key: jax.Array


def _state(width: int, seed: int = 0) -> _State:
    k = jax.random.key(seed)
    params = {"dense": {"kernel": jax.random.normal(k, (width, 3))}, "bias": jnp.arange(3.0)}
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-3))
    opt_state = tx.init(params)
    # One real update so that the optimizer moments are non-trivial.
    grads = jax.tree.map(jnp.ones_like, params)
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    return _State(
        step=jnp.int32(seed + 1),
        params=params,
        opt_state=opt_state,
        ema_params=jax.tree.map(lambda x: 0.5 * x, params),
        key=jax.random.key_data(k),
    )


def _assert_trees_equal(a, b):
    la, ta = jax.tree.flatten(a)
    lb, tb = jax.tree.flatten(b)
    assert ta == tb
    for x, y in zip(la, lb):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_round_trip_and_keep_n(tmp_path):
    with checkpoint.Checkpointer(tmp_path, keep=2) as ck:
        assert ck.latest_step() is None
        states = {s: _state(4, seed=s) for s in (1, 2, 3)}
        for s, st in states.items():
            assert ck.save(s, st, {"epoch": 0, "index": 10 * s})
        ck.wait()
        assert ck.all_steps() == [2, 3]  # keep=2 dropped step 1
        assert ck.save(3, states[3], {"epoch": 0, "index": 30}) is False  # already saved
        abstract = checkpoint.abstract_like(states[1])
        restored, data = ck.restore(abstract)
        _assert_trees_equal(restored, states[3])
        assert data == {"epoch": 0, "index": 30}
        restored2, data2 = ck.restore(abstract, step=2)
        _assert_trees_equal(restored2, states[2])
        assert data2["index"] == 20
        # Restored leaves land in the requested shardings.
        assert restored.params["bias"].sharding == abstract.params["bias"].sharding


def test_rejected_save_keeps_last_good_checkpoint(tmp_path):
    good = _state(4, seed=1)
    with checkpoint.Checkpointer(tmp_path) as ck:
        ck.save(1, good, {"index": 1})
        with pytest.raises(TypeError, match="JSON-serialisable"):
            ck.save(2, _state(4, seed=2), {"index": object()})
        assert ck.latest_step() == 1
        restored, data = ck.restore(checkpoint.abstract_like(good))
    _assert_trees_equal(restored, good)
    assert data == {"index": 1}


_KILLED_SAVE = """
import os, sys
import jax, jax.numpy as jnp
from mdm_jax import checkpoint
ck = checkpoint.Checkpointer(sys.argv[1], keep=3)
ck.save(1, {"w": jnp.full((4,), 1.0)}, {"index": 1})
ck.wait()
# ~64 MB: its asynchronous write takes far longer than the instant between save() and the kill.
ck.save(2, {"w": jnp.full((16_000_000,), 2.0)}, {"index": 2})
print("save 2 started", flush=True)
os._exit(9)  # the process dies mid-write, like a preempted or OOM-killed job
"""


def test_interrupted_save_keeps_last_good_checkpoint(tmp_path):
    """A process killed while an async save is in flight leaves only an uncommitted tmp dir."""
    run = subprocess.run(
        [sys.executable, "-c", _KILLED_SAVE, str(tmp_path)], capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 9 and "save 2 started" in run.stdout, run.stderr[-2000:]
    ckdir = tmp_path / "checkpoints"
    names = sorted(p.name for p in ckdir.iterdir())
    assert "1" in names and "2" not in names, names
    assert any(n.startswith("2.") and "tmp" in n for n in names), names  # the interrupted write

    ck = checkpoint.Checkpointer(tmp_path, keep=3)  # a restarted job
    assert ck.latest_step() == 1 and ck.all_steps() == [1]
    abstract = {
        "w": jax.ShapeDtypeStruct(
            (4,), jnp.float32, sharding=jax.sharding.SingleDeviceSharding(jax.devices()[0])
        )
    }
    restored, data = ck.restore(abstract)
    np.testing.assert_array_equal(np.asarray(restored["w"]), np.ones(4, np.float32))
    assert data == {"index": 1}
    assert ck.save(2, {"w": jnp.full((4,), 3.0)}, {"index": 2})  # the next save commits normally
    ck.close()
    names = sorted(p.name for p in ckdir.iterdir())
    assert names == ["1", "2"], names  # the stale tmp dir was cleaned up at restart


def test_shape_mismatch_names_paths(tmp_path):
    with checkpoint.Checkpointer(tmp_path) as ck:
        ck.save(5, _state(4), {})
        ck.wait()
        wider = checkpoint.abstract_like(_state(8))
        with pytest.raises(ValueError) as e:
            ck.restore(wider)
    msg = str(e.value)
    assert (
        "this workdir was trained with a different config: use a new --workdir or the matching config"
    ) in msg
    for path in ("params/dense/kernel", "ema_params/dense/kernel", "opt_state/1/0/mu/dense/kernel"):
        assert path in msg and "(4, 3)" in msg and "(8, 3)" in msg
    assert "params/bias" not in msg.replace("ema_params/bias", "")  # unchanged leaves are not listed


def test_missing_checkpoint_error(tmp_path):
    with checkpoint.Checkpointer(tmp_path) as ck, pytest.raises(FileNotFoundError, match="--mode=train"):
        ck.restore(checkpoint.abstract_like(_state(4)))


def test_unwritable_workdir(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    with pytest.raises(PermissionError, match="cannot be written.*writable --workdir"):
        checkpoint.Checkpointer(blocker / "run")
    if os.geteuid() != 0:  # root ignores permission bits; the file-in-the-way case covers it
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        with pytest.raises(PermissionError, match="cannot be written"):
            checkpoint.ensure_writable(ro / "run")


def _tree_snapshot(root):
    return sorted(
        (os.path.relpath(os.path.join(d, f), root), os.stat(os.path.join(d, f)).st_mtime_ns)
        for d, dirs, files in os.walk(root)
        for f in files + dirs
    )


def test_read_only_restore_writes_nothing(tmp_path, monkeypatch):
    # Evaluators and experiments read checkpoints of runs they must not (or cannot) write to.
    with checkpoint.Checkpointer(tmp_path, async_save=False) as ck:
        ck.save(5, _state(4, seed=5), {"index": 50})
    before = _tree_snapshot(tmp_path)

    def refuse(workdir):
        raise PermissionError(f"{workdir} is read-only")

    monkeypatch.setattr(checkpoint, "ensure_writable", refuse)
    with pytest.raises(PermissionError):
        checkpoint.Checkpointer(tmp_path)
    with checkpoint.Checkpointer(tmp_path, read_only=True) as ck:
        assert ck.latest_step() == 5
        restored, data = ck.restore(checkpoint.abstract_like(_state(4)))
    _assert_trees_equal(restored, _state(4, seed=5))
    assert data == {"index": 50}
    assert _tree_snapshot(tmp_path) == before


def _truncate(path):
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])


# How a step goes bad, and the file the message must name (relative to the step directory).
CORRUPTIONS = {
    "truncated data file": (lambda d: [_truncate(p) for p in glob.glob(f"{d}/state/d/*")], "state/d/"),
    "truncated _METADATA": (lambda d: _truncate(f"{d}/state/_METADATA"), "state/_METADATA"),
    "bad iterator JSON": (lambda d: open(f"{d}/data/metadata", "w").write('{"index": '), "data/metadata"),
}


@pytest.mark.parametrize("how", CORRUPTIONS)
def test_corrupt_latest_checkpoint_names_step_and_file_and_falls_back(tmp_path, how, capsys):
    corrupt, culprit = CORRUPTIONS[how]
    states = {s: _state(4, seed=s) for s in (1, 2)}
    with checkpoint.Checkpointer(tmp_path, async_save=False) as ck:
        for s, st in states.items():
            ck.save(s, st, {"index": s})
    corrupt(str(tmp_path / "checkpoints" / "2"))
    abstract = checkpoint.abstract_like(states[1])
    with checkpoint.Checkpointer(tmp_path) as ck:
        with pytest.raises(checkpoint.CorruptCheckpoint) as e:
            ck.restore(abstract)  # the fallback is off by default
        msg = str(e.value)
        assert msg.startswith(f"checkpoint step 2 is unreadable: {tmp_path}/checkpoints/2/{culprit}"), msg
        assert "\n" not in msg and f"delete {tmp_path}/checkpoints/2 to use step 1" in msg
        restored, data = ck.restore(abstract, fallback=True)
        _assert_trees_equal(restored, states[1])
        assert data == {"index": 1} and ck.skipped == [2] and ck.restored_step == 1
        assert "falling back to step 1" in capsys.readouterr().out
        moved = ck.set_aside(2)  # what training does, so step 2 can be saved again
        assert ck.all_steps() == [1] and os.path.isdir(moved) and "checkpoints_unreadable" in moved
        assert ck.save(2, states[2], {"index": 2})
        ck.wait()
        _assert_trees_equal(ck.restore(abstract)[0], states[2])


def test_failed_save_names_step_cause_and_file_and_keeps_the_last_one(tmp_path):
    """A real write failure: the file-size limit (RLIMIT_FSIZE) makes the OS refuse the write with
    EFBIG, as a full disk refuses it with ENOSPC; Python ignores SIGXFSZ, so write() fails."""
    ck = checkpoint.Checkpointer(tmp_path, async_save=True)
    ck.save(1, _state(4, seed=1), {"index": 1})
    ck.wait()
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, hard))
    try:
        with pytest.raises(checkpoint.SaveFailed) as e:
            ck.save(2, {"w": jnp.arange(100_000.0)}, {"index": 2})  # 400 kB
            ck.wait()  # an asynchronous failure surfaces here
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    first = str(e.value).splitlines()[0]
    assert first.startswith(
        f"checkpoint save at step 2 failed: {os.strerror(errno.EFBIG)}: {tmp_path}/checkpoints/2."
    ), first
    assert "previous checkpoint is intact" in str(e.value)
    ck.close()
    with checkpoint.Checkpointer(tmp_path) as ck:
        assert ck.all_steps() == [1]
        restored, data = ck.restore(checkpoint.abstract_like(_state(4)))
    _assert_trees_equal(restored, _state(4, seed=1))
    assert data == {"index": 1}


def test_read_only_restore_is_quiet(tmp_path, caplog):
    with checkpoint.Checkpointer(tmp_path, async_save=False) as ck:
        ck.save(5, _state(4, seed=5), {"index": 5})
    caplog.set_level(logging.INFO)
    with checkpoint.Checkpointer(tmp_path, read_only=True) as ck:
        ck.restore(checkpoint.abstract_like(_state(4)))
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert warnings == [], warnings


# ----------------------------------------------------------------------------- metrics


def _tb_scalars(tb_dir) -> dict:
    """{tag: [(step, value)]} from TensorBoard event files (TFRecord framing + Event protos)."""
    out: dict = {}
    for name in sorted(os.listdir(tb_dir)):
        data = open(os.path.join(tb_dir, name), "rb").read()
        pos = 0
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos : pos + 8])
            ev = event_pb2.Event.FromString(data[pos + 12 : pos + 12 + length])
            pos += 12 + length + 4
            for v in ev.summary.value:
                out.setdefault(v.tag, []).append((ev.step, v.simple_value))
    return out


def test_metrics_writer_jsonl_tensorboard_and_plot(tmp_path):
    with metrics.MetricsWriter(tmp_path, enabled=True) as w:
        for step in (10, 20, 30):
            w.write(
                step,
                {"loss": jnp.float32(5.0 / step), "bits_per_token": np.float64(8.0 - step / 10), "note": "x"},
                prefix="train",
            )
        w.write(30, {"bits_per_token": 4.5, "nelbo": 3.1}, prefix="eval")
        with pytest.raises(ValueError, match="reserved"):
            w.write(40, {"step": 1})
    lines = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert [(r["step"], r["prefix"]) for r in lines] == [
        (10, "train"),
        (20, "train"),
        (30, "train"),
        (30, "eval"),
    ]
    assert lines[0]["loss"] == pytest.approx(0.5) and isinstance(lines[0]["wall_time"], float)
    assert lines[3]["nelbo"] == 3.1 and lines[0]["note"] == "x"

    scalars = _tb_scalars(tmp_path / "tb")
    assert [s for s, _ in scalars["train/loss"]] == [10, 20, 30]
    assert scalars["train/bits_per_token"][1][1] == pytest.approx(6.0)
    assert scalars["eval/bits_per_token"] == [(30, pytest.approx(4.5))]
    assert "train/note" not in scalars  # strings stay in the JSONL only

    # A restarted run appends replayed steps again: the last record per (prefix, step) wins.
    with metrics.MetricsWriter(tmp_path, enabled=True) as w:
        w.write(30, {"loss": 0.25, "bits_per_token": 5.0}, prefix="train")
    train = metrics.read_metrics(tmp_path, prefix="train")
    assert [r["step"] for r in train] == [10, 20, 30] and train[-1]["loss"] == 0.25

    png = metrics.plot_loss_curve(tmp_path)
    assert png == str(tmp_path / "loss_curve.png")
    with open(png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert os.path.getsize(png) > 5000


def test_metrics_writer_disabled_and_empty_plot(tmp_path):
    w = metrics.MetricsWriter(tmp_path / "off", enabled=False)
    w.write(1, {"loss": 1.0})
    w.close()
    assert not (tmp_path / "off").exists()
    with metrics.MetricsWriter(tmp_path, enabled=True) as w:
        w.write(1, {"grad_norm": 1.0})
    with pytest.raises(ValueError, match="no train"):
        metrics.plot_loss_curve(tmp_path)


# ----------------------------------------------------------------------------- exact resume


def tiny_config(num_steps: int = 8):
    """The tiny time-free MDM on the embedded corpus: compiles and trains in seconds."""
    c = tiny(config_lib.base())
    c.model.time_conditioning = False
    c.train.update(
        num_steps=num_steps,
        warmup_steps=2,
        lr=3e-3,
        log_every=2,
        eval_every=1000,
        eval_batches=1,
        checkpoint_every=num_steps // 2,
        plot=False,
    )
    c.eval.num_batches = 1
    c.sampling.update(num_samples=3, batch_size=2, precision="float32")
    return c


@pytest.mark.slow
def test_resume_is_exact(tmp_path, capsys):
    """N steps in one go == N/2 steps, the final checkpoint turns out unreadable, a restart finishes.

    The final checkpoint of a completed run is corrupted (after reading it): the restart warns,
    moves it aside and resumes from the step-N/2 checkpoint (params, optimizer, EMA, step, key and
    data position) with the identical config (so the learning-rate schedule is the same), as
    after a preemption, and must reproduce the lost checkpoint bit for bit.
    """
    config = tiny_config(8)
    abstract, _ = train.abstract_train_state(config, sharding.make_mesh(config.mesh))
    loop.train_and_evaluate(config, tmp_path)
    with checkpoint.Checkpointer(tmp_path) as ck:
        assert ck.all_steps() == [4, 8]
        uninterrupted, data_8 = ck.restore(abstract)
        halfway, data_4 = ck.restore(abstract, step=4)
    _truncate(str(tmp_path / "checkpoints" / "8" / "state" / "_METADATA"))

    resumed = loop.train_and_evaluate(config, tmp_path)
    assert resumed["step"] == 8
    out = capsys.readouterr().out
    assert "checkpoint step 8 is unreadable" in out and "falling back to step 4" in out
    assert "resumed from" in out and "at step 4" in out
    assert os.listdir(tmp_path / "checkpoints_unreadable")[0].startswith("8.")
    with checkpoint.Checkpointer(tmp_path) as ck:
        assert ck.all_steps() == [4, 8]
        state, data = ck.restore(abstract)
    assert int(state.step) == 8
    _assert_trees_equal(state, uninterrupted)  # bitwise: params, optimizer moments, EMA, key
    assert data == data_8 != data_4
    # The second half really trained: the step-4 parameters differ from the final ones.
    assert not np.array_equal(
        np.asarray(jax.tree.leaves(halfway.params)[0]), np.asarray(jax.tree.leaves(state.params)[0])
    )
