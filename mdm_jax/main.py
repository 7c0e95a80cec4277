"""mdm-jax: train, evaluate and sample masked diffusion language models.

    python -m mdm_jax.main --mode=MODE --config=configs/X.py --workdir=DIR [--config.<field>=<value> ...]

Modes:
  train       train (or resume) the config's model in DIR: checkpoints, metrics.jsonl, TensorBoard
              events, config.json; one run per DIR at a time (DIR/run.lock)
  eval        validation NELBO (MDM) or NLL (ARM) of DIR's latest checkpoint -> DIR/eval/
  sample      draw samples with the configured sampler -> DIR/samples/*.jsonl
  experiment  one of the paper's experiments (configs/experiments/*.py) -> DIR
For eval and sample, --config may be left out: DIR/config.json (what the run was trained with) is
used, and with a --config the model, objective and data fields still come from DIR/config.json;
`--config.<field>=<value>` overrides win in both cases. `--output_dir=OUT` writes their outputs
to OUT instead of DIR (a read-only or archived run).

Config fields: every field, its default and its meaning are in mdm_jax/config.py (the schema);
configs/*.py override them. Any field can be set with `--config.<field>=<value>` (e.g.
`--config.train.lr=1e-3`); an unknown field stops before anything runs, naming the field and
listing the valid ones. Every other bad value stops before any work too, naming the field.

Exit status: 0 done, 1 failure, 2 bad input (nothing was done), 3 training diverged (non-finite
loss or gradients, see train.nonfinite; nothing non-finite saved), 75 preempted by SIGTERM or
SIGINT (the current step was saved: rerun the same command to resume). See mdm_jax/errors.py.

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
    flags.DEFINE_enum("mode", "train", ["train", "eval", "sample", "experiment"], "What to run.",
                      flag_values=flag_values)
    flags.DEFINE_string("output_dir", None, "eval/sample: write outputs here instead of into --workdir.",
                        flag_values=flag_values)
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


def _flag_value(argv: list[str], name: str) -> str | None:
    value = None
    for i, a in enumerate(argv):
        if a.startswith((f"--{name}=", f"-{name}=")):
            value = a.split("=", 1)[1]
        elif a in (f"--{name}", f"-{name}") and i + 1 < len(argv):
            value = argv[i + 1]
    return value


def config_argv(argv: list[str]) -> tuple[list[str], str | None]:
    """(argv with `--config` filled in from the workdir for eval/sample, a one-line error or None).

    Without `--config`, eval and sample read `--workdir`'s config.json (mdm_jax/saved_config.py).
    A `--config` file that does not exist is reported in one line, not as a traceback.
    """
    spec = _flag_value(argv, "config")
    if spec is None:
        workdir, mode = _flag_value(argv, "workdir"), _flag_value(argv, "mode")
        if mode in ("eval", "sample") and workdir and os.path.isfile(os.path.join(workdir, "config.json")):
            saved = os.path.join(os.path.dirname(os.path.abspath(__file__)), "saved_config.py")
            # First: the --config.<field> overrides exist only once the config file is parsed.
            return [argv[0], f"--config={saved}:{workdir}", *argv[1:]], None
        return argv, None
    path = spec.partition(":")[0]
    if not os.path.isfile(path):
        return argv, (f"--config={spec}: no such config file {path!r} (relative to {os.getcwd()}); the "
                      "configs are in configs/, e.g. --config=configs/quickstart.py")
    return argv, None


def overridden_fields(argv: list[str]) -> set[str]:
    """The dotted fields set on the command line with --config.<field>=..."""
    return {m.group(1) for a in argv if (m := _OVERRIDE.match(a))}


def _parse_flags(argv: list[str]) -> list[str]:
    """absl's parser, with config-field errors turned into one actionable line instead of a traceback."""
    argv, message = config_argv(argv)
    message = message or unknown_override_message(argv)
    if message is None:
        try:
            return flags.FLAGS(argv)
        except flags.Error as e:
            message = str(e)
    sys.stderr.write(f"FATAL Flags parsing error: {message}\n"
                     "Pass --helpshort or --helpfull to see help on flags.\n")
    sys.exit(2)  # errors.EXIT_CONFIG: bad input, nothing was done


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

def run(mode: str, config, workdir: str, output_dir: str | None = None, overridden=()):
    """Checks everything (`mdm_jax.preflight`), then dispatches a mode; the heavy modules are
    imported only for the mode that needs them."""
    import jax

    from mdm_jax import preflight, runs

    if mode in ("eval", "sample"):
        config, changed = runs.with_saved_run(config, workdir, overridden)
        if changed and jax.process_index() == 0:
            print(f"note: {len(changed)} model/objective/data field(s) taken from {workdir}/config.json, "
                  f"the config the run was trained with: {', '.join(changed[:6])}"
                  + (", ..." if len(changed) > 6 else ""), flush=True)
    preflight.check(config, mode, workdir, output_dir)
    if mode == "train":
        from mdm_jax import train
        result = train.train_and_evaluate(config, workdir)  # writes config.json once restored
        if config.train.get("sample_at_end", False):
            # The quickstart ends by showing what the model generates (first-hitting samples).
            from mdm_jax import generate
            generate.sample(config, workdir)
        return result
    if mode == "eval":
        from mdm_jax import evaluate
        return evaluate.evaluate(config, workdir, output_dir=output_dir)
    if mode == "sample":
        from mdm_jax import generate
        return generate.sample(config, workdir, output_dir=output_dir)
    from mdm_jax import experiments
    return experiments.run(config, workdir)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if FLAGS.config is None:
        raise app.UsageError("--config is required, e.g. --config=configs/quickstart.py (eval and sample "
                             "read it from --workdir's config.json when there is one)")
    if not FLAGS.workdir:
        raise app.UsageError("--workdir is required, e.g. --workdir=workdirs/quickstart")
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
    from mdm_jax import errors

    try:
        run(FLAGS.mode, FLAGS.config, FLAGS.workdir, FLAGS.output_dir, overridden_fields(sys.argv))
    except (errors.ConfigError, errors.RunStopped) as e:
        # The message names the field (or step, file) and the fix: no traceback to scroll through.
        sys.stderr.write(f"error: {e}\n" if isinstance(e, errors.ConfigError) else f"{e}\n")
        sys.exit(e.exit_code)


def cli():
    app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
    cli()
