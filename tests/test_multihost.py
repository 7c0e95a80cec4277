"""Multi-process training: 2 local processes x 4 CPU devices == 1 process x 8 devices.

The processes talk through `jax.distributed` (coordinator on a free local port, gloo CPU
collectives), each reads only its half of every global batch, and all of them save and restore
the same Orbax checkpoints. The 2-process job is interrupted after its step-3 checkpoint
(simulated: the final checkpoint of a finished run is deleted) and restarted, so its final state
comes from a multi-process restore; it must match the single-process, 8-device run.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT

WORKER = r"""
import json, os, sys
num_processes, process_id, port, workdir, out = sys.argv[1:]
num_processes, process_id = int(num_processes), int(process_id)
from mdm_jax import distributed
if num_processes > 1:
    assert distributed.init_distributed(f"127.0.0.1:{port}", num_processes, process_id)
import jax
from mdm_jax import config as config_lib, loop
assert jax.process_count() == num_processes and jax.device_count() == 8
c = config_lib.base()
c.model.update(num_layers=1, num_heads=2, emb_dim=32, mlp_dim=64, max_len=32, time_conditioning=False)
c.data.seq_len = 32
c.train.update(batch_size=8, num_steps=6, warmup_steps=2, lr=3e-3, log_every=1, eval_every=1000,
               eval_batches=1, checkpoint_every=3, plot=False)
result = loop.train_and_evaluate(c, workdir)
if jax.process_index() == 0:
    with open(out, "w") as f:
        json.dump(result, f)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(num_processes: int, devices_per_process: int, workdir, out, cache_dir) -> dict:
    # The restarted job compiles the same programs again: a persistent compilation cache saves it.
    env = {
        **os.environ,
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices_per_process}",
        "JAX_PLATFORMS": "cpu",
        "JAX_COMPILATION_CACHE_DIR": str(cache_dir),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
    }
    port = _free_port()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(num_processes), str(i), str(port), str(workdir), str(out)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(num_processes)
    ]
    logs = []
    for p in procs:
        try:
            logs.append(p.communicate(timeout=240)[0])
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log[-4000:]
    with open(out) as f:
        return json.load(f), logs


@pytest.mark.slow
@pytest.mark.multihost
def test_two_processes_match_one_process(tmp_path):
    from mdm_jax import checkpoint, config as config_lib, sharding, train

    cache = tmp_path / "jax_cache"
    single, _ = _launch(1, 8, tmp_path / "single", tmp_path / "single.json", cache)

    multi_wd = tmp_path / "multi"
    first, _ = _launch(2, 4, multi_wd, tmp_path / "multi1.json", cache)
    assert first["step"] == 6
    shutil.rmtree(multi_wd / "checkpoints" / "6")  # the job "died" after its step-3 checkpoint
    multi, logs = _launch(2, 4, multi_wd, tmp_path / "multi2.json", cache)
    assert "resumed from" in logs[0] and "at step 3" in logs[0]
    assert "resumed from" not in logs[1]  # only process 0 prints

    assert multi["step"] == single["step"] == 6
    for k in ("train/loss", "train/grad_norm", "eval/nats_per_token"):
        assert multi[k] == pytest.approx(single[k], rel=1e-5, abs=1e-6), k
    assert first["train/loss"] == pytest.approx(multi["train/loss"], rel=1e-5, abs=1e-6)

    # The final parameters written by both jobs agree (restored here on this process's 1 device).
    c = config_lib.base()
    c.model.update(num_layers=1, num_heads=2, emb_dim=32, mlp_dim=64, max_len=32, time_conditioning=False)
    c.data.seq_len = 32
    abstract, _ = train.abstract_train_state(c, sharding.make_mesh(c.mesh))
    with checkpoint.Checkpointer(tmp_path / "single") as cs, checkpoint.Checkpointer(multi_wd) as cm:
        (s_state, s_data), (m_state, m_data) = cs.restore(abstract), cm.restore(abstract)
    assert s_data == m_data
    for a, b in zip(jax_leaves(s_state.params), jax_leaves(m_state.params)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def jax_leaves(tree):
    import jax

    return [np.asarray(x) for x in jax.tree.leaves(tree)]
