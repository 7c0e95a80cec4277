"""What this backend's categorical draws do under each sampling-precision policy.

The analytic side (`mdm_jax.precision`) assumes the backend computes -log(-log(u)) of JAX's
uniform grid faithfully. A backend whose log is approximate near u -> 1, or that fuses the noise
differently, changes the cap and so the effective temperature; these measure that where they run.

  caps    The largest noise value each policy produced over 2^cap_log2 draws, against the
          analytic cap `precision.gumbel_cap`, and how many draws sat on the top grid point
          against the expected 2^cap_log2 * 2^-bits (float64 / float32-high: 2^-52 / 2^-46,
          never reached, so only the max is shown). float32-pytorch's noise is the Gumbel
          equivalent -log(1e-10 - log(u + 1e-10)) of MDLM's exponential race.
  tail    One (V+1)-way draw with a mask class of mass 1 - eps and V = 50,257 tokens of eps/V
          each (the shape of an ancestral step late in a long run), 2^tail_log2 rows: the
          measured unmask rate / eps against the grid law's and Prop. 5.2's predictions.
  tokens  Token ids of fixed-key draws (`sampling.categorical` on Zipf logits over V = 50,257,
          and first-hitting samples of an exact reference model), so that reports from two
          backends can be compared id by id. Threefry bits are the same everywhere; only the
          float arithmetic after them can differ.

Draws are generated in chunks inside one jitted loop, so memory stays flat at any size. The keys
(`rng.fold(root, part, policy index)`) and sizes are those of the earlier benchmark script whose H200
results are in docs/results/nvidia-h200/numerics.json, so those results convert into
rows of this report exactly (`numerics.convert`).
"""

from __future__ import annotations

import importlib
import math

import jax
import jax.numpy as jnp
import numpy as np

from mdm_jax import precision as precision_lib, rng, sampling, schedules
from mdm_jax.reference import head_tail as refm

# The module, not the function `sampling.categorical` that shadows its name in the package.
cat = importlib.import_module("mdm_jax.sampling.categorical")

__all__ = [
    "POLICIES",
    "VOCAB",
    "FULL",
    "QUICK",
    "scaled",
    "policy_eps",
    "noise_cap",
    "tail_rate",
    "predicted_tail",
    "same_tokens",
    "measure",
]

# Display order (widest first); the fixed keys fold in the index, so the order is part of every
# committed report. Every sampling policy must be audited:
POLICIES = ("float64", "float32", "float32-high", "float32-pytorch", "bfloat16", "float16")
assert set(POLICIES) == set(cat.PRECISIONS), "mdm_jax.numerics.draws: audit every sampling policy"
VOCAB = 50257
CHUNK = 2**22
EPS = 1e-3

# Sizes: log2 of the noise draws per policy and of their chunk, log2 of the tail rows, and the
# fixed-key draws (Zipf rows; first-hitting batch and length, 0: none). FULL is the earlier
# benchmark's scale 0 (the H200 file is scale 6: cap_log2 32, tail_log2 18). QUICK leaves out the
# first-hitting ids: a sampler compilation per policy is most of what a quick report would cost.
FULL = dict(cap_log2=26, chunk_log2=22, tail_log2=12, zipf_rows=1024, fhs_batch=8, fhs_len=64)
QUICK = dict(cap_log2=20, chunk_log2=20, tail_log2=6, zipf_rows=64, fhs_batch=0, fhs_len=0)


def policy_eps(precision: str) -> float:
    """Machine epsilon of the dtype the policy's noise is computed in."""
    return float(jnp.finfo(cat.policy_dtype(precision)).eps)


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


