"""The errors a user acts on, and the exit status of each: the CLI prints their message (no traceback).

Exit statuses of `python -m mdm_jax.main` (scripts and schedulers can branch on them):
  0   done
  1   an unexpected failure (a traceback follows), or a run stopped by `RunStopped` with no more
      specific status (e.g. a checkpoint save that failed)
  2   bad input, found before any work (`ConfigError`): nothing was written
  3   training diverged (`train.nonfinite`): nothing non-finite was saved; the message names the step,
      what was non-finite and the last good checkpoint
  75  preempted (SIGTERM or SIGINT): the current step finished and a checkpoint was saved; rerun the
      same command to resume (75 is EX_TEMPFAIL of sysexits.h: "temporary failure, retry")
"""

from __future__ import annotations

EXIT_FAILURE = 1
EXIT_CONFIG = 2
EXIT_DIVERGED = 3
EXIT_PREEMPTED = 75


class ConfigError(ValueError):
    """Bad input (a config field, a flag, a path), raised before any expensive work.

    The message names the field (or file) and the fix. A ValueError, so code that checks values the
    usual way keeps working.
    """

    exit_code = EXIT_CONFIG


class RunStopped(RuntimeError):
    """A run that stopped on purpose, with a message for the user and an exit status."""

    exit_code = EXIT_FAILURE

    def __init__(self, message: str, exit_code: int | None = None):
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code
