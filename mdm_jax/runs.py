"""Runs stored in workdirs: the config a run was trained with and its checkpointed parameters.

Everything that reads a finished (or running) training run goes through here: sample mode,
evaluation, evaluators for generative perplexity and the experiments. It sits below all of them
and imports none of them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping

from mdm_jax import checkpoint, config as config_lib, sharding, train


def _merge(node, values: Mapping):
    for k, v in values.items():
        if k in node and hasattr(node[k], "keys") and isinstance(v, Mapping):
            _merge(node[k], v)
        else:
            node[k] = v


def save_workdir_config(config, workdir: str) -> str:
    """Writes workdir/config.json so that tools can rebuild the model of a workdir later."""
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, "config.json")
    with open(path, "w") as f:
        f.write(config.to_json(indent=2))
    return path


def workdir_config(workdir: str, fallback=None):
    """The config a workdir was trained with, from its `config.json`, else `fallback`.

    The JSON is merged into `config.base()`, so fields added to the schema later get defaults.
    """
    path = os.path.join(workdir, "config.json")
    if os.path.exists(path):
        with open(path) as f:
            values = json.load(f)
        c = config_lib.base()
        with c.unlocked():
            _merge(c, values)
        return c
    if fallback is None:
        raise FileNotFoundError(f"{workdir} has no config.json: pass the config it was trained with")
    return fallback


def restore_params(config, workdir: str, *, use_ema: bool = True, step: int | None = None):
    """(params, checkpoint step, mesh, params shardings) of the latest (or given) checkpoint."""
    mesh = sharding.make_mesh(config.mesh)
    ckpt = checkpoint.Checkpointer(workdir, read_only=True)
    try:
        latest = ckpt.latest_step() if step is None else step
        if latest is None:
            raise FileNotFoundError(
                f"no checkpoint in {workdir}: train first (python -m mdm_jax.main --mode=train "
                f"--config=... --workdir={workdir}) or point --workdir at a trained run")
        abstract, shardings = train.abstract_train_state(config, mesh)
        state, _ = ckpt.restore(abstract, step=latest)
    finally:
        ckpt.close()
    params = state.ema_params if use_ema else state.params
    return params, int(latest), mesh, shardings.params
