"""The command line of `python -m mdm_jax.main`: its flags and their parsing, before any JAX.

- `define_flags(flag_values, sys_argv)`: --config (a configs/*.py file, optionally `file.py:ARG`),
  --workdir, --mode, --output_dir, --print_config and the multi-process flags;
- `parse_flags(argv)`: absl's parser, except that a `--config.<field>=...` override naming a
  field that does not exist stops with one line naming the field, its parent and the valid
  names (`unknown_override_message`) instead of config_flags' KeyError traceback, a missing
  config file is one line too, and eval/sample without --config read the workdir's config.json
  (`config_argv`). Flag errors exit with status 2 (bad input, nothing done; mdm_jax/errors.py).
This module imports no JAX, so flag errors and --help come back at once.
"""

from __future__ import annotations

import difflib
import os
import re
import sys

from absl import flags
from ml_collections import config_dict, config_flags

from mdm_jax import config as config_lib

__all__ = [
    "MODES",
    "define_flags",
    "unknown_override_message",
    "config_argv",
    "overridden_fields",
    "parse_flags",
]

MODES = ("train", "eval", "sample", "experiment", "report")

_OVERRIDE = re.compile(r"^--?config\.([^=]+)(?:=(.*))?$")


def define_flags(flag_values=flags.FLAGS, sys_argv=None) -> None:
    """Defines the CLI's flags on `flag_values`.

    A fresh FlagValues plus the argv to parse (config_flags reads `--config.*` overrides from
    `sys_argv`, default sys.argv) lets tests parse a command without touching the global flags.
    """
    config_flags.DEFINE_config_file(
        "config",
        None,
        "Config file (configs/*.py), optionally followed by :ARG for get_config(ARG).",
        flag_values=flag_values,
        lock_config=True,
        sys_argv=sys_argv,
    )
    flags.DEFINE_string(
        "workdir", None, "Directory for checkpoints, metrics and outputs.", flag_values=flag_values
    )
    flags.DEFINE_enum(
        "mode",
        "train",
        list(MODES),
        "What to run (report: redraw an experiment's plots and summary from its JSON).",
        flag_values=flag_values,
    )
    flags.DEFINE_string(
        "output_dir",
        None,
        "eval/sample: write outputs here instead of into --workdir.",
        flag_values=flag_values,
    )
    flags.DEFINE_bool(
        "print_config",
        False,
        "Print the resolved config with each field's description (mdm_jax/config.py) and exit.",
        flag_values=flag_values,
    )
    flags.DEFINE_string(
        "coordinator_address",
        None,
        "host:port of process 0 for multi-process runs (jax.distributed).",
        flag_values=flag_values,
    )
    flags.DEFINE_integer(
        "num_processes", None, "Number of processes (multi-process runs).", flag_values=flag_values
    )
    flags.DEFINE_integer(
        "process_id", None, "This process's index (multi-process runs).", flag_values=flag_values
    )


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
    path, _, arg = spec.partition(":")
    config = config_lib.load_file(path, arg or None)
    for dotted in overrides:
        node, parent = config, "config"
        for name in dotted.split("."):
            valid = _fields(node)
            if name not in valid:
                listing = ", ".join(valid) if valid else f"none ({parent} is a value, not a group)"
                close = difflib.get_close_matches(name, valid, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                return (
                    f"unknown config field {name!r} in --config.{dotted}{hint}: {parent} has no "
                    f"field {name!r}. Valid fields of {parent}: {listing}"
                )
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
        return argv, (
            f"--config={spec}: no such config file {path!r} (relative to {os.getcwd()}); the "
            "configs are in configs/, e.g. --config=configs/quickstart.py"
        )
    return argv, None


def overridden_fields(argv: list[str]) -> set[str]:
    """The dotted fields set on the command line with --config.<field>=..."""
    return {m.group(1) for a in argv if (m := _OVERRIDE.match(a))}


def parse_flags(argv: list[str]) -> list[str]:
    """absl's parser, with config-field errors turned into one actionable line instead of a traceback."""
    argv, message = config_argv(argv)
    message = message or unknown_override_message(argv)
    if message is None:
        try:
            return flags.FLAGS(argv)
        except flags.Error as e:
            message = str(e)
    sys.stderr.write(
        f"FATAL Flags parsing error: {message}\nPass --helpshort or --helpfull to see help on flags.\n"
    )
    sys.exit(2)  # errors.EXIT_CONFIG: bad input, nothing was done
