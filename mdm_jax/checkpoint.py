"""Checkpointing with Orbax: the full train state plus the data-stream position, atomically.

One checkpoint = `workdir/checkpoints/<step>/` with two items:
  state  the TrainState pytree (params, optimizer state, EMA, step, PRNG key), saved sharded by
         every process (`StandardSave`) and restored straight into the requested shardings;
  data   the data iterator's JSON state (`it.get_state()`), so a resumed run reads the same
         batches as an uninterrupted one.

Why a failed save cannot replace the last good checkpoint: Orbax writes each step into
`<step>.orbax-checkpoint-tmp` and renames it to `<step>` only after every item (and, multi-host,
every process) has finished; `latest_step()` and `restore()` only see renamed steps, and leftover
tmp directories are removed when the next manager starts (`cleanup_tmp_directories`).
`tests/test_checkpoint.py` checks this with a save that fails half-way.

What can go wrong, and what the user sees (one message naming the step and the file):
- a save that fails (disk full, quota, file too large) raises `SaveFailed`, first line
  "checkpoint save at step N failed: <OS error>: <file>"; the previous checkpoint is untouched;
- a state with a NaN or an infinity is never saved (`guards.Diverged`);
- a corrupt step (a truncated data file or `_METADATA`, bad data-iterator JSON) raises
  `CorruptCheckpoint`, or with `restore(fallback=True)` is reported as a warning and the next older
  complete step is restored instead (training then moves the bad step aside, see `set_aside`).
"""

from __future__ import annotations

import contextlib
import json
import logging as py_logging
import os
import shutil
import uuid
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from mdm_jax import checkpoint_diagnosis, errors, guards
from mdm_jax.models import scan_layout

__all__ = [
    "Checkpointer",
    "CheckpointMismatch",
    "CorruptCheckpoint",
    "SaveFailed",
    "ensure_writable",
    "shape_mismatches",
]


class CheckpointMismatch(errors.ConfigError):
    """The checkpoint was written by another config (shapes differ)."""


class CorruptCheckpoint(errors.RunStopped):
    """A checkpoint step that cannot be read (or holds non-finite values)."""

    def __init__(self, message: str, step: int, path: str):
        super().__init__(message)
        self.step, self.path = step, path


class SaveFailed(errors.RunStopped):
    """A checkpoint save failed; the previous checkpoint is intact."""


_MISMATCH_HELP = (
    "this workdir was trained with a different config: use a new --workdir or the matching config"
)


def ensure_writable(workdir) -> epath.Path:
    """Creates `workdir` and proves it is writable (a probe file), or raises a clear error.

    Checked before any compilation or training so that a typo'd or read-only --workdir fails in
    seconds rather than at the first checkpoint. Works for local paths and gs:// (epath).
    """
    path = epath.Path(workdir)
    # A per-process probe name: on a shared filesystem all hosts probe the same directory at once.
    probe = path / f".write_probe.{jax.process_index()}.{uuid.uuid4().hex}"
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe.write_text("ok")
        probe.unlink()
    except (OSError, ValueError) as e:  # PermissionError, NotADirectoryError, read-only FS, ...
        raise PermissionError(
            f"workdir {str(path)!r} cannot be written ({type(e).__name__}: {e}); "
            "pass a writable --workdir (a new or existing directory you can write to)"
        ) from e
    return path


def _path_str(path) -> str:
    parts = []
    for k in path:
        for attr in ("key", "name", "idx"):
            if hasattr(k, attr):
                parts.append(str(getattr(k, attr)))
                break
        else:
            parts.append(str(k))
    return "/".join(parts)


def _stored_shape(leaf) -> tuple:
    """Shape of a leaf as Orbax stores it: typed PRNG keys are stored as their raw key data."""
    if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
        return tuple(jax.eval_shape(jax.random.key_data, leaf).shape)
    return tuple(leaf.shape)


def shape_mismatches(stored_tree, abstract_state) -> list[str]:
    """Human-readable differences between a checkpoint's array metadata and an abstract state."""
    is_leaf = lambda x: hasattr(x, "shape")  # noqa: E731 - Orbax ArrayMetadata / ShapeDtypeStruct
    stored = {
        _path_str(p): tuple(v.shape)
        for p, v in jax.tree_util.tree_flatten_with_path(stored_tree, is_leaf=is_leaf)[0]
    }
    wanted = {
        _path_str(p): _stored_shape(v)
        for p, v in jax.tree_util.tree_flatten_with_path(abstract_state, is_leaf=is_leaf)[0]
    }
    out = []
    for name in sorted(stored.keys() | wanted.keys()):
        if name not in stored:
            out.append(f"{name}: missing from the checkpoint (config wants shape {wanted[name]})")
        elif name not in wanted:
            out.append(f"{name}: in the checkpoint (shape {stored[name]}) but not in this config")
        elif stored[name] != wanted[name]:
            out.append(f"{name}: checkpoint shape {stored[name]} != config shape {wanted[name]}")
    return out


