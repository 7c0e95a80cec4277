"""Activation memory and step time of the rematerialisation policies (`model.remat`).

  python benchmarks/remat_memory.py                                 # owt_mdm_small's network
  python benchmarks/remat_memory.py --time_rounds=0                 # memory only (compiles only)
  python benchmarks/remat_memory.py --config.model.vocab_size=256 --time_batch=2

Memory: for each policy (none, full, dots) and layout (scan_layers False / True), the real train
step (`mdm_jax.train.make_train_step`) at owt_mdm_small's shape (12 layers x 768, 12 heads, GELU
3072, L=1024, V=50,257, bf16 compute, f32 params; batch --batch) is compiled from the abstract
state and XLA's `memory_analysis()` read: `temp` is the step's temporary buffers (activations kept
for the backward pass, recomputed ones, the logits and their gradient, fusion scratch), the figure
remat changes; arguments (state, batch) and outputs (the new state, aliased to the donated input)
do not change with the policy. Compiling needs no accelerator: the figures are the CPU backend's
buffer assignment (a GPU's differs in detail, not in what remat saves). The blocks' activation
memory is temp minus the temp of the same network with 0 layers (what no policy changes: the
embedding, the head, the [B, L, V] logits and their gradient, the optimizer update).

Step time: --time_rounds rounds, each running one train step of every policy in a rotated order
(interleaved), at --time_batch sequences, float32 compute (bf16 matmuls are emulated on CPUs) and
scanned layers (--time_scan; on the CPU backend remat only saves memory under scan, see
benchmarks/RESULTS.md); median seconds per step and the cost relative to `none`. The 1-minute
load average is printed.
"""

from __future__ import annotations

import os
import statistics
import sys
import time

POLICIES = ("none", "full", "dots")
MB = 1024.0**2


def get_config():
    """owt_mdm_small's network and dtypes (the shape the memory target is stated for)."""
    from mdm_jax import config as config_lib

    here = os.path.dirname(os.path.abspath(__file__))
    return config_lib.load_file(os.path.join(here, "..", "configs", "owt_mdm_small.py"))


def _variant(config, remat: str, scan: bool, batch: int, compute: str | None = None):
    c = config.copy_and_resolve_references()
    with c.unlocked():
        c.model.remat, c.model.scan_layers, c.train.batch_size = remat, scan, batch
        c.model.dropout = 0.0  # dropout's masks would be rematerialised too: keep the step deterministic
        if compute:
            c.dtype.compute = compute
    return c


def _step(config):
    from mdm_jax import sharding, train

    mesh = sharding.make_mesh(config.mesh)
    abstract, shardings = train.abstract_train_state(config, mesh)
    return mesh, abstract, shardings, train.make_train_step(config, mesh, shardings)


def memory(config) -> dict:
    import jax
    import jax.numpy as jnp

    from mdm_jax import sharding

    mesh, abstract, _, step = _step(config)
    batch = jax.ShapeDtypeStruct(
        (config.train.batch_size, config.data.seq_len), jnp.int32, sharding=sharding.batch_sharding(mesh)
    )
    m = step.lower(abstract, batch, jax.random.key(0)).compile().memory_analysis()
    return {
        "temp": m.temp_size_in_bytes,
        "arguments": m.argument_size_in_bytes,
        "outputs": m.output_size_in_bytes,
        "alias": m.alias_size_in_bytes,
    }


def step_times(config, rounds: int, batch: int, scan: bool) -> tuple[dict, list]:
    """Interleaved step times (seconds) per policy at float32 compute."""
    import jax
    import numpy as np

    from mdm_jax import rng, sharding, train

    runs = {}
    for policy in POLICIES:
        c = _variant(config, policy, scan, batch, compute="float32")
        mesh = sharding.make_mesh(c.mesh)
        state, shardings = train.create_train_state(c, mesh)
        step = train.make_train_step(c, mesh, shardings)
        tokens = np.random.default_rng(0).integers(
            0, c.model.vocab_size, (batch, c.data.seq_len), dtype=np.int32
        )
        runs[policy] = {"state": state, "step": step, "batch": sharding.global_batch(tokens, mesh)}
        run = runs[policy]
        run["state"], m = step(run["state"], run["batch"], rng.fold(jax.random.key(0), "train", 0))  # compile
        jax.block_until_ready(m)
    times, loads = {p: [] for p in POLICIES}, []
    for r in range(rounds):
        loads.append(os.getloadavg()[0])
        for policy in POLICIES[r % len(POLICIES) :] + POLICIES[: r % len(POLICIES)]:
            run = runs[policy]
            start = time.perf_counter()
            key = rng.fold(jax.random.key(0), "train", r + 1)
            run["state"], m = run["step"](run["state"], run["batch"], key)
            jax.block_until_ready(m)
            times[policy].append(time.perf_counter() - start)
        print(
            f"  round {r + 1}: "
            + ", ".join(f"{p} {times[p][-1]:.2f} s" for p in POLICIES)
            + f" (load {loads[-1]:.1f})",
            flush=True,
        )
    loads.append(os.getloadavg()[0])
    return times, loads


