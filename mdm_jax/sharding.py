"""Device mesh and logical-axis sharding (the pjit model): one code path for 1 CPU or a pod.

Mesh axes: "data" (pure data parallelism), "fsdp" (data parallelism with parameters and
optimizer state sharded), "tensor" (Megatron-style model parallelism over heads / MLP / vocab).
Modules annotate parameters and activations with logical names (mdm_jax.models.transformer);
`LOGICAL_RULES` maps those names to mesh axes. The batch is sharded over ("data", "fsdp").

We build the mesh with `jax.sharding.Mesh` (Auto axis types, not `jax.make_mesh`'s Explicit
default): the model is written against sharding *annotations* that the compiler propagates
(GSPMD), the style of MaxText, rather than sharding-in-types.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

LOGICAL_RULES = (
    # parameters
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv", None),
    ("time", None),
    ("layers", None),  # the stacked axis of scanned blocks: every device holds every layer's shard
    # activations
    ("act_batch", BATCH_AXES),
    ("act_length", None),
    ("act_embed", None),
    ("act_heads", "tensor"),
    ("act_mlp", "tensor"),
    ("act_vocab", "tensor"),
)


def mesh_shape(mesh_config, num_devices: int) -> tuple[int, int, int]:
    """Resolves the (data, fsdp, tensor) sizes; one entry may be -1 ("fill the rest")."""
    sizes = [int(mesh_config.data), int(mesh_config.fsdp), int(mesh_config.tensor)]
    if sizes.count(-1) > 1:
        raise ValueError(f"mesh: at most one of mesh.data/fsdp/tensor may be -1, got {sizes}")
    if any(s == 0 or s < -1 for s in sizes):
        raise ValueError(f"mesh: sizes must be positive or -1, got data/fsdp/tensor={sizes}")
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if num_devices % known:
            raise ValueError(
                f"mesh: {num_devices} devices cannot be split with mesh.data/fsdp/tensor={sizes} "
                f"(the fixed axes multiply to {known}, which does not divide {num_devices}); "
                "change --config.mesh.* so the product divides the device count"
            )
        sizes[sizes.index(-1)] = num_devices // known
    if math.prod(sizes) != num_devices:
        raise ValueError(
            f"mesh: mesh.data*fsdp*tensor = {math.prod(sizes)} but {num_devices} devices are visible; "
            "set one of --config.mesh.data/fsdp/tensor to -1 or make the product equal the device count"
        )
    return tuple(sizes)


def make_mesh(mesh_config, devices=None) -> Mesh:
    devices = jax.devices() if devices is None else devices
    shape = mesh_shape(mesh_config, len(devices))
    try:  # topology-aware device order on TPU/GPU; falls back to the plain order on CPU
        arr = mesh_utils.create_device_mesh(shape, devices=devices)
    except Exception:  # noqa: BLE001 - any topology error: a plain reshape is always valid
        arr = np.asarray(devices).reshape(shape)
    return Mesh(arr, AXES)


def data_parallel_size(mesh: Mesh) -> int:
    return mesh.shape["data"] * mesh.shape["fsdp"]


def batch_sharding(mesh: Mesh, ndim: int = 2) -> NamedSharding:
    """Leading (batch) axis over data x fsdp, the rest replicated."""
    return NamedSharding(mesh, P(BATCH_AXES, *([None] * (ndim - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def logical_shardings(boxed_tree, mesh: Mesh):
    """NamedShardings for a tree of `nn.LogicallyPartitioned` values (e.g. from `jax.eval_shape(init)`)."""
    specs = nn.get_partition_spec(boxed_tree)
    return nn.logical_to_mesh_sharding(specs, mesh, LOGICAL_RULES)


def rules_context():
    """Context under which `nn.with_logical_constraint` resolves names with our rules."""
    return nn.logical_axis_rules(LOGICAL_RULES)


def global_batch(local: np.ndarray, mesh: Mesh) -> jax.Array:
    """This process's rows -> one global array sharded over the batch axes (multi-host safe)."""
    return jax.make_array_from_process_local_data(batch_sharding(mesh, local.ndim), local)