def noise_cap(key, precision, log2_draws, chunk=CHUNK):
    """(max noise, number of draws at the analytic cap, draws) over 2^log2_draws draws (>= chunk)."""
    chunks = max(1, 2**log2_draws // chunk)
    cap = precision_lib.gumbel_cap(precision)

    @jax.jit
    def run(key):
        def body(i, carry):
            mx, hits = carry
            g = _noise(jax.random.fold_in(key, i), precision, chunk)
            top = jnp.max(g)
            # "At the cap": within the policy dtype's rounding of the analytic value.
            tol = jnp.asarray(2.0 * float(jnp.finfo(g.dtype).eps) * cap, g.dtype)
            hits = hits + jnp.sum(g >= jnp.asarray(cap, g.dtype) - tol).astype(jnp.int32)
            return jnp.maximum(mx, top.astype(mx.dtype)), hits

        init = (jnp.asarray(-jnp.inf, jnp.float64 if precision == "float64" else jnp.float32), jnp.int32(0))
        return jax.lax.fori_loop(0, chunks, body, init)

    with cat.x64_scope(precision):
        mx, hits = run(key)
        return float(mx), int(hits), chunks * chunk


def tail_rate(key, precision, eps, log2_rows, rows_per_chunk=64):
    """Measured P(a token beats the mask class) / eps for one (V+1)-way draw, rows, unmasked."""
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
    """(grid law, Prop. 5.2) predictions of the tail test's unmask rate / eps."""
    probs = np.concatenate([np.full(VOCAB, eps / VOCAB), [1.0 - eps]])
    grid = refm.fast_grid_law(probs, precision)
    prop = precision_lib.prop52_law(probs, precision_lib.gumbel_cap(precision))
    return float(grid[:-1].sum() / eps), float(prop[:-1].sum() / eps)


def same_tokens(key, precision, zipf_rows=1024, fhs_batch=8, fhs_len=64):
    """Fixed-key token ids: categorical draws on Zipf logits, FHS samples of an exact reference."""
    p = 1.0 / np.arange(1, VOCAB + 1)
    logits = jnp.asarray(np.broadcast_to(np.log(p / p.sum()), (zipf_rows, VOCAB)), jnp.float32)
    draws = np.asarray(sampling.categorical(rng.fold(key, "zipf"), logits, precision))
    if not fhs_batch:
        return {"categorical_zipf": draws.tolist()}
    ref = refm.HeadTailReference(1000, head=4, tail_mass=0.5, seed=0)
    fhs, _ = sampling.first_hitting(
        ref.denoise_fn,
        rng.fold(key, "fhs"),
        batch_size=fhs_batch,
        seq_len=fhs_len,
        mask_id=ref.V,
        schedule=schedules.get("linear"),
        precision=precision,
    )
    return {"categorical_zipf": draws.tolist(), "fhs_reference": np.asarray(fhs).ravel().tolist()}


def scaled(size: dict, scale: int) -> dict:
    """`size` with 2^scale times the noise draws and tail rows (accelerators: scale 6)."""
    return dict(size, cap_log2=size["cap_log2"] + scale, tail_log2=size["tail_log2"] + scale)


def measure(size: dict, log=print) -> dict:
    """{"caps": {policy: ...}, "tail": {policy: ...}, "tokens": {policy: ...}} at `size` (FULL, QUICK)."""
    root = rng.root_key(0)
    out = {"caps": {}, "tail": {}, "tokens": {}}
    for i, p in enumerate(POLICIES):
        mx, hits, n = noise_cap(rng.fold(root, "cap", i), p, size["cap_log2"], 2 ** size["chunk_log2"])
        grid = precision_lib.policy_grid(p)
        expected = n * grid.d if grid.d > 2.0**-40 else 0.0
        out["caps"][p] = {"max": mx, "cap": grid.cap, "hits": hits, "expected_hits": expected, "draws": n}
        log(
            f"cap    {p:16s} max {mx:8.4f} (cap {grid.cap:7.4f}), {hits} of 2^{int(math.log2(n))} "
            f"draws at the cap (expected {expected:.1f})"
        )
    for i, p in enumerate(POLICIES):
        ratio, rows, n = tail_rate(rng.fold(root, "tail", i), p, EPS, size["tail_log2"])
        g, q = predicted_tail(p, EPS)
        se = math.sqrt(max(n, 1)) / rows / EPS
        out["tail"][p] = {"measured": ratio, "se": se, "unmasked": n, "rows": rows, "grid": g, "prop52": q}
        log(
            f"tail   {p:16s} unmask rate / eps {ratio:7.4f} +- {se:.3f} over {rows} rows; grid law "
            f"{g:.4f}, Prop. 5.2 {q:.4f}"
        )
    for i, p in enumerate(POLICIES):
        out["tokens"][p] = same_tokens(
            rng.fold(root, "same", i), p, size["zipf_rows"], size["fhs_batch"], size["fhs_len"]
        )
    log(f"tokens fixed-key ids of {len(POLICIES)} policies recorded")
    return out
