"""The paper's experiments, one module each, run by `--mode=experiment`.

`run(config, workdir)` dispatches on `config.experiment.name`. Every experiment module computes
first and draws second:
- `run(config, workdir) -> dict` computes, writes `<name>.json` (+ CSVs) through
  `mdm_jax.report.write_results`, then calls `draw(workdir)`;
- `draw(workdir) -> dict` reads that JSON back and makes the plots, the finding sentences (one
  function per experiment derives them from the numbers) and summary.md.
`report(workdir)` (`--mode=report`) calls `draw` alone: plots and summary are redrawn from the
saved results, without recomputing. The experiments' fields are declared in
`mdm_jax.config_experiments.EXPERIMENT_FIELDS`.

Shared helpers for experiments that train their own models: `train_run` (train a derived
config into a sub-workdir, or reuse it when already trained), `train_throughput`, `derive` and
`parse_list`.
"""

from __future__ import annotations

import copy
import importlib
import os
import time

import numpy as np

from mdm_jax import checkpoint, config as config_lib, loop, metrics, models, runs

# Each module is imported when its experiment runs: the others' imports are not paid for.
EXPERIMENTS = tuple(config_lib.EXPERIMENT_FIELDS)


def _module(name: str):
    if name not in EXPERIMENTS:
        raise ValueError(
            f"unknown experiment.name={name!r}: choose one of {', '.join(EXPERIMENTS)} "
            "(use one of the configs in configs/experiments/, e.g. "
            "--config=configs/experiments/time_agnostic.py)"
        )
    return importlib.import_module(f"mdm_jax.experiments.{name}")


def run(config, workdir: str) -> dict:
    return _module(config.experiment.name).run(config, workdir)


def report(workdir: str, name: str | None = None) -> dict:
    """Redraws the plots and summary.md of the experiment whose results JSON is in `workdir`
    (`name`, or the one experiment with a `<name>.json` there); nothing is recomputed."""
    if not os.path.isdir(workdir):
        raise FileNotFoundError(
            f"--workdir={workdir} is not a directory: give the workdir of an "
            "experiment run (--mode=experiment)"
        )
    if not name:
        found = [n for n in EXPERIMENTS if os.path.isfile(os.path.join(workdir, f"{n}.json"))]
        if len(found) != 1:
            raise FileNotFoundError(
                f"{workdir} holds the results of {', '.join(found) or 'no experiment'} "
                f"({' or '.join(f'{n}.json' for n in EXPERIMENTS)} expected): "
                + ("pass the experiment's --config" if found else "run --mode=experiment there first")
            )
        name = found[0]
    drawn = _module(name).draw(workdir)
    print(
        f"{name}: redrew {len(drawn['plots'])} plot(s) and {drawn['summary']} from "
        f"{os.path.join(workdir, name + '.json')}",
        flush=True,
    )
    return drawn


def parse_list(value, cast=float, field: str = "experiment", *, allow_empty: bool = False) -> list:
    """A list field's values: a tuple (1, 2), a comma-separated string "0.8,0.9, 1.0", or a tuple
    holding such strings (what `--config.f=a,b` gives for a tuple of strings) -> [cast(x), ...].
    Empty strings are dropped (`--config.f=''` gives ('',)): an empty list is an error unless
    `allow_empty`."""
    items = value if isinstance(value, (list, tuple)) else [value]
    items = [p for v in items for p in (v.split(",") if isinstance(v, str) else [v])]
    try:
        out = [
            cast(v.strip() if isinstance(v, str) else v)
            for v in items
            if not (isinstance(v, str) and not v.strip())
        ]
    except (TypeError, ValueError) as e:
        raise ValueError(f"{field}={value!r}: expected a list of {cast.__name__} ({e})") from e
    if not out and not allow_empty:
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

    The train loop writes workdir/config.json, so evaluators and later runs can rebuild the model.
    A partly trained workdir resumes (the train loop restores its latest checkpoint).
    Returns {"workdir", "step", "trained": bool, "train_seconds"}.
    """
    os.makedirs(workdir, exist_ok=True)
    if os.path.exists(os.path.join(workdir, "config.json")):
        _check_same_model(runs.workdir_config(workdir), config, workdir)
    ckpt = checkpoint.Checkpointer(workdir)  # config.json is written by the train loop once restored
    try:
        latest = ckpt.latest_step()
    finally:
        ckpt.close()
    if latest is not None and latest >= config.train.num_steps:
        log(f"reusing {workdir} (trained to step {latest})")
        return {"workdir": workdir, "step": int(latest), "trained": False, "train_seconds": None}
    log(
        f"training {config.objective.kind} (time_conditioning={config.model.time_conditioning}) "
        f"for {config.train.num_steps} steps in {workdir}"
    )
    t0 = time.perf_counter()
    final = loop.train_and_evaluate(config, workdir)
    return {
        "workdir": workdir,
        "step": int(final["step"]),
        "trained": True,
        "train_seconds": time.perf_counter() - t0,
    }


def train_throughput(workdir: str) -> float | None:
    """Median training tokens/s of a run, without its first log interval (compilation)."""
    try:
        recs = [r["tokens_per_s"] for r in metrics.read_metrics(workdir, "train") if "tokens_per_s" in r]
    except FileNotFoundError:
        return None
    recs = recs[1:] if len(recs) > 1 else recs
    return float(np.median(recs)) if recs else None


def _check_same_model(old, new, workdir: str) -> None:
    """A reused sub-workdir must hold the same model, objective, data and batch (the model's
    execution-only fields, models.EXECUTION_FIELDS, may differ: they do not change the function)."""
    for section in ("model", "objective", "data"):
        skip = models.EXECUTION_FIELDS if section == "model" else ()
        was = {k: v for k, v in old[section].to_dict().items() if k not in skip}
        now = {k: v for k, v in new[section].to_dict().items() if k not in skip}
        if was != now:
            diff = sorted(k for k in was.keys() | now.keys() if was.get(k) != now.get(k))
            raise ValueError(
                f"{workdir} was trained with another config.{section} (differs in "
                + ", ".join(f"{section}.{k}: {was.get(k)!r} vs {now.get(k)!r}" for k in diff)
                + "): use a new --workdir for the experiment"
            )
    if old.train.batch_size != new.train.batch_size:
        raise ValueError(
            f"{workdir} was trained with train.batch_size={old.train.batch_size}, "
            f"not {new.train.batch_size}: use a new --workdir for the experiment"
        )
