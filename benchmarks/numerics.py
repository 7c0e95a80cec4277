"""Backend numerics audit: what this backend's categorical draws do under each precision policy.

  python benchmarks/numerics.py --out=/tmp/numerics_cpu.json                 # here (CPU, --scale=0)
  python benchmarks/numerics.py --scale=6 --compare=benchmarks/numerics_cpu.json --out=gpu.json

The analytic side (`mdm_jax.precision`) assumes the backend computes -log(-log(u)) of JAX's
uniform grid faithfully. A backend whose log is approximate near u -> 1, or that fuses the noise
differently, changes the cap and so the effective temperature; this script measures that on the
machine it runs on. What it prints (and writes to --out as JSON):

  cap       The largest noise value each policy produced over 2^(26+scale) draws, against the
            analytic cap `precision.gumbel_cap`, and how many draws sat on the top grid point
            against the expected 2^(26+scale) * 2^-bits (float64 / float32-high: 2^-52 / 2^-46,
            never reached, so only the max is shown). float32-pytorch's noise is the Gumbel
            equivalent -log(1e-10 - log(u + 1e-10)) of MDLM's exponential race.
  tail      One (V+1)-way draw with a mask class of mass 1 - eps and V = 50,257 tokens of eps/V
            each (the shape of an ancestral step late in a long run), 2^(12+scale) rows: the
            measured unmask rate / eps against the grid law's and Prop. 5.2's predictions.
  same      Token ids of fixed-key draws (`sampling.categorical` on Zipf logits over V = 50,257,
            and first-hitting samples of an exact reference model), saved so that --compare can
            report the fraction identical to another backend's file. Threefry bits are the same
            everywhere; only the float arithmetic after them can differ.

Draws are generated in chunks inside one jitted loop, so memory stays flat for any --scale.
"""

from __future__ import annotations

import importlib
import json
import math
import platform
import sys
import time

from absl import app, flags

import jax
import jax.numpy as jnp
import numpy as np

from mdm_jax import precision as precision_lib
from mdm_jax import rng, sampling, schedules
from mdm_jax.reference import head_tail as refm

# The module, not the function `sampling.categorical` that shadows its name in the package.
cat = importlib.import_module("mdm_jax.sampling.categorical")

FLAGS = flags.FLAGS
flags.DEFINE_integer("scale", 0, "log2 of extra draws over the CPU-sized defaults (GPU: 6).")
flags.DEFINE_string("out", "", "Write the results as JSON here.")
flags.DEFINE_string("compare", "", "JSON from another backend: report the fraction of identical token ids.")
flags.DEFINE_float("eps", 1e-3, "Unmask mass of the tail test.")

# Display order (widest first); the fixed keys fold in the index, so the order is part of the
# committed benchmarks/numerics_cpu.json. Every sampling policy must be audited:
POLICIES = ("float64", "float32", "float32-high", "float32-pytorch", "bfloat16", "float16")
assert set(POLICIES) == set(cat.PRECISIONS), "benchmarks/numerics.py: audit every sampling policy"
VOCAB = 50257
CHUNK = 2**22


def _noise(key, precision, n):
    """n noise values of the policy, as the draw adds them to the logits (float32 result)."""
    dtype = cat.policy_dtype(precision)
    if precision == "float32-pytorch":
        u = cat.grid_uniform(key, (n,), 24)
        g = -jnp.log(jnp.float32(1e-10) - jnp.log(u + jnp.float32(1e-10)))
    else:
        mode = "high" if precision == "float32-high" else "low"
        g = jax.random.gumbel(key, (n,), dtype, mode=mode)
    return g