@contextlib.contextmanager
def _quiet_read_only_warning():
    """Orbax warns 'Given directory is read only' on every read-only manager: nothing is wrong."""

    class Drop(py_logging.Filter):
        def filter(self, record):
            return not str(record.msg).startswith("Given directory is read only")

    drop, logger = Drop(), logging.get_absl_logger()
    logger.addFilter(drop)
    try:
        yield
    finally:
        logger.removeFilter(drop)


class Checkpointer:
    """Keep-N, optionally asynchronous checkpoints of (train state, data state) in a workdir.

    `save` returns as soon as the arrays are copied off the devices when `async_save`; the
    write continues in the background and is finalised atomically (see module docstring).
    Every process must call `save`/`restore` (Orbax synchronises them multi-host).
    """

    def __init__(self, workdir, *, keep: int = 3, async_save: bool = True, read_only: bool = False):
        # read_only: for eval/sample/experiments, which must work on a checkpoint they cannot write
        # (a shared or archived run); nothing is created, cleaned up or saved.
        self.workdir = epath.Path(workdir) if read_only else ensure_writable(workdir)
        # Orbax wants absolute paths; cloud paths (gs://) are absolute already.
        path = self.workdir / "checkpoints"
        self.directory = path if "://" in str(path) else epath.Path(os.path.abspath(path))
        if read_only:
            # save_interval_steps=0: Orbax would otherwise warn that it sets it for read-only use.
            options = ocp.CheckpointManagerOptions(
                read_only=True,
                create=False,
                max_to_keep=None,
                save_interval_steps=0,
                enable_async_checkpointing=False,
            )
        else:
            options = ocp.CheckpointManagerOptions(
                max_to_keep=keep,
                create=True,
                enable_async_checkpointing=async_save,
                cleanup_tmp_directories=True,
            )
        # Handlers are registered up front so that a fresh manager can read a step's metadata
        # (the shape check in `restore`) before any save or restore call.
        with _quiet_read_only_warning():
            self._manager = ocp.CheckpointManager(
                self.directory,
                options=options,
                item_handlers={"state": ocp.StandardCheckpointHandler(), "data": ocp.JsonCheckpointHandler()},
            )
        self.read_only = read_only
        self._in_flight: int | None = None  # step of the asynchronous save not yet finished
        self.skipped: list[int] = []  # steps the last restore fell back from (unreadable)
        self.restored_step: int | None = None  # the step the last restore read

    def latest_step(self) -> int | None:
        """The newest *complete* checkpoint's step (tmp directories of unfinished saves never count)."""
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def reached_preemption(self, step: int) -> bool:
        """True when the job got a preemption notice (synchronised across hosts): save now."""
        return self._manager.reached_preemption(step)

    def save(self, step: int, state: Any, data_state: dict, force: bool = False) -> bool:
        """Saves `state` and the JSON-serialisable `data_state` as step `step`.

        Returns False (and writes nothing) if `step` is already saved, e.g. the final step of a run
        that is restarted after it finished. `force` is passed to Orbax (save even if its policy
        would skip). Raises `SaveFailed` for this save or a previous asynchronous one, and
        `guards.Diverged` (nothing written) if `state` holds a NaN or an infinity.
        """
        step = int(step)
        self.wait()  # a previous asynchronous save's failure is reported under its own step
        if step in self._manager.all_steps():
            return False
        try:  # fail before anything is written, not half-way through an asynchronous save
            json.dumps(data_state)
        except TypeError as e:
            raise TypeError(
                f"checkpoint step {step}: the data state must be JSON-serialisable ({e}); "
                f"the data iterator's get_state() returned {data_state!r}"
            ) from e
        bad = guards.tree_nonfinite(state)
        if bad:
            raise guards.Diverged(
                f"refusing to save checkpoint step {step}: non-finite values in "
                f"{guards.describe_subtrees(bad)}; the last good checkpoint is step {self.latest_step()}"
            )
        try:
            saved = self._manager.save(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(dict(data_state))
                ),
                force=force,
            )
        except Exception as e:  # noqa: BLE001 - any failure of the write is reported the same way
            raise SaveFailed(checkpoint_diagnosis.save_failure_message(step, e)) from e
        self._in_flight = step if saved else None
        return saved

    def restore(
        self,
        abstract_state: Any,
        step: int | None = None,
        *,
        fallback: bool = False,
        check_finite: bool = False,
    ) -> tuple[Any, dict]:
        """Restores (state, data_state); `abstract_state` leaves are ShapeDtypeStructs with shardings.

        Arrays are read directly into `abstract_state`'s shardings (each process reads only its
        shards). Raises FileNotFoundError if there is no checkpoint, `CheckpointMismatch` naming
        every parameter path whose shape differs when the checkpoint came from another config,
        `CorruptCheckpoint` naming the step and file that cannot be read (with `check_finite`, also
        a step holding NaN or infinity). With `fallback` (and no explicit `step`), a bad step is
        reported as a warning and the next older one is tried; `self.skipped` lists the bad steps.
        """
        self.wait()  # a save in flight must be finished before its step can be read
        self.skipped = []
        if step is not None and int(step) not in self._manager.all_steps():
            raise FileNotFoundError(
                f"no checkpoint at step {step} in {self.directory} (available steps: "
                f"{self.all_steps() or 'none'}); train first with --mode=train and this --workdir"
            )
        candidates = [int(step)] if step is not None else sorted(self._manager.all_steps(), reverse=True)
        if not candidates:
            raise FileNotFoundError(
                f"no checkpoint in {self.directory} (available steps: none); train first with "
                "--mode=train and this --workdir"
            )
        for i, s in enumerate(candidates):
            try:
                restored = self._restore_step(s, abstract_state, check_finite)
                self.restored_step = s
                return restored
            except CorruptCheckpoint as e:
                older = candidates[i + 1] if i + 1 < len(candidates) else None
                if not fallback or older is None:
                    hint = (
                        f"; delete {self.directory / str(s)} to use step {older}"
                        if older is not None
                        else "; no older checkpoint to fall back to"
                    )
                    raise CorruptCheckpoint(f"{e}{hint}", e.step, e.path) from e.__cause__
                logging.warning("%s; falling back to step %d", e, older)
                print(f"warning: {e}; falling back to step {older}", flush=True)
                self.skipped.append(s)
        raise AssertionError("unreachable")

    def _restore_step(self, step: int, abstract_state, check_finite: bool):
        step_dir = str(self.directory / str(step))
        try:
            stored = self._manager.item_metadata(step)["state"]
            stored = getattr(stored, "tree", stored)
            # A checkpoint of the other model.scan_layers layout is read in its own layout and converted.
            abstract_state, to_wanted_layout = scan_layout.restore_plan(stored, abstract_state)
            problems = shape_mismatches(stored, abstract_state)
        except (ValueError, OSError, KeyError, TypeError) as e:
            path, reason = checkpoint_diagnosis.corrupt_file(step_dir, e)
            raise CorruptCheckpoint(
                f"checkpoint step {step} is unreadable: {path}: {reason}", step, path
            ) from e
        if problems:
            shown = "\n  ".join(problems[:20])
            more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
            raise CheckpointMismatch(
                f"checkpoint {step_dir} does not match the config; mismatched "
                f"parameter paths:\n  {shown}{more}\n{_MISMATCH_HELP}"
            )
        try:
            restored = self._manager.restore(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()
                ),
            )
        except (ValueError, OSError, KeyError, TypeError) as e:
            path, reason = checkpoint_diagnosis.corrupt_file(step_dir, e)
            raise CorruptCheckpoint(
                f"checkpoint step {step} is unreadable: {path}: {reason}", step, path
            ) from e
        if check_finite:
            bad = guards.tree_nonfinite(restored.state)
            if bad:
                raise CorruptCheckpoint(
                    f"checkpoint step {step} holds non-finite values (a diverged run) in "
                    f"{guards.describe_subtrees(bad)}",
                    step,
                    step_dir,
                )
        return to_wanted_layout(restored.state), dict(restored.data or {})

    def set_aside(self, step: int) -> str:
        """Moves an unreadable step out of `checkpoints/` into `checkpoints_unreadable/` (kept for a
        post-mortem), so that training can save that step again; returns the new path."""
        src = self.directory / str(step)
        dst_dir = self.directory.parent / "checkpoints_unreadable"
        dst_dir.mkdir(parents=True, exist_ok=True)
        dst = dst_dir / f"{step}.{uuid.uuid4().hex[:8]}"
        shutil.move(str(src), str(dst))
        self._manager.reload()
        return str(dst)

    def wait(self) -> None:
        """Blocks until the in-flight asynchronous save (if any) is finalised on disk; raises
        `SaveFailed` if it failed."""
        try:
            self._manager.wait_until_finished()
        except Exception as e:  # noqa: BLE001 - any failure of the write is reported the same way
            step, self._in_flight = self._in_flight, None
            raise SaveFailed(
                checkpoint_diagnosis.save_failure_message(step if step is not None else -1, e)
            ) from e
        self._in_flight = None

    def close(self) -> None:
        try:
            self.wait()
        finally:
            self._manager.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def abstract_like(tree):
    """A tree of ShapeDtypeStructs (with shardings) mirroring concrete arrays: restore targets."""
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)), tree
    )
