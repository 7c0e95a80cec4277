"""The workdir as a record that failed runs cannot damage: one run at a time, configs written last.

- `RunLock`: one training run per workdir. `workdir/run.lock` (JSON: host, pid, start time,
  command) is created atomically (O_EXCL) before the run writes anything and removed when it ends.
  A second run fails at once naming the holder. A lock left by a process that died on this host
  (`kill -9`, a crash) is detected (no such pid) and taken over with a warning; a lock from another
  host cannot be checked from here, so the message says how to remove it.
- `record_config`: `config.json` (what sample, eval and evaluators rebuild the model from) is
  written only once validation and the checkpoint restore succeeded, atomically; every start is
  appended to `config_history.jsonl` (time, host, pid, step it started from, full config).
- `check_output_dir`: every place sample / eval write to is proven writable before any work.
Only process 0 of a multi-host job takes the lock and writes (the workdir is shared).
"""

from __future__ import annotations

import datetime
import json
import os
import socket
import sys
import tempfile
import uuid

from absl import logging

from mdm_jax import errors

LOCK_NAME = "run.lock"
HISTORY_NAME = "config_history.jsonl"


class Locked(errors.RunStopped):
    """Another run holds the workdir."""


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class RunLock:
    """`with RunLock(workdir):` ... (see module doc). `enabled=False` (processes other than 0) is a no-op."""

    def __init__(self, workdir, *, enabled: bool = True):
        self.path = os.path.join(os.fspath(workdir), LOCK_NAME)
        self.enabled = enabled
        self._held = False

    def _write_new(self, info: dict) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            json.dump(info, f)
        return True

    def _holder(self) -> dict | None:
        try:
            with open(self.path) as f:
                return json.load(f)
        except FileNotFoundError:
            return None
        except (OSError, ValueError):  # half-written by a process killed between open and write
            return {}

    def acquire(self) -> None:
        if not self.enabled:
            return
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        me = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "start_time": _now(),
            "command": " ".join(sys.argv),
        }
        for _ in range(3):  # a race with another starting run: re-read and retry
            if self._write_new(me):
                self._held = True
                return
            other = self._holder()
            if other is None:
                continue
            stale = other.get("host") == me["host"] and not _pid_alive(int(other.get("pid", -1)))
            if not other or stale:
                # Take over atomically: write our own file and rename it over the stale one.
                tmp = f"{self.path}.{uuid.uuid4().hex}"
                with open(tmp, "w") as f:
                    json.dump(me, f)
                os.replace(tmp, self.path)
                self._held = True
                logging.warning(
                    "took over the stale lock %s of a run that is gone (%s)",
                    self.path,
                    json.dumps(other) if other else "unreadable lock file",
                )
                print(
                    f"note: took over a stale lock left by a run that is gone: {other or 'unreadable'}",
                    file=sys.stderr,
                    flush=True,
                )
                return
            raise Locked(
                f"workdir {os.path.dirname(self.path)} is in use by another run: pid {other.get('pid')} "
                f"on host {other.get('host')}, started {other.get('start_time')} "
                f"({other.get('command', '')!r}). "
                f"Wait for it to finish or use another --workdir; if that run is gone (another host), "
                f"delete {self.path}."
            )
        raise Locked(f"could not take the lock {self.path}: it keeps changing; is another run starting?")

    def release(self) -> None:
        if self._held:
            try:
                os.remove(self.path)
            except FileNotFoundError:
                pass
            self._held = False

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()


def _atomic_write(path: str, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp_")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def record_config(config, workdir, *, start_step: int) -> str:
    """Writes `config.json` and appends to `config_history.jsonl`; call after validation and restore."""
    workdir = os.fspath(workdir)
    path = os.path.join(workdir, "config.json")
    _atomic_write(path, config.to_json(indent=2))
    entry = {
        "time": _now(),
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "command": " ".join(sys.argv),
        "start_step": int(start_step),
        "config": json.loads(config.to_json()),
    }
    with open(os.path.join(workdir, HISTORY_NAME), "a") as f:
        f.write(json.dumps(entry) + "\n")
    return path


def history(workdir) -> list[dict]:
    """The entries of `config_history.jsonl`, oldest first ([] if none)."""
    path = os.path.join(os.fspath(workdir), HISTORY_NAME)
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def check_run_dir(workdir, mode: str) -> None:
    """sample / eval read a trained workdir: it must exist and be a directory."""
    if os.path.isfile(workdir):
        raise errors.ConfigError(
            f"--workdir={workdir} is a file, not a run directory: point --workdir at "
            f"the directory a --mode=train run wrote"
        )
    if not os.path.isdir(workdir):
        raise errors.ConfigError(
            f"--workdir={workdir} does not exist: train first (--mode=train with this "
            f"--workdir) or point --workdir at a trained run before --mode={mode}"
        )


def check_output_dir(path) -> str:
    """Creates `path` and proves it can be written (a probe file), or raises ConfigError naming it."""
    path = os.fspath(path)
    probe = os.path.join(path, f".write_probe.{os.getpid()}.{uuid.uuid4().hex}")
    try:
        os.makedirs(path, exist_ok=True)
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as e:
        raise errors.ConfigError(
            f"output directory {path} cannot be written ({type(e).__name__}: {e.strerror or e}); pass "
            "--output_dir=DIR (a writable directory) to write the outputs elsewhere"
        ) from None
    return path
