"""The two parameter layouts of the transformer's blocks, and conversion between them.

Unscanned (`model.scan_layers=False`): one subtree per block, `block_0 .. block_{n-1}`.
Scanned (`model.scan_layers=True`): one subtree `blocks` whose leaves are the blocks' leaves stacked
on a new leading axis (logical name "layers", unsharded; see mdm_jax.sharding.LOGICAL_RULES).

The conversion is exact (a stack / an index) and applies to any pytree that holds block subtrees
anywhere: params, EMA params, optimizer moments (optax states mirror the params), a whole
TrainState, or abstract trees of `jax.ShapeDtypeStruct` (their NamedShardings gain or lose the
leading unsharded axis). `Checkpointer.restore` uses `restore_plan` so that a checkpoint written
in one layout restores into a run configured with the other: a user can switch `scan_layers` when
resuming, sampling or evaluating.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P

from mdm_jax.models.transformer import SCANNED_BLOCKS, block_name

__all__ = [
    "SCANNED",
    "UNSCANNED",
    "layout_of",
    "convert",
    "to_scanned",
    "to_unscanned",
    "restore_plan",
    "per_layer_ndim",
]

SCANNED, UNSCANNED = "scanned", "unscanned"
_BLOCK = re.compile(r"block_(\d+)$")


def _key_name(k) -> str:
    return str(getattr(k, "key", getattr(k, "name", k)))


def layout_of(tree) -> str | None:
    """SCANNED, UNSCANNED, or None when the tree holds no blocks (also for Orbax metadata trees)."""
    found = set()

    def visit(node):
        if isinstance(node, Mapping):
            for k, v in node.items():
                if k == SCANNED_BLOCKS:
                    found.add(SCANNED)
                elif isinstance(k, str) and _BLOCK.match(k):
                    found.add(UNSCANNED)
                else:
                    visit(v)
        elif _is_leaf(node):
            return
        else:
            for child in _children(node)[0]:
                visit(child)

    visit(tree)
    if len(found) > 1:
        raise ValueError("a parameter tree holds both scanned ('blocks') and unscanned ('block_<i>') blocks")
    return found.pop() if found else None


def per_layer_ndim(path, leaf) -> int:
    """The rank of a leaf as one block sees it: the stacked "layers" axis of a scanned leaf does not
    count (a scanned norm scale [layers, d] is still a vector for weight decay and dtype casts)."""
    scanned = any(_key_name(k) == SCANNED_BLOCKS for k in path)
    return leaf.ndim - 1 if scanned else leaf.ndim


def to_scanned(tree):
    return convert(tree, SCANNED)


def to_unscanned(tree):
    return convert(tree, UNSCANNED)


def convert(tree, layout: str):
    """`tree` with every block subtree in `layout` (SCANNED or UNSCANNED); other parts unchanged."""
    if layout not in (SCANNED, UNSCANNED):
        raise ValueError(f"layout must be {SCANNED!r} or {UNSCANNED!r}, got {layout!r}")
    if isinstance(tree, Mapping):
        return _convert_mapping(tree, layout)
    if _is_leaf(tree):
        return tree
    children, rebuild = _children(tree)
    return rebuild([convert(c, layout) for c in children])


def _convert_mapping(node: Mapping, layout: str) -> dict:
    blocks = {int(m.group(1)): v for k, v in node.items() if isinstance(k, str) and (m := _BLOCK.match(k))}
    rest = {
        k: convert(v, layout)
        for k, v in node.items()
        if not (isinstance(k, str) and _BLOCK.match(k)) and k != SCANNED_BLOCKS
    }
    if layout == SCANNED and blocks:
        if sorted(blocks) != list(range(len(blocks))):
            raise ValueError(f"blocks {sorted(blocks)} are not block_0 .. block_{len(blocks) - 1}")
        rest[SCANNED_BLOCKS] = jax.tree.map(_stack, *[blocks[i] for i in range(len(blocks))])
    elif layout == UNSCANNED and SCANNED_BLOCKS in node:
        stacked = node[SCANNED_BLOCKS]
        n = {int(x.shape[0]) for x in jax.tree.leaves(stacked)}
        if len(n) != 1:
            raise ValueError(f"scanned blocks with different leading (layer) sizes {sorted(n)}")
        for i in range(n.pop()):
            rest[block_name(i)] = jax.tree.map(lambda x, i=i: _index(x, i), stacked)
    else:  # already in `layout` (or no blocks): keep them as they are
        rest.update(
            {k: v for k, v in node.items() if k == SCANNED_BLOCKS or (isinstance(k, str) and _BLOCK.match(k))}
        )
    return rest


def _stack(*xs):
    first = xs[0]
    if isinstance(first, jax.ShapeDtypeStruct):
        return jax.ShapeDtypeStruct(
            (len(xs), *first.shape),
            first.dtype,
            sharding=_sharding_with_layers(first.sharding, len(first.shape)),
        )
    return jnp.stack(xs)


def _index(x, i):
    if isinstance(x, jax.ShapeDtypeStruct):
        return jax.ShapeDtypeStruct(x.shape[1:], x.dtype, sharding=_sharding_without_layers(x.sharding))
    return x[i]


def _sharding_with_layers(s, ndim):
    if isinstance(s, NamedSharding):
        spec = tuple(s.spec) + (None,) * (ndim - len(s.spec))
        return NamedSharding(s.mesh, P(None, *spec))
    return s


def _sharding_without_layers(s):
    if isinstance(s, NamedSharding):
        spec = tuple(s.spec)
        if spec and spec[0] is not None:
            raise ValueError(f"the layer axis of a scanned leaf is sharded ({s.spec}); it must be unsharded")
        return NamedSharding(s.mesh, P(*spec[1:]))
    return s


def _is_leaf(node) -> bool:
    return node is None or isinstance(node, (jax.Array, jax.ShapeDtypeStruct)) or hasattr(node, "shape")


def _children(node) -> tuple[list, Callable]:
    """A pytree node's immediate children and a function rebuilding it from new children."""
    if isinstance(node, tuple) and hasattr(node, "_fields"):  # NamedTuple (optax states)
        return list(node), lambda cs: type(node)(*cs)
    if isinstance(node, (list, tuple)):
        return list(node), lambda cs: type(node)(cs)
    leaves, treedef = jax.tree_util.tree_flatten(node, is_leaf=lambda x: x is not node)
    if jax.tree_util.treedef_is_leaf(treedef):
        return [], lambda cs: node
    return leaves, lambda cs: jax.tree_util.tree_unflatten(treedef, cs)


def restore_plan(stored_tree, abstract_state) -> tuple[Any, Callable]:
    """(what to read, how to convert it) for restoring a checkpoint into `abstract_state`.

    `stored_tree` is the checkpoint's metadata tree. When its layout differs from the abstract
    state's, the checkpoint is read into the abstract state converted to the stored layout, and the
    returned function converts the arrays back into `abstract_state`'s layout and shardings (one
    jitted stack/index). Otherwise the abstract state is read as it is and the function is identity.
    """
    stored, wanted = layout_of(stored_tree), layout_of(abstract_state)
    if stored is None or wanted is None or stored == wanted:
        return abstract_state, lambda state: state
    read = convert(abstract_state, stored)
    leaves, treedef = jax.tree_util.tree_flatten(abstract_state)
    shardings = [getattr(x, "sharding", None) for x in leaves]
    # Into the wanted shardings when the abstract state has them (a train/eval restore), else
    # wherever XLA puts them.
    out = treedef.unflatten(shardings) if all(s is not None for s in shardings) else None
    to_wanted = jax.jit(lambda s: convert(s, wanted), out_shardings=out)
    return read, to_wanted
