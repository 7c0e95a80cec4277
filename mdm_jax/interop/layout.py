"""Placing host arrays as a network's parameters on a device mesh, each with its NamedSharding.

The network's own logical axis names decide the layout (`sharding.LOGICAL_RULES`), exactly as for
a freshly initialised train state: `jax.eval_shape` of the init gives the tree and the names, no
weights are materialised. Each array is built with `jax.make_array_from_callback`, so every
device receives only its shard (and, multi-host, every process only its devices' shards): a
checkpoint larger than one device's memory loads straight into an FSDP / tensor-parallel mesh.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from mdm_jax import config as config_lib, sharding

__all__ = ["DTYPES", "dtypes_of", "default_mesh", "param_layout", "place"]

DTYPES = ("float32", "bfloat16", "float64")


def dtypes_of(dtype: str, param_dtype: str | None):
    """(compute dtype, parameter dtype) of a loader's `dtype` / `param_dtype` arguments.

    Parameters stay float32 under bfloat16 compute (the project's policy: parameter and compute
    precision are separate settings) unless `param_dtype` says otherwise; a float64 reference
    holds float64 parameters, which needs x64 (`with jax.enable_x64(True):` around load and use).
    """
    for name, value in (("dtype", dtype), ("param_dtype", param_dtype)):
        if value is not None and value not in DTYPES:
            raise ValueError(f"{name}={value!r}: choose one of {', '.join(DTYPES)}")
    if param_dtype is None:
        param_dtype = "float64" if dtype == "float64" else "float32"
    if "float64" in (dtype, param_dtype) and jax.dtypes.canonicalize_dtype(jnp.float64) != jnp.float64:
        raise ValueError(
            "dtype='float64' needs 64-bit JAX arrays: load and run the model inside "
            "`with jax.enable_x64(True):`"
        )
    return jnp.dtype(dtype), jnp.dtype(param_dtype)


def default_mesh():
    """The project's default mesh (every device on the data axis: parameters replicated)."""
    return sharding.make_mesh(config_lib.base().mesh)


def _mesh_size(mesh, axes) -> int:
    if axes is None:
        return 1
    axes = (axes,) if isinstance(axes, str) else axes
    return math.prod(mesh.shape[a] for a in axes)


def param_layout(init: Callable, mesh) -> tuple[dict, dict]:
    """(abstract params, their NamedShardings) of `init() -> {"params": ...}` on `mesh`.

    Raises, naming the parameter and the mesh field, when a sharded dimension is not divisible
    by the mesh axes it is laid out over (e.g. 20 heads over mesh.tensor=8).
    """
    boxed = jax.eval_shape(init)["params"]
    shardings = sharding.logical_shardings(boxed, mesh)
    abstract = nn.unbox(boxed)
    flat_a = traverse_util.flatten_dict(abstract)
    flat_s = traverse_util.flatten_dict(shardings)
    for path, leaf in flat_a.items():
        for dim, axes in zip(leaf.shape, flat_s[path].spec):
            size = _mesh_size(mesh, axes)
            if dim % size:
                raise ValueError(
                    f"parameter {'/'.join(path)} of shape {tuple(leaf.shape)} cannot be laid out on the "
                    f"mesh {dict(mesh.shape)}: its dimension {dim} is split over mesh axes {axes} of "
                    f"total size {size}; choose --config.mesh.* sizes that divide it"
                )
    return abstract, shardings


def place(host: Mapping[tuple, Callable[[], np.ndarray]], abstract: dict, shardings: dict) -> dict:
    """The params tree of `abstract`, each leaf read by `host[path]()` and put in its sharding.

    `host` maps every flattened parameter path to a function returning the array (read lazily:
    one host copy at a time). Shapes were checked against the checkpoint before; a mismatch here
    is a bug in a converter, reported as such.
    """
    flat_a = traverse_util.flatten_dict(abstract)
    flat_s = traverse_util.flatten_dict(shardings)
    if set(host) != set(flat_a):
        raise AssertionError(f"converter covers {sorted(set(host) ^ set(flat_a))} wrongly")
    out = {}
    for path, leaf in flat_a.items():
        arr = np.asarray(host[path]())
        if arr.shape != tuple(leaf.shape):
            raise AssertionError(f"converter gave {'/'.join(path)} shape {arr.shape}, not {leaf.shape}")
        arr = arr.astype(leaf.dtype)
        out[path] = jax.make_array_from_callback(arr.shape, flat_s[path], lambda idx, a=arr: a[idx])
    return traverse_util.unflatten_dict(out)
