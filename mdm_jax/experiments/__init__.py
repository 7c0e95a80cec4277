"""The paper's experiments, one module each, run by `--mode=experiment` (issue 4).

`run(config, workdir)` dispatches on `config.experiment.name`; every experiment module exposes
`run(config, workdir) -> dict` and writes its JSON, CSV, plots and summary.md through
`mdm_jax.report`. Modules are imported lazily: an experiment's heavy imports
(samplers, training) load only when it runs.

Shared helpers for experiments that train their own models: `train_run` (train a derived
config into a sub-workdir, or reuse it when already trained) and `parse_list`.
"""

from __future__ import annotations

import copy
import importlib
import os

EXPERIMENTS = ("precision_sweep", "time_agnostic", "sampler_speed", "mdm_vs_arm", "table2")


def run(config, workdir: str) -> dict:
    name = config.experiment.name
    if name not in EXPERIMENTS:
        raise ValueError(
            f"unknown experiment.name={name!r}: choose one of {', '.join(EXPERIMENTS)} "
            "(use one of the configs in configs/experiments/, e.g. "
            "--config=configs/experiments/time_agnostic.py)")
    module = importlib.import_module(f"mdm_jax.experiments.{name}")
    return module.run(config, workdir)


def parse_list(value, cast=float, field: str = "experiment") -> list:
    """'0.8,0.9, 1.0' (or a list/tuple) -> [0.8, 0.9, 1.0]; lists are strings in configs so that
    `--config.experiment.temperatures=0.7,1.0` works from the command line."""
    items = value if isinstance(value, (list, tuple)) else str(value).split(",")
    try:
        out = [cast(v.strip() if isinstance(v, str) else v) for v in items
               if not (isinstance(v, str) and not v.strip())]
    except ValueError as e:
        raise ValueError(f"{field}={value!r}: expected a comma-separated list ({e})") from e
    if not out:
        raise ValueError(f"{field} is empty: give at least one value")
    return out


def derive(config, **overrides):
    """A copy of config with dotted-field overrides, e.g. derive(c, **{"objective.kind": "arm"})."""
    c = copy.deepcopy(config)
    with c.unlocked():
        for dotted, value in overrides.items():
            node = c
            *parents, leaf = dotted.split(".")
            for p in parents:
                node = node[p]
            if leaf not in node:
                raise KeyError(f"derive: unknown config field {dotted!r}")
            node[leaf] = value
    return c


def train_run(config, workdir: str, *, log=print) -> dict:
    """Trains `config` in `workdir` unless a checkpoint at train.num_steps is already there.

    Writes workdir/config.json first, so evaluators and later runs can rebuild the model. A
    partly trained workdir resumes (the train loop restores its latest checkpoint).
    Returns {"workdir", "step", "trained": bool, "train_seconds"}.
    """
    import time

    from mdm_jax import checkpoint, runs, train

    os.makedirs(workdir, exist_ok=True)
    if os.path.exists(os.path.join(workdir, "config.json")):
        _check_same_model(runs.workdir_config(workdir), config, workdir)
    runs.save_workdir_config(config, workdir)
    ckpt = checkpoint.Checkpointer(workdir)
    try:
        latest = ckpt.latest_step()
    finally:
        ckpt.close()
    if latest is not None and latest >= config.train.num_steps:
        log(f"reusing {workdir} (trained to step {latest})")
        return {"workdir": workdir, "step": int(latest), "trained": False, "train_seconds": None}
    log(f"training {config.objective.kind} (time_conditioning={config.model.time_conditioning}) "
        f"for {config.train.num_steps} steps in {workdir}")
    t0 = time.perf_counter()
    final = train.train_and_evaluate(config, workdir)
    return {"workdir": workdir, "step": int(final["step"]), "trained": True,
            "train_seconds": time.perf_counter() - t0}


def _check_same_model(old, new, workdir: str) -> None:
    """A reused sub-workdir must hold the same model, objective, data and batch."""
    for section in ("model", "objective", "data"):
        if old[section].to_dict() != new[section].to_dict():
            raise ValueError(
                f"{workdir} was trained with another config.{section} ({old[section].to_dict()} vs "
                f"{new[section].to_dict()}): use a new --workdir for the experiment")
    if old.train.batch_size != new.train.batch_size:
        raise ValueError(f"{workdir} was trained with train.batch_size={old.train.batch_size}, "
                         f"not {new.train.batch_size}: use a new --workdir for the experiment")
