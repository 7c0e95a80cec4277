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
"""

from __future__ import annotations

import json
import os
import uuid
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath

from mdm_jax.models import scan_layout

__all__ = ["Checkpointer", "ensure_writable", "shape_mismatches"]

_MISMATCH_HELP = ("this workdir was trained with a different config: use a new --workdir or the "
                  "matching config")


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
            "pass a writable --workdir (a new or existing directory you can write to)") from e
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
    stored = {_path_str(p): tuple(v.shape)
              for p, v in jax.tree_util.tree_flatten_with_path(stored_tree, is_leaf=is_leaf)[0]}
    wanted = {_path_str(p): _stored_shape(v)
              for p, v in jax.tree_util.tree_flatten_with_path(abstract_state, is_leaf=is_leaf)[0]}
    out = []
    for name in sorted(stored.keys() | wanted.keys()):
        if name not in stored:
            out.append(f"{name}: missing from the checkpoint (config wants shape {wanted[name]})")
        elif name not in wanted:
            out.append(f"{name}: in the checkpoint (shape {stored[name]}) but not in this config")
        elif stored[name] != wanted[name]:
            out.append(f"{name}: checkpoint shape {stored[name]} != config shape {wanted[name]}")
    return out


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
            options = ocp.CheckpointManagerOptions(read_only=True, create=False, max_to_keep=None,
                                                   enable_async_checkpointing=False)
        else:
            options = ocp.CheckpointManagerOptions(
                max_to_keep=keep, create=True, enable_async_checkpointing=async_save,
                cleanup_tmp_directories=True)
        # Handlers are registered up front so that a fresh manager can read a step's metadata
        # (the shape check in `restore`) before any save or restore call.
        self._manager = ocp.CheckpointManager(
            self.directory, options=options,
            item_handlers={"state": ocp.StandardCheckpointHandler(),
                           "data": ocp.JsonCheckpointHandler()})

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
        would skip); errors of a previous asynchronous save are raised here.
        """
        step = int(step)
        if step in self._manager.all_steps():
            return False
        try:  # fail before anything is written, not half-way through an asynchronous save
            json.dumps(data_state)
        except TypeError as e:
            raise TypeError(f"checkpoint step {step}: the data state must be JSON-serialisable ({e}); "
                            f"the data iterator's get_state() returned {data_state!r}") from e
        return self._manager.save(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                    data=ocp.args.JsonSave(dict(data_state))),
            force=force)

    def restore(self, abstract_state: Any, step: int | None = None) -> tuple[Any, dict]:
        """Restores (state, data_state); `abstract_state` leaves are ShapeDtypeStructs with shardings.

        Arrays are read directly into `abstract_state`'s shardings (each process reads only its
        shards). Raises FileNotFoundError if there is no checkpoint, ValueError naming every
        parameter path whose shape differs when the checkpoint came from another config.
        """
        self.wait()  # a save in flight must be finished before its step can be read
        step = self.latest_step() if step is None else int(step)
        if step is None or step not in self._manager.all_steps():
            raise FileNotFoundError(
                f"no checkpoint {'' if step is None else f'at step {step} '}in {self.directory} "
                f"(available steps: {self.all_steps() or 'none'}); train first with --mode=train "
                "and this --workdir")
        stored = self._manager.item_metadata(step)["state"]
        stored = getattr(stored, "tree", stored)
        # A checkpoint of the other model.scan_layers layout is read in its own layout and converted.
        abstract_state, to_wanted_layout = scan_layout.restore_plan(stored, abstract_state)
        problems = shape_mismatches(stored, abstract_state)
        if problems:
            shown = "\n  ".join(problems[:20])
            more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
            raise ValueError(
                f"checkpoint {self.directory / str(step)} does not match the config; mismatched "
                f"parameter paths:\n  {shown}{more}\n{_MISMATCH_HELP}")
        restored = self._manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state),
                                          data=ocp.args.JsonRestore()))
        return to_wanted_layout(restored.state), dict(restored.data or {})

    def wait(self) -> None:
        """Blocks until the in-flight asynchronous save (if any) is finalised on disk."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def abstract_like(tree):
    """A tree of ShapeDtypeStructs (with shardings) mirroring concrete arrays: restore targets."""
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)), tree)

