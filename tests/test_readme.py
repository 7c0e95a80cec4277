"""The README's commands work as written.

- The first two commands are the documented setup: the second is exactly what `.ci/run` runs.
- Every `python -m mdm_jax.main` command in the README parses (config file, variant, overrides).
- The quickstart chain (train -> sample (FHS, ancestral) -> eval -> ARM twin) really runs, in the
  README's order and with its flags, shrunk by overrides appended after them (later flags win).
  The experiment commands run end to end at their `:tiny` size in tests/test_experiments_*.py.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys

import pytest
from absl import flags
from ml_collections import config_dict

from conftest import ROOT, tiny_flags
from mdm_jax import cli

MAIN = ".venv/bin/python -m mdm_jax.main"
SHRINK = [
    *tiny_flags(),
    "--config.train.num_steps=6",
    "--config.train.warmup_steps=2",
    "--config.train.log_every=3",
    "--config.train.eval_every=3",
    "--config.train.checkpoint_every=3",
    "--config.train.eval_batches=1",
    "--config.eval.num_batches=2",
    "--config.sampling.num_samples=2",
    "--config.sampling.batch_size=2",
]


def _bash_commands():
    text = open(os.path.join(ROOT, "README.md")).read()
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    return [
        [line.strip() for line in b.splitlines() if line.strip() and not line.startswith("#")] for b in blocks
    ]


def _main_argv(command: str) -> list[str]:
    """The mdm_jax.main arguments of a README command line (after any setup `&&` steps)."""
    part = [p for p in command.split("&&") if MAIN in p][0]
    return shlex.split(part.split(MAIN, 1)[1])


def test_first_two_commands_are_setup_plus_main_job_and_the_ci_command():
    first, second = _bash_commands()[0][:2]
    assert first.startswith("python3 -m venv .venv && .venv/bin/pip install -e . && ")
    assert _main_argv(first)[:1] == ["--config=configs/quickstart.py"]
    ci = open(os.path.join(ROOT, ".ci", "run")).read().strip().splitlines()[-1]
    assert second == ci


def test_every_readme_command_parses(monkeypatch):
    monkeypatch.chdir(ROOT)
    commands = [c for block in _bash_commands() for c in block if MAIN in c]
    assert len(commands) >= 9
    for c in commands:
        args = _main_argv(c)
        assert cli.unknown_override_message(["m", *args]) is None, c
        fv = flags.FlagValues()
        cli.define_flags(fv, sys_argv=["m", *args])
        fv(["m", *args])
        assert fv.workdir, c
        # Without --config: report reads the workdir's results JSON, eval and sample its config.json
        # (the chain below runs such a command on the workdir it trained).
        if fv.config is None:
            assert fv.mode in ("report", "eval", "sample"), c
        else:
            assert isinstance(fv.config, config_dict.ConfigDict), c


@pytest.mark.slow
def test_quickstart_chain_runs_as_written(tmp_path):
    commands = [c for block in _bash_commands() for c in block if MAIN in c]
    chain = [c for c in commands if "workdirs/quickstart" in c]
    # train, sample FHS, sample ancestral, eval, ARM train, --print_config, sample with --output_dir
    assert len(chain) == 7
    for c in chain:
        args = [a.replace("=workdirs/", f"={tmp_path}/") for a in _main_argv(c)]
        if "--output_dir" in c:
            before = sorted(p.relative_to(tmp_path) for p in (tmp_path / "quickstart").rglob("*"))
        r = subprocess.run(
            [sys.executable, "-m", "mdm_jax.main", *args, *SHRINK],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert r.returncode == 0, (c, r.stderr[-3000:])
        if "--mode" not in c and "--print_config" not in c:
            assert "eval step 6" in r.stdout and "bits/token" in r.stdout, r.stdout[-2000:]
        if "--print_config" in c:  # every field with its description; the overrides resolved
            assert "train.num_steps" in r.stdout and "optimizer steps" in r.stdout, r.stdout[-2000:]
        if "--output_dir" in c:  # the run itself is untouched; the samples are elsewhere
            assert sorted(p.relative_to(tmp_path) for p in (tmp_path / "quickstart").rglob("*")) == before
            assert list((tmp_path / "quickstart_samples" / "samples").glob("first_hitting_float64_*.jsonl"))
    qs = tmp_path / "quickstart"
    # The main job ends with first-hitting samples (train.sample_at_end in the quickstart config).
    assert (qs / "samples" / "first_hitting_float64_32.jsonl").exists()
    anc = [json.loads(x) for x in open(qs / "samples" / "ancestral_float32_1024.jsonl")]
    assert {s["precision"] for s in anc} == {"float32"} and all(s["nfe"] <= 1024 for s in anc)
    assert (qs / "eval" / "eval_6.json").exists()
    assert (tmp_path / "quickstart_arm" / "checkpoints" / "6").exists()
