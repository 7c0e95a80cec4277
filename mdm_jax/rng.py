"""Explicit PRNG streams.

Every random draw in mdm-jax uses a key derived from the one root key (from `config.seed`)
by folding in a *purpose* and then integers such as the step, so that:
- no key is ever reused for two purposes (a purpose is a stable 31-bit hash of its name);
- a draw depends only on (seed, purpose, step, ...), never on the number of devices or on
  how many draws happened before it (resumed runs replay exactly).

Streams used by the package (purpose -> folded integers):
  "params"            -> ()                       parameter initialisation
  "train"             -> (step,)                  t / n draws, masks, dropout of a train step
  "eval"              -> (eval_index, batch_index) Monte Carlo draws of the validation NELBO
  "sample"            -> (batch_index,)           one sampler call
  "data"              -> (epoch,)                 data shuffling (numpy seed derived the same way)
Inside a function, sub-purposes are split further with `fold(key, "masks")` etc.
"""

from __future__ import annotations

import zlib

import jax
import numpy as np


def purpose_id(purpose: str) -> int:
    """A stable (process- and run-independent) 31-bit id for a purpose name."""
    return zlib.crc32(purpose.encode("utf-8")) & 0x7FFFFFFF


def root_key(seed: int) -> jax.Array:
    return jax.random.key(int(seed))


def fold(key: jax.Array, purpose: str, *indices) -> jax.Array:
    """key -> key folded with the purpose and then each index (ints or traced int32 scalars)."""
    key = jax.random.fold_in(key, purpose_id(purpose))
    for i in indices:
        key = jax.random.fold_in(key, i)
    return key


def numpy_seed(seed: int, purpose: str, *indices: int) -> np.random.SeedSequence:
    """The host-side counterpart for numpy generators (data shuffling)."""
    return np.random.SeedSequence([int(seed) & 0xFFFFFFFF, purpose_id(purpose), *map(int, indices)])