def main(argv):
    del argv
    from absl import flags

    f = flags.FLAGS
    config = f.config
    m = config.model
    print(
        f"network: {m.num_layers} layers x {m.emb_dim}, {m.num_heads} heads, {m.mlp_type} {m.mlp_dim}, "
        f"V={m.vocab_size}, L={config.data.seq_len}, compute {config.dtype.compute}, "
        f"params {config.dtype.param}; "
        f"batch {f.batch} (memory), {f.time_batch} (time); load {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    # The blocks' share: a network without blocks (embedding, time MLP, head, loss, optimizer) has
    # the temporaries no remat policy touches (at V = 50,257 mostly the [B, L, V] logits and their
    # gradient); temp - that = the blocks' activation memory.
    no_blocks = _variant(config, "none", False, f.batch)
    with no_blocks.unlocked():
        no_blocks.model.num_layers = 0
    rest = memory(no_blocks)["temp"] if f.memory else 0
    print(f"  0 layers (everything but the blocks): temp {rest / MB:.0f} MiB", flush=True)
    mem = {}
    for scan in (False, True) if f.memory else ():
        for policy in POLICIES:
            mem[(policy, scan)] = memory(_variant(config, policy, scan, f.batch))
            print(f"  {policy}, scan={scan}: {mem[(policy, scan)]}", flush=True)
    print(
        "\n| remat | scan_layers | temp MiB | blocks' activations MiB (temp - 0-layer temp) | "
        "activations / none's | arguments MiB | outputs MiB |"
    )
    print("|---|---|---|---|---|---|---|")
    for scan in (False, True) if f.memory else ():
        none_act = mem[("none", scan)]["temp"] - rest
        for policy in POLICIES:
            r = mem[(policy, scan)]
            act = r["temp"] - rest
            print(
                f"| {policy} | {scan} | {r['temp'] / MB:.0f} | {act / MB:.0f} | {act / none_act:.3f} | "
                f"{r['arguments'] / MB:.0f} | {r['outputs'] / MB:.0f} |"
            )
    if f.time_rounds:
        times, loads = step_times(config, f.time_rounds, f.time_batch, f.time_scan)
        print(
            f"\nstep time, batch {f.time_batch}, float32 compute, scan_layers={f.time_scan}; 1-minute load "
            f"{min(loads):.1f} - {max(loads):.1f}\n"
        )
        print("| remat | median s/step | best s/step | median / none's |")
        print("|---|---|---|---|")
        base = statistics.median(times["none"])
        for policy in POLICIES:
            med = statistics.median(times[policy])
            print(f"| {policy} | {med:.2f} | {min(times[policy]):.2f} | {med / base:.3f} |")


if __name__ == "__main__":
    from absl import app, flags
    from ml_collections import config_flags

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    config_flags.DEFINE_config_file(
        "config",
        os.path.abspath(__file__),
        "Config file (configs/*.py); default owt_mdm_small.",
        lock_config=True,
    )
    flags.DEFINE_integer("batch", 8, "Sequences per train step for the memory analysis.")
    flags.DEFINE_integer("time_batch", 1, "Sequences per train step for the step-time rounds.")
    flags.DEFINE_integer("time_rounds", 3, "Interleaved rounds of step timing (0: memory only).")
    flags.DEFINE_bool("time_scan", True, "Time the scanned layout (where remat saves memory on CPUs).")
    flags.DEFINE_bool("memory", True, "Run the memory analysis (--memory=false: step times only).")
    app.run(main)
