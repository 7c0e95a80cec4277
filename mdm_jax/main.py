"""Entry point: `python -m mdm_jax.main --mode=MODE --config=configs/X.py --workdir=DIR`.

MODE is train (the default), eval, sample, experiment (configs/experiments/) or report.

Any config field can be overridden with `--config.<field>=<value>` (e.g. `--config.train.lr=1e-3`);
an unknown field stops before anything runs, naming the field and listing the valid ones. Every
field is described in mdm_jax/config.py; `--print_config` prints the resolved config with each
field's description and exits. `--mode=report --workdir=W` redraws an experiment's plots and
summary.md from the results JSON in W without recomputing (no --config needed).

Multi-host: the same command runs on every host. `jax.distributed.initialize` is called when
`--coordinator_address/--num_processes/--process_id` are given, when JAX_COORDINATOR_ADDRESS is
set, or when the environment shows a multi-process launch (Cloud TPU pod slices, SLURM with
several tasks, Open MPI) -- JAX's own cluster detection then fills in the addresses. On CPU the
collectives go through gloo. Only process 0 prints.
"""

from __future__ import annotations

import difflib
import importlib.util
import inspect
import os
import re
import sys

from absl import app, flags, logging
from ml_collections import config_dict, config_flags

from mdm_jax import config as config_lib


def define_flags(flag_values=flags.FLAGS, sys_argv=None) -> None:
    """Defines the CLI's flags on `flag_values`.

    A fresh FlagValues plus the argv to parse (config_flags reads `--config.*` overrides from
    `sys_argv`, default sys.argv) lets tests parse a command without touching the global flags.
    """
    config_flags.DEFINE_config_file(
        "config", None, "Config file (configs/*.py), optionally followed by :ARG for get_config(ARG).",
        flag_values=flag_values, lock_config=True, sys_argv=sys_argv)
    flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and outputs.",
                        flag_values=flag_values)
    flags.DEFINE_enum("mode", "train", ["train", "eval", "sample", "experiment", "report"],
                      "What to run (report: redraw an experiment's plots and summary from its JSON).",
                      flag_values=flag_values)
    flags.DEFINE_bool("print_config", False, "Print the resolved config with each field's description "
                      "(mdm_jax/config.py) and exit.", flag_values=flag_values)
    flags.DEFINE_string("coordinator_address", None,
                        "host:port of process 0 for multi-process runs (jax.distributed).",
                        flag_values=flag_values)
    flags.DEFINE_integer("num_processes", None, "Number of processes (multi-process runs).",
                         flag_values=flag_values)
    flags.DEFINE_integer("process_id", None, "This process's index (multi-process runs).",
                         flag_values=flag_values)


define_flags()
FLAGS = flags.FLAGS

_OVERRIDE = re.compile(r"^--?config\.([^=]+)(?:=(.*))?$")


# --------------------------------------------------------------------------- config overrides

