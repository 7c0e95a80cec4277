"""What each `--mode` of `python -m mdm_jax.main` runs, given a parsed config and a workdir.

- train: checks the workdir is writable (in seconds, before data and compilation), writes
  workdir/config.json, trains (resuming from the latest checkpoint) and, with
  `train.sample_at_end`, prints a few samples;
- eval: the validation likelihood (`likelihood.evaluate`) and, with `eval.evaluator_workdir`,
  the quality of every sample file of --mode=sample (`sample_quality.score_sample_files`);
- sample: `generate.sample`;
- experiment: `experiments.run` (config.experiment.name);
- report: `experiments.report`, the plots and summary.md of an experiment workdir redrawn from its
  results JSON (the config is optional).
"""

from __future__ import annotations

import jax

from mdm_jax import checkpoint, experiments, generate, likelihood, runs, sample_quality, train

__all__ = ["run"]


def _train(config, workdir: str):
    checkpoint.ensure_writable(workdir)
    if jax.process_index() == 0:
        # config.json lets eval/experiments rebuild this workdir's model (e.g. as an evaluator).
        runs.save_workdir_config(config, workdir)
    result = train.train_and_evaluate(config, workdir)
    if config.train.sample_at_end:
        # The quickstart ends by showing what the model generates (first-hitting samples).
        generate.sample(config, workdir)
    return result


def _eval(config, workdir: str):
    result = likelihood.evaluate(config, workdir)
    if config.eval.evaluator_workdir:
        result["sample_quality"] = sample_quality.score_sample_files(config, workdir)
    return result


def _report(config, workdir: str):
    return experiments.report(workdir, config.experiment.name if config is not None else None)


_MODES = {"train": _train, "eval": _eval, "sample": generate.sample, "experiment": experiments.run,
          "report": _report}


def run(mode: str, config, workdir: str):
    """Runs `mode` (one of cli.MODES) and returns what it returns."""
    if mode not in _MODES:
        raise ValueError(f"unknown --mode={mode!r}: use {', '.join(_MODES)}")
    return _MODES[mode](config, workdir)
