"""Entry point: `python -m mdm_jax.main --mode=MODE --config=configs/X.py --workdir=DIR`.

MODE is train (the default), eval, sample, experiment (configs/experiments/) or report (redraw an
experiment's plots and summary.md from the results JSON in --workdir, without recomputing; no
--config needed). What each mode runs: `mdm_jax.modes`.

Any config field can be overridden with `--config.<field>=<value>` (e.g. `--config.train.lr=1e-3`);
an unknown field stops before anything runs, naming the field and listing the valid ones
(`mdm_jax.cli`). Every field is described in mdm_jax/config.py; `--print_config` prints the
resolved config with each field's description and exits. Multi-host: the same command runs on
every host (`mdm_jax.distributed`); only process 0 prints.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags, logging

from mdm_jax import cli
from mdm_jax import config as config_lib

cli.define_flags()
FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if FLAGS.print_config and FLAGS.config is not None:
        print(config_lib.describe(FLAGS.config), end="")
        return
    if FLAGS.config is None and FLAGS.mode != "report":
        raise app.UsageError("--config is required, e.g. --config=configs/quickstart.py")
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
        print(f"mdm-jax {FLAGS.mode}: config {FLAGS['config'].config_filename}, "
              f"workdir {FLAGS.workdir}, {jax.process_count()} process(es), "
              f"{jax.device_count()} {jax.devices()[0].device_kind} device(s)", flush=True)
    modes.run(FLAGS.mode, FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags)