def _load_config_file(spec: str):
    """The config that `--config=spec` names, loaded the way config_flags does (path[:arg])."""
    path, _, arg = spec.partition(":")
    module_spec = importlib.util.spec_from_file_location("_mdm_config_check", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if arg and inspect.signature(module.get_config).parameters:
        return module.get_config(arg)
    return module.get_config()


def _fields(node) -> list[str]:
    return sorted(node.keys()) if isinstance(node, (config_dict.ConfigDict, dict)) else []


def unknown_override_message(argv: list[str]) -> str | None:
    """A message naming the first `--config.a.b=...` whose field does not exist, else None.

    config_flags itself fails on such a flag with a KeyError traceback; we check the overrides
    against the loaded config first so the user gets the field, its parent and the valid names.
    """
    spec = None
    for i, a in enumerate(argv):
        if a.startswith(("--config=", "-config=")):
            spec = a.split("=", 1)[1]
        elif a in ("--config", "-config") and i + 1 < len(argv):
            spec = argv[i + 1]
    overrides = [m.group(1) for a in argv if (m := _OVERRIDE.match(a))]
    if spec is None or not overrides or not os.path.exists(spec.partition(":")[0]):
        return None  # absl reports a missing/unreadable --config itself
    config = _load_config_file(spec)
    for dotted in overrides:
        node, parent = config, "config"
        for name in dotted.split("."):
            valid = _fields(node)
            if name not in valid:
                listing = ", ".join(valid) if valid else f"none ({parent} is a value, not a group)"
                close = difflib.get_close_matches(name, valid, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                return (f"unknown config field {name!r} in --config.{dotted}{hint}: {parent} has no "
                        f"field {name!r}. Valid fields of {parent}: {listing}")
            node, parent = node[name], f"{parent}.{name}"
    return None


def _parse_flags(argv: list[str]) -> list[str]:
    """absl's parser, with config-field errors turned into one actionable line instead of a traceback."""
    message = unknown_override_message(argv)
    if message is None:
        try:
            return flags.FLAGS(argv)
        except flags.Error as e:
            message = str(e)
    sys.stderr.write(f"FATAL Flags parsing error: {message}\n"
                     "Pass --helpshort or --helpfull to see help on flags.\n")
    sys.exit(1)


# --------------------------------------------------------------------------- multi-host

_CLUSTER_HINTS = (
    # (environment variable, how to tell that it means more than one process)
    ("JAX_COORDINATOR_ADDRESS", lambda v: bool(v)),
    ("TPU_WORKER_HOSTNAMES", lambda v: "," in v),        # Cloud TPU pod slice: one entry per host
    ("MEGASCALE_COORDINATOR_ADDRESS", lambda v: bool(v)),  # multi-slice TPU
    ("SLURM_NTASKS", lambda v: v.isdigit() and int(v) > 1),
    ("OMPI_COMM_WORLD_SIZE", lambda v: v.isdigit() and int(v) > 1),
)


def multi_process_requested(env=None) -> bool:
    env = os.environ if env is None else env
    return any(name in env and ok(env[name]) for name, ok in _CLUSTER_HINTS)


def init_distributed(coordinator_address=None, num_processes=None, process_id=None, env=None) -> bool:
    """Calls jax.distributed.initialize when this is one process of several; returns whether it did.

    Must run before any JAX computation. Single-process runs (a laptop, one GPU host) skip it.
    """
    import jax

    explicit = coordinator_address is not None or (num_processes or 1) > 1
    if not explicit and not multi_process_requested(env):
        return False
    # Cross-process collectives of CPU devices need an implementation (gloo ships with jaxlib);
    # the setting does not affect accelerator collectives, so it is set unconditionally.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                               process_id=process_id)
    return True


# --------------------------------------------------------------------------- modes

def run(mode: str, config, workdir: str):
    """Dispatches a mode; the heavy modules are imported only for the mode that needs them."""
    if mode == "train":
        import jax

        from mdm_jax import checkpoint, runs, train
        checkpoint.ensure_writable(workdir)  # fail in seconds, before data and compilation
        if jax.process_index() == 0:
            # config.json lets eval/experiments rebuild this workdir's model (e.g. as an evaluator).
            runs.save_workdir_config(config, workdir)
        result = train.train_and_evaluate(config, workdir)
        if config.train.sample_at_end:
            # The quickstart ends by showing what the model generates (first-hitting samples).
            from mdm_jax import generate
            generate.sample(config, workdir)
        return result
    if mode == "eval":
        from mdm_jax import evaluate
        return evaluate.evaluate(config, workdir)
    if mode == "sample":
        from mdm_jax import generate
        return generate.sample(config, workdir)
    if mode == "experiment":
        from mdm_jax import experiments
        return experiments.run(config, workdir)
    if mode == "report":
        from mdm_jax import experiments
        return experiments.report(workdir, config.experiment.name if config is not None else None)
    raise ValueError(f"unknown --mode={mode!r}: use train, eval, sample, experiment or report")


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
    if FLAGS.mode == "report":  # reads JSON, draws plots: no devices, no distributed set-up
        run(FLAGS.mode, FLAGS.config, FLAGS.workdir)
        return
    if not FLAGS["verbosity"].present:
        # Orbax and TFDS log every step at INFO; the progress bar and eval lines are the output.
        logging.set_verbosity(logging.WARNING)
    init_distributed(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)

    import jax

    if jax.process_index() != 0:
        # One voice per job: other processes log warnings and errors only.
        logging.set_verbosity(logging.WARNING)
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the process
    else:
        print(f"mdm-jax {FLAGS.mode}: config {FLAGS['config'].config_filename}, "
              f"workdir {FLAGS.workdir}, {jax.process_count()} process(es), "
              f"{jax.device_count()} {jax.devices()[0].device_kind} device(s)", flush=True)
    run(FLAGS.mode, FLAGS.config, FLAGS.workdir)


def cli():
    app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
    cli()
