"""What each `--mode` of `python -m mdm_jax.main` runs, given a parsed config and a workdir.

Every mode first runs all its checks (`preflight.check`: config fields, workdir and output paths),
so bad input stops before data, compilation or training. Then:
- train: trains (resuming from the latest checkpoint) under the workdir's lock, writing
  config.json once the restore succeeded (`loop`), and with `train.sample_at_end` prints a few
  samples;
- eval: the validation likelihood (`likelihood.evaluate`) and, with an evaluator set, the quality
  of every sample file of --mode=sample (`sample_quality.score_sample_files`);
- sample: `generate.sample`;
- experiment: `experiments.run` (config.experiment.name);
- report: `experiments.report`, the plots and summary.md of an experiment workdir redrawn from its
  results JSON (the config is optional).
eval and sample take the model, objective and data fields from the workdir's config.json (what
the run was trained with; `runs.with_saved_run`), except those given on the command line.
"""

from __future__ import annotations

import jax

from mdm_jax import experiments, generate, likelihood, loop, preflight, runs, sample_quality

__all__ = ["run"]


def _train(config, workdir: str, output_dir=None):
    result = loop.train_and_evaluate(config, workdir)  # writes config.json once restored
    if config.train.sample_at_end:
        # The quickstart ends by showing what the model generates (first-hitting samples).
        generate.sample(config, workdir)
    return result


def _eval(config, workdir: str, output_dir=None):
    result = likelihood.evaluate(config, workdir, output_dir=output_dir)
    if config.eval.evaluator or config.eval.evaluator_workdir:
        result["sample_quality"] = sample_quality.score_sample_files(config, output_dir or workdir)
    return result


def _sample(config, workdir: str, output_dir=None):
    return generate.sample(config, workdir, output_dir=output_dir)


def _experiment(config, workdir: str, output_dir=None):
    return experiments.run(config, workdir)


def _report(config, workdir: str, output_dir=None):
    return experiments.report(workdir, config.experiment.name if config is not None else None)


_MODES = {"train": _train, "eval": _eval, "sample": _sample, "experiment": _experiment, "report": _report}


def run(mode: str, config, workdir: str, output_dir: str | None = None, overridden=()):
    """Checks everything, then runs `mode` (one of cli.MODES) and returns what it returns.

    `overridden`: the dotted fields given on the command line (they win over the workdir's
    config.json in eval and sample).
    """
    if mode not in _MODES:
        raise ValueError(f"unknown --mode={mode!r}: use {', '.join(_MODES)}")
    if mode == "report":  # reads JSON and draws: nothing to check beyond the workdir's files
        return _report(config, workdir)
    if mode in ("eval", "sample"):
        config, changed = runs.with_saved_run(config, workdir, overridden)
        if changed and jax.process_index() == 0:
            print(
                f"note: {len(changed)} model/objective/data field(s) taken from {workdir}/config.json, "
                f"the config the run was trained with: {', '.join(changed[:6])}"
                + (", ..." if len(changed) > 6 else ""),
                flush=True,
            )
    preflight.check(config, mode, workdir, output_dir)
    return _MODES[mode](config, workdir, output_dir)
