"""Every check of a command's input, run before any work (data preparation, compilation, training).

`check(config, mode, workdir, output_dir)` raises `errors.ConfigError` (a ValueError) naming the
config field, flag or path and the fix. The checks themselves live beside the code they protect
(`train.check_config`, `guards.check_config`, `pipeline.validate`, `generate.check_sampling`,
`workdir.check_run_dir` / `check_output_dir`); this module decides which apply to which mode, so
that a bad field never fails after a whole training run (`train.sample_at_end`) or a whole
sampling run (an unwritable output directory).
"""

from __future__ import annotations

import os

from mdm_jax import checkpoint, errors, experiments, generate, sharding, train, workdir as workdir_lib
from mdm_jax.data import pipeline

MODES = ("train", "eval", "sample", "experiment")


def check_eval(config) -> None:
    """The eval.* fields of --mode=eval."""
    e = config.eval
    if int(e.num_batches) < 1:
        raise errors.ConfigError(f"eval.num_batches={e.num_batches} must be >= 1 (validation batches)")
    if int(e.mc_draws) < 1:
        raise errors.ConfigError(
            f"eval.mc_draws={e.mc_draws} must be >= 1 (Monte Carlo draws of t per sequence)"
        )
    wd = e.evaluator_workdir
    if wd and not os.path.isdir(wd):
        raise errors.ConfigError(
            f"eval.evaluator_workdir={wd} is not a directory: train the evaluator ARM "
            "first (e.g. --config=configs/quickstart_arm.py) or clear the field"
        )


def output_dir(mode: str, workdir: str, output_dir: str | None) -> str | None:
    """Where a mode writes its outputs (None: modes that write into the workdir itself)."""
    sub = {"sample": "samples", "eval": "eval"}.get(mode)
    return os.path.join(output_dir or workdir, sub) if sub else None


def check(config, mode: str, workdir: str, output_dir_flag: str | None = None) -> None:
    try:
        _check(config, mode, workdir, output_dir_flag)
    except errors.ConfigError:
        raise
    except (ValueError, PermissionError) as e:  # the checks beside the code name the field or path
        raise errors.ConfigError(str(e)) from e


def _check(config, mode: str, workdir: str, output_dir_flag: str | None) -> None:
    if mode not in MODES:
        raise errors.ConfigError(f"--mode={mode!r}: choose one of {', '.join(MODES)}")
    if output_dir_flag and mode not in ("sample", "eval"):
        raise errors.ConfigError(
            f"--output_dir is for --mode=sample and --mode=eval; --mode={mode} writes into --workdir"
        )
    if mode == "train":
        train.check_config(config, sharding.make_mesh(config.mesh))
        pipeline.validate(config)
        if config.train.sample_at_end:
            generate.check_sampling(config)
        checkpoint.ensure_writable(workdir)
        return
    if mode == "experiment":
        if config.experiment.name not in experiments.EXPERIMENTS:
            raise errors.ConfigError(
                f"unknown experiment.name={config.experiment.name!r}: choose one of "
                f"{', '.join(experiments.EXPERIMENTS)} (or a config in configs/experiments/)"
            )
        checkpoint.ensure_writable(workdir)
        return
    workdir_lib.check_run_dir(workdir, mode)
    if mode == "sample":
        generate.check_sampling(config)
    else:  # eval batches are train.batch_size sequences of the validation split
        train.check_config(config, sharding.make_mesh(config.mesh))
        pipeline.validate(config)
        check_eval(config)
    workdir_lib.check_output_dir(output_dir(mode, workdir, output_dir_flag))
