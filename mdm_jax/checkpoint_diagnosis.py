"""What went wrong with a checkpoint, in one line: the file and reason of an unreadable step, and
the OS error and path of a failed save, read out of Orbax's and TensorStore's exception chains.

`mdm_jax.checkpoint` raises `CorruptCheckpoint` / `SaveFailed` with these messages.
"""

from __future__ import annotations

import json
import os
import re

_QUOTED_PATH = re.compile(r'"(/[^"]+)"')
_OS_ERROR_CODE = re.compile(r"os_error_code='?(\d+)")
# The JSON files of a step (Orbax metadata and our data-iterator state): a truncated one fails to parse.
_JSON_NAMES = ("_CHECKPOINT_METADATA", "_METADATA", "_sharding", "metadata")


def _chain(exc: BaseException) -> list[BaseException]:
    out = []
    while exc is not None and exc not in out:
        out.append(exc)
        exc = exc.__cause__ or exc.__context__
    return out


def save_failure_message(step: int, exc: BaseException) -> str:
    """'checkpoint save at step N failed: <strerror>: <path>' (and what to do) from an OSError or a
    TensorStore error anywhere in the exception's chain."""
    cause, path = None, None
    for e in _chain(exc):
        if isinstance(e, OSError) and e.strerror:
            cause, path = e.strerror, e.filename
            break
        text = str(e)
        code = _OS_ERROR_CODE.search(text)
        if code:
            cause = os.strerror(int(code.group(1)))
            paths = _QUOTED_PATH.findall(text)
            path = paths[-1] if paths else None
            break
    if cause is None:
        cause = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    where = f": {path}" if path else ""
    return (
        f"checkpoint save at step {step} failed: {cause}{where}\nThe previous checkpoint is "
        "intact; free space (or fix the cause) and rerun the same command to resume from it."
    )


def corrupt_file(step_dir: str, exc: BaseException) -> tuple[str, str]:
    """(the file of a step that could not be read, a one-line reason): the file an Orbax/TensorStore
    error names, else the first of the step's JSON files that does not parse, else the step itself."""
    for e in _chain(exc):
        if isinstance(e, json.JSONDecodeError):
            break
        files = [p for p in _QUOTED_PATH.findall(str(e)) if os.path.isfile(p)]
        if files:
            reason = str(e).split(" [tensorstore_spec")[0].split('": ')[-1]
            return files[-1], reason
    for root, _, names in os.walk(step_dir):
        for name in sorted(names):
            if name in _JSON_NAMES or os.path.basename(root) == "array_metadatas":
                path = os.path.join(root, name)
                try:
                    with open(path) as f:
                        json.load(f)
                except ValueError as e:
                    return path, f"not valid JSON ({e})"
    return step_dir, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
