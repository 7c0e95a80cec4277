"""Model functions as arguments of the samplers' jitted loops.

A sampler's loop is jitted with the model function as a static argument. A plain closure over
params would then carry the params into the executable as constants: a recompile whenever the
params change (sampling during training), a large HLO, and no sharding for them. A function
given as `jax.tree_util.Partial(f, *arrays)` (what `mdm_jax.models.adapters` returns) is split:
its arrays travel as ordinary traced arguments, with whatever sharding they have, and only `f`
(hashable, e.g. a frozen dataclass holding the Flax module) keys the compile cache.
"""

from __future__ import annotations

import jax

__all__ = ["split", "join"]


def split(fn):
    """(static part, traced leaves): a Partial's tree structure and bound arrays, else (fn, None)."""
    if isinstance(fn, jax.tree_util.Partial):
        leaves, treedef = jax.tree_util.tree_flatten(fn)
        return treedef, leaves
    return fn, None


def join(static, leaves):
    """Inverse of `split`, inside the jitted function."""
    return static if leaves is None else jax.tree_util.tree_unflatten(static, leaves)
