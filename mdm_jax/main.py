"""mdm-jax: train, evaluate and sample masked diffusion language models.

    python -m mdm_jax.main --mode=MODE --config=configs/X.py --workdir=DIR [--config.<field>=<value> ...]

Modes (what each runs: mdm_jax/modes.py):
  train       train (or resume) the config's model in DIR: checkpoints, metrics.jsonl, TensorBoard
              events, config.json; one run per DIR at a time (DIR/run.lock)
  eval        validation NELBO (MDM) or NLL (ARM) of DIR's latest checkpoint -> DIR/eval/
  sample      draw samples with the configured sampler -> DIR/samples/*.jsonl
  experiment  one of the paper's experiments (configs/experiments/*.py) -> DIR
  report      redraw an experiment's plots and summary.md from the results JSON in DIR, without
              recomputing (--config not needed)
For eval and sample, --config may be left out: DIR/config.json (what the run was trained with) is
used, and with a --config the model, objective and data fields still come from DIR/config.json;
`--config.<field>=<value>` overrides win in both cases. `--output_dir=OUT` writes their outputs
to OUT instead of DIR (a read-only or archived run).

Config fields: every field, its type, default and meaning are in mdm_jax/config.py (the schema);
configs/*.py override them; `--print_config` prints the resolved config with each field's
description and exits. Any field can be set with `--config.<field>=<value>` (e.g.
`--config.train.lr=1e-3`); an unknown field stops before anything runs, naming the field and
listing the valid ones (mdm_jax/cli.py). Every other bad value stops before any work too, naming
the field.

Exit status: 0 done, 1 failure, 2 bad input (nothing was done), 3 training diverged (non-finite
loss or gradients, see train.nonfinite; nothing non-finite saved), 75 preempted by SIGTERM or
SIGINT (the current step was saved: rerun the same command to resume). See mdm_jax/errors.py.

Multi-host: the same command runs on every host (mdm_jax/distributed.py); only process 0 prints.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags, logging

from mdm_jax import cli, config as config_lib, errors

cli.define_flags()
FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if FLAGS.print_config and FLAGS.config is not None:
        print(config_lib.describe(FLAGS.config), end="")
        return
    if FLAGS.config is None and FLAGS.mode != "report":
        raise app.UsageError(
            "--config is required, e.g. --config=configs/quickstart.py (eval and sample "
            "read it from --workdir's config.json when there is one)"
        )
    if not FLAGS.workdir:
        raise app.UsageError("--workdir is required, e.g. --workdir=workdirs/quickstart")
    if not FLAGS["verbosity"].present:
        # Orbax and TFDS log every step at INFO; the progress bar and eval lines are the output.
        logging.set_verbosity(logging.WARNING)
    # Imported only now: JAX and the modes take seconds to load, and flag errors and --help should
    # not wait for them.
    import jax

    from mdm_jax import distributed, modes

    if FLAGS.mode == "report":  # reads JSON, draws plots: no distributed set-up
        modes.run(FLAGS.mode, FLAGS.config, FLAGS.workdir)
        return
    distributed.init_distributed(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
    if jax.process_index() != 0:
        # One voice per job: other processes log warnings and errors only.
        logging.set_verbosity(logging.WARNING)
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the process
    else:
        print(
            f"mdm-jax {FLAGS.mode}: config {FLAGS['config'].config_filename}, "
            f"workdir {FLAGS.workdir}, {jax.process_count()} process(es), "
            f"{jax.device_count()} {jax.devices()[0].device_kind} device(s)",
            flush=True,
        )
    try:
        modes.run(FLAGS.mode, FLAGS.config, FLAGS.workdir, FLAGS.output_dir, cli.overridden_fields(sys.argv))
    except (errors.ConfigError, errors.RunStopped) as e:
        # The message names the field (or step, file) and the fix: no traceback to scroll through.
        sys.stderr.write(f"error: {e}\n" if isinstance(e, errors.ConfigError) else f"{e}\n")
        sys.exit(e.exit_code)


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags)
