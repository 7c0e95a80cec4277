"""The two declaration types of the config schema: `Field` and `Group`.

A `Field` is a default (whose type is the field's type, enforced by ml_collections on every
override) and a one-line description; a `Group` is a named set of fields (`config.<group>.*`).
The tables built from them are `mdm_jax.config.SCHEMA` and `mdm_jax.config_experiments.EXPERIMENT_FIELDS`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any


@dataclasses.dataclass(frozen=True)
class Field:
    """One config field: its default (whose type is the field's type) and a one-line description."""

    default: Any
    doc: str

    @property
    def type_name(self) -> str:
        if isinstance(self.default, tuple):
            inner = sorted({type(x).__name__ for x in _flat(self.default)})
            return f"tuple[{'|'.join(inner)}]" if inner else "tuple"
        return type(self.default).__name__


@dataclasses.dataclass(frozen=True)
class Group:
    """A group of fields (`config.<group>.*`) with a one-line description."""

    doc: str
    fields: Mapping[str, Field]


def _flat(t):
    for x in t:
        yield from (_flat(x) if isinstance(x, tuple) else (x,))
