"""Compile time of the train step against depth, with and without scanned layers.

  python benchmarks/compile_time.py                                    # 6, 12, 24, 48 layers
  python benchmarks/compile_time.py --layers=6,12 --rounds=2

The network is config.base()'s block (width 512, 8 heads, SwiGLU 1376, L=256, V=256, batch 16,
time-conditioned, continuous NELBO) at each depth; `model.scan_layers` False (one copy of the block
per layer in the program) and True (`nn.scan`: one block in a loop). For each, the real train step
(`mdm_jax.train.make_train_step`) is traced and lowered (`.lower`, seconds "trace") and compiled by
XLA (`.compile()`, seconds "compile") from the abstract train state: nothing is run, so the figures
are the cost a run pays before its first step. Also printed: the optimised program's instruction
count. Each (depth, layout) point is measured in its own fresh process (no JAX caches shared), in
an order rotated every round (interleaved: a load change hits all points alike); the table gives
the median over rounds. The 1-minute load average is printed with every point.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time


def get_config():
    from mdm_jax import config as config_lib

    return config_lib.base()


def measure(config) -> dict:
    """Trace+lower and compile seconds of the train step for `config` (nothing is executed)."""
    import jax
    import jax.numpy as jnp

    from mdm_jax import sharding, train

    mesh = sharding.make_mesh(config.mesh)
    abstract, shardings = train.abstract_train_state(config, mesh)
    batch = jax.ShapeDtypeStruct(
        (config.train.batch_size, config.data.seq_len), jnp.int32, sharding=sharding.batch_sharding(mesh)
    )
    step = train.make_train_step(config, mesh, shardings)
    load = os.getloadavg()[0]
    start = time.perf_counter()
    lowered = step.lower(abstract, batch, jax.random.key(0))
    traced = time.perf_counter() - start
    start = time.perf_counter()
    compiled = lowered.compile()
    compile_s = time.perf_counter() - start
    hlo = compiled.as_text()
    return {
        "trace_s": traced,
        "compile_s": compile_s,
        "instructions": hlo.count("\n  "),
        "load_before": load,
        "load_after": os.getloadavg()[0],
    }


def _child(layers: int, scan: bool, argv_flags: list[str]) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), f"--one={layers},{int(scan)}", *argv_flags]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"compile benchmark at {layers} layers, scan={scan} failed:\n{res.stderr[-4000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main(argv):
    del argv
    from absl import flags

    f = flags.FLAGS
    config = f.config
    if f.one:
        layers, scan = (int(v) for v in f.one.split(","))
        config.model.num_layers, config.model.scan_layers = layers, bool(scan)
        print(json.dumps(measure(config)))
        return
    passthrough = [a for a in sys.argv[1:] if a.startswith("--config")]  # --config and its overrides
    points = [(n, s) for n in (int(v) for v in f.layers.split(",")) for s in (False, True)]
    results = {p: [] for p in points}
    for r in range(f.rounds):
        order = points[r % len(points) :] + points[: r % len(points)]
        for layers, scan in order:
            out = _child(layers, scan, passthrough)
            results[(layers, scan)].append(out)
            print(
                f"round {r + 1}: {layers} layers, scan={scan}: trace {out['trace_s']:.1f} s, compile "
                f"{out['compile_s']:.1f} s, {out['instructions']} instructions "
                f"(load {out['load_before']:.1f}"
                f" -> {out['load_after']:.1f})",
                flush=True,
            )
    m = config.model
    print(
        f"\ntrain step of {m.emb_dim}-wide blocks ({m.num_heads} heads, {m.mlp_type} {m.mlp_dim}), "
        f"L={config.data.seq_len}, batch {config.train.batch_size}; median of {f.rounds} round(s)\n"
    )
    print(
        "| layers | unscanned: trace s | compile s | instructions "
        "| scanned: trace s | compile s | instructions |"
    )
    print("|---|---|---|---|---|---|---|")
    for layers in sorted({p[0] for p in points}):
        cells = []
        for scan in (False, True):
            rs = results[(layers, scan)]
            cells += [
                f"{statistics.median(r['trace_s'] for r in rs):.1f}",
                f"{statistics.median(r['compile_s'] for r in rs):.1f}",
                str(rs[-1]["instructions"]),
            ]
        print(f"| {layers} | " + " | ".join(cells) + " |")
    loads = [r[k] for rs in results.values() for r in rs for k in ("load_before", "load_after")]
    print(f"\n1-minute load average over the run: {min(loads):.1f} - {max(loads):.1f}")


if __name__ == "__main__":
    from absl import app, flags
    from ml_collections import config_flags

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    config_flags.DEFINE_config_file(
        "config",
        os.path.abspath(__file__),
        "Config file (configs/*.py); default config.base().",
        lock_config=True,
    )
    flags.DEFINE_string("layers", "6,12,24,48", "Depths to measure (comma list).")
    flags.DEFINE_integer("rounds", 1, "Rounds over all points (each point once per round, rotated order).")
    flags.DEFINE_string("one", "", "Internal: 'layers,scan' measures one point in this process.")
    app.run(main)
