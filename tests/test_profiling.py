"""`train.profile_steps`: a jax.profiler trace of exactly the chosen steps lands in the workdir."""

from __future__ import annotations

import contextlib
import glob
import gzip
import io
import json
import os

import jax
import jax.numpy as jnp
import pytest

from mdm_jax import config as config_lib, loop, train
from mdm_jax.profiling import StepProfiler, check_profile_steps


def traced_steps(workdir) -> tuple[list[str], set[int]]:
    """(trace files, step numbers of the "train" step annotations in the Perfetto trace)."""
    files = sorted(glob.glob(os.path.join(workdir, "profile", "plugins", "profile", "*", "*")))
    perfetto = [f for f in files if f.endswith("perfetto_trace.json.gz")]
    assert len(perfetto) == 1, files
    with gzip.open(perfetto[0]) as f:
        events = json.load(f)["traceEvents"]
    steps = {int(e["args"]["step_num"]) for e in events if e.get("name") == "train" and "args" in e}
    return files, steps


def test_profiler_traces_exactly_the_window(tmp_path):
    f = jax.jit(lambda x: jnp.tanh(x @ x))
    x = jnp.ones((64, 64), jnp.float32) / 64
    profiler = StepProfiler(tmp_path, (2, 4))
    for step in range(6):
        with profiler.step(step):
            x = f(x)
        profiler.step_done(step + 1, x)
        assert profiler.active == (step + 1 in (3,))  # open during steps 2 and 3 only
    profiler.close()
    files, steps = traced_steps(tmp_path)
    assert steps == {2, 3}
    assert any(p.endswith(".xplane.pb") for p in files)  # TensorBoard / XProf's format too


def test_no_trace_unless_asked_or_not_process_zero(tmp_path):
    for window, enabled in (((), None), ((0, 2), False)):
        profiler = StepProfiler(tmp_path, window, enabled=enabled)
        with profiler.step(0):
            pass
        profiler.step_done(1)
        profiler.close()
    assert not os.path.exists(tmp_path / "profile")


@pytest.mark.parametrize("bad", [(3,), (4, 2), (-1, 2), (1.5, 3), (1, 2, 3)])
def test_bad_windows_are_rejected_before_any_work(bad):
    with pytest.raises(ValueError, match=r"train.profile_steps"):
        check_profile_steps(bad)
    c = config_lib.base()
    c.train.profile_steps = bad
    with pytest.raises(ValueError, match=r"train.profile_steps"):
        train.check_config(c)
    assert check_profile_steps(()) is None and check_profile_steps((0, 1)) == (0, 1)


@pytest.mark.slow
def test_training_writes_the_trace_and_run_metadata(tmp_path):
    c = config_lib.base()
    c.model.update(num_layers=1, num_heads=2, emb_dim=32, mlp_dim=64, max_len=32, time_emb_dim=16)
    c.data.seq_len = 32
    c.train.update(
        batch_size=4,
        num_steps=4,
        warmup_steps=1,
        log_every=2,
        eval_every=100,
        eval_batches=1,
        checkpoint_every=100,
        plot=False,
        profile_steps=(1, 3),
    )
    with contextlib.redirect_stdout(io.StringIO()):
        loop.train_and_evaluate(c, str(tmp_path))
    _, steps = traced_steps(tmp_path)
    assert steps == {1, 2}
    with open(tmp_path / "run_metadata.json") as f:
        meta = json.load(f)
    assert meta["attention"]["implementation"] == "xla" and meta["config"]["train"]["profile_steps"] == [1, 3]
