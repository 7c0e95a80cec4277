"""Runs stored in workdirs: the config a run was trained with and its checkpointed parameters.

Everything that reads a finished (or running) training run goes through here: sample mode,
evaluation, evaluators for generative perplexity and the experiments. It sits below all of them
and imports none of them.
"""

from __future__ import annotations

import copy
import json
import os

from mdm_jax import checkpoint, config as config_lib, guards, sharding, train


def workdir_config(workdir: str, fallback=None):
    """The config a workdir was trained with, from its `config.json`, else `fallback`.

    The JSON is merged into `config.base()` (`config.from_dict`), so fields added to the schema
    later get defaults.
    """
    path = os.path.join(workdir, "config.json")
    if os.path.exists(path):
        with open(path) as f:
            return config_lib.from_dict(json.load(f))
    if fallback is None:
        raise FileNotFoundError(f"{workdir} has no config.json: pass the config it was trained with")
    return fallback


def restore_params(config, workdir: str, *, use_ema: bool = True, step: int | None = None):
    """(params, checkpoint step, mesh, params shardings) of the latest (or given) checkpoint.

    An unreadable latest checkpoint falls back to the one before with a warning
    (`train.checkpoint_fallback`); parameters holding NaN or infinity (a diverged run) are refused.
    """
    mesh = sharding.make_mesh(config.mesh)
    ckpt = checkpoint.Checkpointer(workdir, read_only=True)
    try:
        latest = ckpt.latest_step() if step is None else step
        if latest is None:
            raise FileNotFoundError(
                f"no checkpoint in {workdir}: train first (python -m mdm_jax.main --mode=train "
                f"--config=... --workdir={workdir}) or point --workdir at a trained run"
            )
        abstract, shardings = train.abstract_train_state(config, mesh)
        state, _ = ckpt.restore(abstract, step=step, fallback=bool(config.train.checkpoint_fallback))
        restored = ckpt.restored_step
    finally:
        ckpt.close()
    params = state.ema_params if use_ema else state.params
    bad = [f"{'ema_params' if use_ema else 'params'}/{n}" for n in guards.tree_nonfinite(params)]
    if bad:
        raise guards.Diverged(
            f"checkpoint step {restored} in {workdir} holds non-finite {'EMA ' if use_ema else ''}parameters "
            f"({guards.describe_subtrees(bad)}): the run diverged before this checkpoint. Sampling or "
            "evaluating it would give meaningless output; retrain (lower train.lr) or use a checkpoint from "
            "before the divergence."
        )
    return params, restored, mesh, shardings.params


# Sections that define the trained model: sample and eval take them from the workdir's config.json.
RUN_SECTIONS = ("model", "objective", "data")


def _leaves(node, prefix=""):
    for k in node.keys():
        v = node[k]
        if hasattr(v, "keys"):
            yield from _leaves(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


def with_saved_run(config, workdir: str, overridden=()) -> tuple:
    """(config with the workdir's model/objective/data, the fields that changed) for sample / eval.

    The checkpoint was trained with `workdir/config.json`: its RUN_SECTIONS replace those of
    `config` (so a run's shape overrides need not be repeated), except the dotted fields in
    `overridden` (given on the command line), which win. Without config.json, `config` is used as is.
    """
    if not os.path.isfile(os.path.join(workdir, "config.json")):
        return config, []
    saved = workdir_config(workdir)
    out = copy.deepcopy(config)
    changed = []
    with out.unlocked():
        for section in RUN_SECTIONS:
            for dotted, value in _leaves(saved[section], f"{section}."):
                if dotted in overridden:
                    continue
                node, *path = dotted.split(".")
                parent = out[node]
                for name in path[:-1]:
                    parent = parent[name]
                if path[-1] not in parent or parent[path[-1]] != value:
                    changed.append(dotted)
                    parent[path[-1]] = value
    return out, changed
