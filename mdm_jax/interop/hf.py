"""Reading a Hugging Face model directory: `config.json` and safetensors weights, checked first.

A directory holds `config.json` and either `model.safetensors` or a sharded set
(`model.safetensors.index.json`, whose `weight_map` names the `model-0000i-of-0000n.safetensors`
file of every tensor). Tensors are read with the `safetensors` NumPy API, so no torch is needed.

Everything that the file headers show (the model type, the tensor names, their shapes) is checked
before any tensor is read: a wrong directory fails in milliseconds, with an error naming the file
or tensor and what was expected, never after minutes of reading gigabytes.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping

import numpy as np
from safetensors import safe_open

__all__ = ["Checkpoint", "open_dir", "check_tensors"]

WEIGHTS = "model.safetensors"
INDEX = "model.safetensors.index.json"
SHOWN = 5  # names listed in an error before "... and N more"


class Checkpoint:
    """A checked Hugging Face directory: its config and a lazy view of its tensors.

    `shapes` maps every stored tensor name to its shape (read from the headers only); `read(name)`
    returns one tensor as a NumPy array.
    """

    def __init__(self, directory: str, config: dict, files: dict[str, str]):
        self.directory = directory
        self.config = config
        self._files = files  # tensor name -> safetensors file holding it
        self.shapes: dict[str, tuple] = {}
        self.dtypes: dict[str, str] = {}
        for path in sorted(set(files.values())):
            with safe_open(path, framework="numpy") as f:
                for name in f.keys():
                    if files.get(name) == path:
                        s = f.get_slice(name)
                        self.shapes[name] = tuple(s.get_shape())
                        self.dtypes[name] = s.get_dtype()

    def read(self, name: str) -> np.ndarray:
        with safe_open(self._files[name], framework="numpy") as f:
            try:
                return f.get_tensor(name)
            except (TypeError, AttributeError, ValueError) as e:
                raise ValueError(
                    f"{self._files[name]}: tensor {name!r} is stored as {self.dtypes[name]}, which the "
                    f"safetensors NumPy reader cannot return ({e}); save the checkpoint in float32"
                ) from e


def _need(path: str, what: str, directory: str, hint: str) -> str:
    if not os.path.isfile(path):
        present = sorted(os.listdir(directory)) if os.path.isdir(directory) else []
        raise FileNotFoundError(
            f"{directory!r} is not a complete checkpoint directory: {what} {os.path.basename(path)!r} is "
            f"missing (the directory holds: {present or 'nothing'}). {hint}"
        )
    return path


def open_dir(path: str, *, model_type: str, hint: str) -> Checkpoint:
    """Opens and checks a Hugging Face directory whose config.json has `model_type`.

    `hint` (how to get a correct directory) ends every error message.
    """
    directory = os.path.abspath(os.path.expanduser(os.fspath(path)))
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"checkpoint directory {directory!r} does not exist. {hint}")
    config_path = _need(os.path.join(directory, "config.json"), "the configuration", directory, hint)
    try:
        with open(config_path) as f:
            config = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{config_path} is not valid JSON ({e}). {hint}") from e
    found = config.get("model_type")
    if found != model_type:
        raise ValueError(
            f"{config_path} describes a model of type {found!r} (architectures "
            f"{config.get('architectures')}), but a {model_type!r} checkpoint is needed here. {hint}"
        )

    single, index = os.path.join(directory, WEIGHTS), os.path.join(directory, INDEX)
    if os.path.isfile(index) and not os.path.isfile(single):
        with open(index) as f:
            weight_map = json.load(f).get("weight_map", {})
        files = {name: os.path.join(directory, fname) for name, fname in weight_map.items()}
        for p in sorted(set(files.values())):
            _need(p, f"a weights shard named in {INDEX}", directory, hint)
    else:
        _need(single, f"the weights file (or {INDEX} with its shards)", directory, hint)
        with safe_open(single, framework="numpy") as f:
            files = {name: single for name in f.keys()}
    return Checkpoint(directory, config, files)


def _listing(names: Iterable[str]) -> str:
    names = sorted(names)
    more = f" ... and {len(names) - SHOWN} more" if len(names) > SHOWN else ""
    return ", ".join(names[:SHOWN]) + more


def check_tensors(
    ckpt: Checkpoint, expected: Mapping[str, tuple], *, stored_names: Mapping[str, str], what: str
) -> None:
    """Raises unless the checkpoint holds exactly the `expected` tensors with their shapes.

    `expected` maps canonical names to the shapes the config implies; `stored_names` maps each
    canonical name to the name found in the file (after prefix handling), and holds only the
    tensors that count (buffers that are not parameters are already left out).
    """
    missing = [n for n in expected if n not in stored_names]
    extra = [n for n in stored_names if n not in expected]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} tensor(s): {_listing(missing)}")
        if extra:
            parts.append(f"unexpected {len(extra)} tensor(s): {_listing(extra)}")
        raise ValueError(
            f"{ckpt.directory}: the weights do not match a {what} with this config.json ("
            + "; ".join(parts)
            + f"). Expected tensors: {_listing(expected)}. Is config.json the one "
            "saved with these weights?"
        )
    for name, shape in expected.items():
        stored = ckpt.shapes[stored_names[name]]
        if tuple(stored) != tuple(shape):
            raise ValueError(
                f"{ckpt.directory}: tensor {stored_names[name]!r} has shape {tuple(stored)}, but config.json "
                f"implies {tuple(shape)} for a {what}; the weights and config.json disagree"
            )
