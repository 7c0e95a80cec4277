"""Multi-process start-up: is this one process of several, and `jax.distributed.initialize`.

The same command runs on every host. `init_distributed` initialises JAX's distributed runtime
when `--coordinator_address/--num_processes/--process_id` are given, when JAX_COORDINATOR_ADDRESS
is set, or when the environment shows a multi-process launch (Cloud TPU pod slices, SLURM with
several tasks, Open MPI); JAX's own cluster detection then fills in the addresses. On CPU the
collectives go through gloo.
"""

from __future__ import annotations

import os

import jax

__all__ = ["multi_process_requested", "init_distributed"]

_CLUSTER_HINTS = (
    # (environment variable, how to tell that it means more than one process)
    ("JAX_COORDINATOR_ADDRESS", lambda v: bool(v)),
    ("TPU_WORKER_HOSTNAMES", lambda v: "," in v),  # Cloud TPU pod slice: one entry per host
    ("MEGASCALE_COORDINATOR_ADDRESS", lambda v: bool(v)),  # multi-slice TPU
    ("SLURM_NTASKS", lambda v: v.isdigit() and int(v) > 1),
    ("OMPI_COMM_WORLD_SIZE", lambda v: v.isdigit() and int(v) > 1),
)


def multi_process_requested(env=None) -> bool:
    """Whether the environment (default os.environ) shows a launch of several processes."""
    env = os.environ if env is None else env
    return any(name in env and ok(env[name]) for name, ok in _CLUSTER_HINTS)


def init_distributed(coordinator_address=None, num_processes=None, process_id=None, env=None) -> bool:
    """Calls jax.distributed.initialize when this is one process of several; returns whether it did.

    Must run before any JAX computation. Single-process runs (a laptop, one GPU host) skip it.
    """
    explicit = coordinator_address is not None or (num_processes or 1) > 1
    if not explicit and not multi_process_requested(env):
        return False
    # Cross-process collectives of CPU devices need an implementation (gloo ships with jaxlib);
    # the setting does not affect accelerator collectives, so it is set unconditionally.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=coordinator_address, num_processes=num_processes, process_id=process_id
    )
    return True
