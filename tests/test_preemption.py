"""Preemption (mdm_jax.preemption): SIGTERM or SIGINT at any step -> that step is saved, exit status 75,
and rerunning the same command ends with parameters bitwise equal to an uninterrupted run.

Both signals set the same flag (the in-process test below); end to end, with real processes and
real signals, SIGTERM: the CLI prints `step k/N` after every step (log_every=1), the test
sends the signal when it reads the line of a randomly chosen step; the run stops at that step or a
later one (dispatch is asynchronous), wherever that is. Same machine, same process setup: training
is deterministic, so the comparison is exact.
"""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

from conftest import ROOT, tiny_flags
from mdm_jax import checkpoint, errors, preemption, runs, sharding, train

STEPS = 10
ARGS = [
    "--config=configs/quickstart.py",
    "--mode=train",
    *tiny_flags(),
    f"--config.train.num_steps={STEPS}",
    "--config.train.warmup_steps=2",
    "--config.train.log_every=1",
    "--config.train.eval_every=1000",
    "--config.train.checkpoint_every=4",
    "--config.train.eval_batches=1",
    "--config.train.plot=False",
    "--config.train.sample_at_end=False",
]


def _start(workdir, log):
    cmd = [sys.executable, "-m", "mdm_jax.main", *ARGS, f"--workdir={workdir}"]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=open(log, "w"), text=True)


def _interrupt(proc, at_step: int, sig) -> str:
    """Sends `sig` once the run has printed step `at_step`; returns all of its stdout."""
    out = []
    for line in proc.stdout:
        out.append(line)
        if line.startswith(f"step {at_step}/"):
            proc.send_signal(sig)
    proc.wait(timeout=300)
    return "".join(out)


def _final_state(workdir):
    config = runs.workdir_config(workdir)
    abstract, _ = train.abstract_train_state(config, sharding.make_mesh(config.mesh))
    with checkpoint.Checkpointer(workdir, read_only=True) as ck:
        return ck.restore(abstract, step=STEPS)


@pytest.mark.slow
def test_signal_at_a_random_step_then_rerun_is_bitwise_uninterrupted(tmp_path):
    k = random.randint(1, STEPS - 4)  # any step: the property holds for each (k is in the messages)
    ref = _start(tmp_path / "ref", tmp_path / "ref.log")  # the uninterrupted run, in parallel
    term = _start(tmp_path / "term", tmp_path / "term.log")
    term_out = _interrupt(term, k, signal.SIGTERM)
    ref.communicate(timeout=300)
    assert ref.returncode == 0, (tmp_path / "ref.log").read_text()[-3000:]

    log = (tmp_path / "term.log").read_text()
    assert term.returncode == errors.EXIT_PREEMPTED == 75, (k, log[-3000:])
    stopped = re.search(r"SIGTERM: stopped after step (\d+), checkpoint saved in (\S+);", log)
    assert stopped, (k, log[-3000:])
    last = int(stopped.group(1))
    assert k <= last < STEPS and stopped.group(2) == str(tmp_path / "term" / "checkpoints" / str(last))
    assert os.path.isdir(stopped.group(2)) and not (tmp_path / "term" / "run.lock").exists()
    assert max(int(x) for x in re.findall(r"^step (\d+)/", term_out, re.M)) == last  # no step after it

    # The same command again: resumes where SIGTERM stopped it and finishes.
    again = _start(tmp_path / "term", tmp_path / "again.log")
    out, _ = again.communicate(timeout=300)
    assert again.returncode == 0, (tmp_path / "again.log").read_text()[-3000:]
    assert f"at step {last}" in out
    want, want_data = _final_state(tmp_path / "ref")
    got, got_data = _final_state(tmp_path / "term")
    assert got_data == want_data
    for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_watcher_turns_a_signal_into_a_stop_at_the_next_step(sig, capsys):
    before = signal.getsignal(sig)
    with preemption.Watcher(checkpointer=None) as w:  # single process: no agreement needed
        assert not w.should_stop(1)
        os.kill(os.getpid(), sig)  # handled here, between two bytecodes
        assert w.should_stop(2) and w.signal_name == signal.Signals(sig).name
        stop = w.stopped(2, "/w/checkpoints/2")
    assert signal.getsignal(sig) == before  # the handlers are put back
    assert isinstance(stop, preemption.Preempted) and stop.exit_code == 75
    assert str(stop).startswith(
        f"{signal.Signals(sig).name}: stopped after step 2, checkpoint saved in "
        "/w/checkpoints/2; rerun the same command to resume"
    )
    assert "finishing this step, then saving a checkpoint" in capsys.readouterr().err
