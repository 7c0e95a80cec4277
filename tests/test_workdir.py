"""The workdir as a record failed runs cannot damage (mdm_jax.workdir, mdm_jax.runs):

- one run per workdir: a second run fails at once naming the holder (a real process holds the lock);
  the lock of a process that died is taken over with a warning;
- config.json is written only once validation and restore succeeded; every start is in the history;
- sample / eval take the model fields from the workdir's config.json, command-line overrides win.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from conftest import ROOT
from mdm_jax import checkpoint, config as config_lib, errors, loop, runs, workdir

_HOLD = """
import sys, time
from mdm_jax import workdir
workdir.RunLock(sys.argv[1]).acquire()
print("held", flush=True)
time.sleep(600)
"""


def test_one_run_per_workdir_and_stale_locks(tmp_path, capsys):
    wd = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD, str(wd)], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        info = json.loads((wd / workdir.LOCK_NAME).read_text())
        assert info["pid"] == holder.pid and info["host"] and info["start_time"] and "-c" in info["command"]
        with pytest.raises(workdir.Locked) as e:
            workdir.RunLock(wd).acquire()
        msg = str(e.value)
        assert f"is in use by another run: pid {holder.pid} on host {info['host']}" in msg
        assert "use another --workdir" in msg and str(wd / workdir.LOCK_NAME) in msg
        assert json.loads((wd / workdir.LOCK_NAME).read_text()) == info  # untouched
    finally:
        holder.send_signal(signal.SIGKILL)  # dies without releasing: a stale lock
        holder.wait()
    assert (wd / workdir.LOCK_NAME).exists()
    with workdir.RunLock(wd):
        mine = json.loads((wd / workdir.LOCK_NAME).read_text())
        assert mine["pid"] == os.getpid()
    assert "took over a stale lock" in capsys.readouterr().err
    assert not (wd / workdir.LOCK_NAME).exists()  # released
    workdir.RunLock(wd, enabled=False).acquire()  # processes other than 0 take no lock
    assert not (wd / workdir.LOCK_NAME).exists()


def tiny(emb_dim=32, num_steps=2):
    c = config_lib.base()
    c.model.update(
        vocab_size=256,
        max_len=32,
        num_layers=1,
        num_heads=2,
        emb_dim=emb_dim,
        mlp_dim=64,
        time_conditioning=False,
    )
    c.data.seq_len = 32
    c.train.update(
        batch_size=8,
        num_steps=num_steps,
        warmup_steps=0,
        log_every=1,
        eval_every=1000,
        eval_batches=1,
        checkpoint_every=2,
        plot=False,
    )
    return c


@pytest.mark.slow
def test_config_json_only_after_a_successful_restore(tmp_path, capsys, monkeypatch):
    wd = str(tmp_path / "run")
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)  # a terminal: a progress bar
    loop.train_and_evaluate(tiny(), wd)
    out, err = capsys.readouterr()
    # The bar is on stderr; the eval line goes through it (tqdm.write), not over it.
    assert "train:" in err and "eval step 2:" in out and "eval step" not in err
    monkeypatch.undo()
    saved = (tmp_path / "run" / "config.json").read_text()
    with pytest.raises(checkpoint.CheckpointMismatch, match="does not match the config"):
        loop.train_and_evaluate(tiny(emb_dim=64, num_steps=4), wd)  # the wrong shape
    assert (tmp_path / "run" / "config.json").read_text() == saved  # the record is intact
    assert runs.workdir_config(wd).model.emb_dim == 32
    assert not (tmp_path / "run" / workdir.LOCK_NAME).exists()
    loop.train_and_evaluate(tiny(num_steps=4), wd)  # a good resume
    hist = workdir.history(wd)
    assert [h["start_step"] for h in hist] == [0, 2]  # the failed start is not there
    assert hist[1]["config"]["train"]["num_steps"] == 4 and hist[1]["pid"] == os.getpid()
    assert runs.workdir_config(wd).train.num_steps == 4
    capsys.readouterr()
    assert loop.train_and_evaluate(tiny(num_steps=0), wd)["step"] == 4  # nothing to do: says so
    assert "note: nothing to train: the run is at step 4 and train.num_steps=0" in capsys.readouterr().out


def test_sample_and_eval_take_the_model_from_the_workdir(tmp_path):
    (tmp_path / "config.json").write_text(tiny(emb_dim=64).to_json())
    given = config_lib.base()  # e.g. --config=configs/quickstart.py without the shape overrides
    given.sampling.num_samples = 5
    c, changed = runs.with_saved_run(given, str(tmp_path), overridden={"model.num_layers"})
    assert c.model.emb_dim == 64 and c.data.seq_len == 32 and c.model.vocab_size == 256
    assert c.model.num_layers == given.model.num_layers  # given on the command line: it wins
    assert c.sampling.num_samples == 5  # not a model field: the given config's
    assert "model.emb_dim" in changed and "model.num_layers" not in changed
    same, none = runs.with_saved_run(given, str(tmp_path / "no_config"))
    assert same is given and none == []
    with pytest.raises(errors.ConfigError):
        workdir.check_output_dir(tmp_path / "config.json" / "samples")
