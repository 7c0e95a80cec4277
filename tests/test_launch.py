"""Launchers: exact dry-run commands for local multi-process, TPU pods and SLURM, and a real
2-process x 2-device local training run."""

from __future__ import annotations

import json
import math
import shlex
import subprocess
import sys

import pytest

from conftest import ROOT, tiny_flags

PY = sys.executable
MAIN_ARGS = ["--config=configs/quickstart.py", "--workdir=/tmp/run dir", "--config.train.lr=1e-3"]


def launch(*argv, check=True):
    proc = subprocess.run(list(argv), cwd=ROOT, capture_output=True, text=True, timeout=120)
    if check:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def test_local_multiprocess_dry_run():
    out = launch(
        PY,
        "launch/local_multiprocess.py",
        "--dry-run",
        "--num_processes=3",
        "--devices_per_process=4",
        "--port=12345",
        "--",
        *MAIN_ARGS,
    ).stdout
    lines = out.strip().splitlines()
    assert len(lines) == 3
    for i, line in enumerate(lines):
        words = shlex.split(line)
        assert words[:2] == ["JAX_PLATFORMS=cpu", "XLA_FLAGS=--xla_force_host_platform_device_count=4"]
        assert words[2:] == [
            PY,
            "-m",
            "mdm_jax.main",
            *MAIN_ARGS,
            "--coordinator_address=127.0.0.1:12345",
            "--num_processes=3",
            f"--process_id={i}",
        ]
    bad = launch(PY, "launch/local_multiprocess.py", "--dry-run", check=False)
    assert bad.returncode != 0 and "after --" in bad.stderr


def test_tpu_pod_dry_run():
    out = launch(
        "bash",
        "launch/tpu_pod.sh",
        "--tpu=pod-v4-32",
        "--zone=us-central2-b",
        "--project=proj",
        "--dry-run",
        "--",
        *MAIN_ARGS,
    ).stdout
    words = shlex.split(out)
    assert words[:9] == [
        "gcloud",
        "compute",
        "tpus",
        "tpu-vm",
        "ssh",
        "pod-v4-32",
        "--zone=us-central2-b",
        "--project=proj",
        "--worker=all",
    ]
    assert len(words) == 10 and words[9].startswith("--command=")
    remote = words[9][len("--command=") :]
    # The remote shell gets: cd <repo> && python3 -m mdm_jax.main <args, each intact>
    assert remote.startswith("cd ~/mdm-jax && ")
    assert shlex.split(remote.split(" && ", 1)[1]) == ["python3", "-m", "mdm_jax.main", *MAIN_ARGS]

    setup = launch(
        "bash", "launch/tpu_pod.sh", "--tpu=t", "--zone=z", "--setup", "--dry-run", "--", "--config=c.py"
    ).stdout
    assert "pip install" in shlex.split(setup)[-1] and "--project" not in setup
    missing = launch("bash", "launch/tpu_pod.sh", "--dry-run", "--", "--config=c.py", check=False)
    assert missing.returncode != 0 and "--tpu=NAME and --zone=ZONE are required" in missing.stderr


def test_slurm_dry_run():
    out = launch(
        PY,
        "launch/slurm.py",
        "--dry-run",
        "--nodes=4",
        "--gpus_per_node=8",
        "--partition=gpu",
        "--time=02:00:00",
        "--repo_dir=/shared/mdm jax",
        "--",
        *MAIN_ARGS,
    ).stdout
    lines = out.splitlines()
    assert lines[0] == "#!/bin/bash"
    directives = {line.split()[1] for line in lines if line.startswith("#SBATCH")}
    assert {
        "--nodes=4",
        "--ntasks-per-node=1",
        "--gpus-per-node=8",
        "--partition=gpu",
        "--time=02:00:00",
    } <= directives
    assert "cd '/shared/mdm jax'" in lines
    srun = [line for line in lines if line.startswith("srun ")]
    assert len(srun) == 1 and shlex.split(srun[0]) == ["srun", "python", "-m", "mdm_jax.main", *MAIN_ARGS]


TINY = [
    "--config=configs/quickstart.py",
    *tiny_flags(),
    "--config.train.num_steps=2",
    "--config.train.log_every=1",
    "--config.train.eval_every=1000",
    "--config.train.eval_batches=1",
    "--config.train.checkpoint_every=1000",
    "--config.train.plot=False",
]


@pytest.mark.slow
@pytest.mark.multihost
def test_local_multiprocess_trains_two_processes_of_two_devices(tmp_path):
    # Prepare the dataset once here, so the two processes only read it (no concurrent build).
    prep = subprocess.run(
        [
            PY,
            "-c",
            "import sys; sys.path.insert(0, '.'); from configs import quickstart; "
            "from mdm_jax.data import packing; c = quickstart.get_config(); "
            "[packing.packed_tokens(c, s) for s in ('train', 'validation')]",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert prep.returncode == 0, prep.stderr[-3000:]
    workdir = tmp_path / "mp"
    proc = subprocess.run(
        [
            PY,
            "launch/local_multiprocess.py",
            "--num_processes=2",
            "--devices_per_process=2",
            "--timeout=400",
            "--",
            *TINY,
            f"--workdir={workdir}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=450,
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-5000:]
    assert "2 process(es), 4 cpu device(s)" in log
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["prefix"] == "train"]
    assert [r["step"] for r in train] == [1, 2], records
    assert all(math.isfinite(r["loss"]) and 0 < r["loss"] < 20 for r in train), train