def noise_cap(key, precision, log2_draws):
    """(max noise, number of draws at the analytic cap) over 2^log2_draws draws."""
    chunks = max(1, 2**log2_draws // CHUNK)
    cap = precision_lib.gumbel_cap(precision)

    @jax.jit
    def run(key):
        def body(i, carry):
            mx, hits = carry
            g = _noise(jax.random.fold_in(key, i), precision, CHUNK)
            top = jnp.max(g)
            # "At the cap": within the policy dtype's rounding of the analytic value.
            tol = jnp.asarray(2.0 * float(jnp.finfo(g.dtype).eps) * cap, g.dtype)
            hits = hits + jnp.sum(g >= jnp.asarray(cap, g.dtype) - tol).astype(jnp.int32)
            return jnp.maximum(mx, top.astype(mx.dtype)), hits
        init = (jnp.asarray(-jnp.inf, jnp.float64 if precision == "float64" else jnp.float32),
                jnp.int32(0))
        return jax.lax.fori_loop(0, chunks, body, init)

    with cat.x64_scope(precision):
        mx, hits = run(key)
        return float(mx), int(hits), chunks * CHUNK


def tail_rate(key, precision, eps, log2_rows, rows_per_chunk=64):
    """Measured P(a token beats the mask class) / eps for one (V+1)-way draw, and the row count."""
    chunks = max(1, 2**log2_rows // rows_per_chunk)
    logits = np.concatenate([np.full(VOCAB, math.log(eps / VOCAB)), [math.log1p(-eps)]])

    @jax.jit
    def run(key, lg):
        def body(i, n):
            x = jnp.broadcast_to(lg, (rows_per_chunk, VOCAB + 1))
            idx = cat.categorical(jax.random.fold_in(key, i), x, precision)
            return n + jnp.sum(idx < VOCAB).astype(jnp.int32)
        return jax.lax.fori_loop(0, chunks, body, jnp.int32(0))

    with cat.x64_scope(precision):
        dtype = jnp.float64 if precision == "float64" else jnp.float32
        n = int(run(key, jnp.asarray(logits, dtype)))
    rows = chunks * rows_per_chunk
    return n / rows / eps, rows, n


def predicted_tail(precision, eps):
    probs = np.concatenate([np.full(VOCAB, eps / VOCAB), [1.0 - eps]])
    grid = refm.fast_grid_law(probs, precision)
    prop = precision_lib.prop52_law(probs, precision_lib.gumbel_cap(precision))
    return float(grid[:-1].sum() / eps), float(prop[:-1].sum() / eps)


def same_tokens(key, precision):
    """Fixed-key token ids: 1024 categorical draws on Zipf logits, 8 FHS samples of length 64."""
    p = 1.0 / np.arange(1, VOCAB + 1)
    logits = jnp.asarray(np.broadcast_to(np.log(p / p.sum()), (1024, VOCAB)), jnp.float32)
    draws = np.asarray(sampling.categorical(rng.fold(key, "zipf"), logits, precision))
    ref = refm.HeadTailReference(1000, head=4, tail_mass=0.5, seed=0)
    fhs, _ = sampling.first_hitting(ref.denoise_fn, rng.fold(key, "fhs"), batch_size=8, seq_len=64,
                                    mask_id=ref.V, schedule=schedules.get("linear"),
                                    precision=precision)
    return {"categorical_zipf": draws.tolist(), "fhs_reference": np.asarray(fhs).ravel().tolist()}


def main(argv):
    del argv
    root = rng.root_key(0)
    dev = jax.devices()[0]
    out = {"device_kind": dev.device_kind, "platform": dev.platform, "jax": jax.__version__,
           "python": platform.python_version(), "scale": FLAGS.scale, "eps": FLAGS.eps,
           "cap": {}, "tail": {}, "same": {}}
    print(f"numerics on {dev.platform} ({dev.device_kind}), jax {jax.__version__}, scale {FLAGS.scale}")
    print(f"\n{'policy':16s} {'max noise':>10s} {'cap':>8s} {'draws at cap':>13s} {'expected':>9s}  draws")
    for i, p in enumerate(POLICIES):
        t0 = time.perf_counter()
        mx, hits, n = noise_cap(rng.fold(root, "cap", i), p, 26 + FLAGS.scale)
        grid = precision_lib.policy_grid(p)
        expected = n * grid.d if grid.d > 2.0**-40 else 0.0
        out["cap"][p] = {"max": mx, "cap": grid.cap, "hits": hits, "expected_hits": expected,
                         "draws": n, "seconds": time.perf_counter() - t0}
        print(f"{p:16s} {mx:10.4f} {grid.cap:8.4f} {hits:13d} {expected:9.1f}  2^{int(math.log2(n))}")
    print(f"\ntail test: V={VOCAB}, eps={FLAGS.eps} (token prob {FLAGS.eps / VOCAB:.2e} vs 2^-24 = "
          f"{2.0**-24:.2e}); unmask rate / eps")
    print(f"{'policy':16s} {'measured':>12s} {'grid law':>9s} {'Prop 5.2':>9s}  rows")
    for i, p in enumerate(POLICIES):
        t0 = time.perf_counter()
        ratio, rows, n = tail_rate(rng.fold(root, "tail", i), p, FLAGS.eps, 12 + FLAGS.scale)
        g, q = predicted_tail(p, FLAGS.eps)
        se = math.sqrt(max(n, 1)) / rows / FLAGS.eps
        out["tail"][p] = {"measured": ratio, "se": se, "unmasked": n, "rows": rows, "grid": g,
                          "prop52": q, "seconds": time.perf_counter() - t0}
        print(f"{p:16s} {ratio:7.4f}+-{se:.3f} {g:9.4f} {q:9.4f}  {rows}")
    for i, p in enumerate(POLICIES):
        out["same"][p] = same_tokens(rng.fold(root, "same", i), p)
    if FLAGS.compare:
        other = json.load(open(FLAGS.compare))
        print(f"\nidentical token ids vs {other['platform']} ({other['device_kind']}, jax {other['jax']}):")
        out["compare"] = {"against": {k: other[k] for k in ("platform", "device_kind", "jax")}}
        for p in POLICIES:
            row = {}
            for name, ids in out["same"][p].items():
                a, b = np.asarray(ids), np.asarray(other["same"][p][name])
                row[name] = float((a == b).mean())
            out["compare"][p] = row
            print(f"  {p:16s} " + ", ".join(f"{k} {v:.4f}" for k, v in row.items()))
    if FLAGS.out:
        with open(FLAGS.out, "w") as f:
            json.dump(out, f)
    return 0


if __name__ == "__main__":
    sys.exit(app.run(main))
