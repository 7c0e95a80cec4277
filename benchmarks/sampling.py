"""Sampling benchmark: seconds per sequence, NFE and peak memory per sampler.

  python benchmarks/sampling.py                                  # config.base()'s network, B=8
  python benchmarks/sampling.py --config=configs/quickstart.py --samplers=all --steps=256
  python benchmarks/sampling.py --samplers=fhs,floor,fhs_float64 --repeats=1     # the issue's targets
  python benchmarks/sampling.py --config.model.num_layers=2 --config.model.emb_dim=256 \\
      --config.model.num_heads=4 --config.model.mlp_dim=1024 --config.model.vocab_size=50257 \\
      --seq_len=8 --batch=1 --steps=10000 --samplers=fhs,ancestral --warmup=false   # GPT-2 vocab, N=10^4

Without --config the network is `mdm_jax.config.base()`'s (6 layers, width 512, 8 heads, SwiGLU
1376, L=256, V=256, time-conditioned): the issue's CPU target shape. Parameters are random (an
untrained network: with the zero-initialised output head every prediction is uniform, the worst
case for the ancestral cache). Samplers (--samplers, comma list or "all"):
  fhs, fhs_parallel (k=--tokens_per_step), fhs_float64   first-hitting, float32 / float64 draws
  ancestral, ancestral_uncached, ancestral_factorized    N = --steps, float32 draws
  arm, arm_uncached                                      the same backbone, causal, KV cache or not
  floor                                                  L dependent network calls in one compiled
                                                         lax.fori_loop (each call's argmax fed back
                                                         into the next input): FHS's lower bound
Each sampler runs in its own fresh subprocess: one warm-up call (compilation) then the best of
--repeats timed calls, blocked on the host (--warmup=false: a single call, compilation included).
Memory: on GPU/TPU the device's peak_bytes_in_use; on CPU the peak resident set size of that
subprocess (resource.getrusage ru_maxrss) and its increase over a baseline subprocess that only
builds the network and runs one forward pass; for fhs/fhs_float64 also XLA's compiled memory
analysis of the sampler loop (temporaries + arguments + outputs), which isolates the sampler's
own buffers. The machine may be shared: the 1-minute load average is printed with the figures.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time

ALL = ("fhs", "fhs_parallel", "fhs_float64", "ancestral", "ancestral_uncached",
       "ancestral_factorized", "arm", "arm_uncached", "floor")
BEST_PUBLIC_JAX_S_PER_SEQ = 39.7   # measured on this machine: 6x512, L=256, V=256, B=8, 1024 steps


def get_config():
    """The default benchmark shape: config.base() (lets config_flags load this file as --config)."""
    from mdm_jax import config as config_lib
    return config_lib.base()


def _build(config, seq_len, arm=False):
    import copy

    import jax
    import jax.numpy as jnp

    from mdm_jax import models
    from mdm_jax.models import adapters

    c = copy.deepcopy(config)
    with c.unlocked():
        c.model.max_len = max(int(c.model.max_len), seq_len)
        c.model.dropout = 0.0
        if arm:
            c.objective.kind = "arm"
    model = models.build(c)
    tokens = jnp.zeros((1, seq_len), jnp.int32)
    t = jnp.zeros((1,), jnp.float32) if model.time_conditioning else None
    params = jax.jit(lambda k: model.init(k, tokens, t, deterministic=True))(jax.random.key(0))["params"]
    return c, model, params, adapters


def _floor(denoise, batch, seq_len, vocab):
    """L dependent network calls in one compiled loop: call i's argmax at position i is fed back."""
    import jax
    import jax.numpy as jnp

    @jax.jit
    def run(key):
        x0 = jnp.full((batch, seq_len), vocab, jnp.int32)
        t = jax.random.uniform(key, (batch,))

        def body(i, x):
            logits = denoise(x, t)
            tok = jnp.argmax(jax.lax.dynamic_index_in_dim(logits, i, axis=1, keepdims=False), -1)
            return jax.lax.dynamic_update_index_in_dim(x, tok.astype(jnp.int32), i, axis=1)

        return jax.lax.fori_loop(0, seq_len, body, x0)

    return lambda key: (run(key), {"nfe": seq_len})


def _fhs_compiled_memory(denoise, batch, seq_len, vocab, sched, precision):
    """XLA's memory analysis of the compiled first-hitting loop (bytes), or None if unavailable."""
    import importlib

    import jax
    import jax.numpy as jnp
    try:
        # The package re-exports functions under these names: import the modules themselves.
        plumbing = importlib.import_module("mdm_jax.sampling.plumbing")
        first_hitting = importlib.import_module("mdm_jax.sampling.first_hitting")
        with plumbing.sampler_scope(precision):
            lowered = first_hitting._fhs.lower(
                jax.random.key(0), jnp.full((batch, seq_len), vocab, jnp.int32), jnp.float32(1.0),
                denoise_fn=denoise, batch_size=batch, seq_len=seq_len, mask_id=vocab,
                sched=plumbing.StaticSchedule(sched), precision=precision, k=1,
                num_iters=seq_len, batch_sharding=None)
            m = lowered.compile().memory_analysis()
        return int(m.temp_size_in_bytes + m.argument_size_in_bytes + m.output_size_in_bytes)
    except Exception as e:  # noqa: BLE001 - private API of the sampler module; report, don't fail
        print(f"compiled memory analysis unavailable: {e!r}", file=sys.stderr)
        return None


def _device_peak():
    import jax
    stats = jax.devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use")


def one(name, config, batch, seq_len, steps, k, repeats, warmup):
    """Runs one sampler in this process; returns its figures."""
    import jax
    import jax.numpy as jnp

    from mdm_jax import objectives, sampling

    vocab = int(config.model.vocab_size)
    arm = name.startswith("arm")
    c, model, params, adapters = _build(config, seq_len, arm=arm)
    sched = objectives.schedule_of(c.objective)
    compiled_mem = None
    if name == "baseline":
        denoise = adapters.denoise_fn(model, params)
        x = jnp.full((batch, seq_len), vocab, jnp.int32)
        jax.block_until_ready(jax.jit(denoise)(x, jnp.zeros((batch,), jnp.float32)))
        fn = None
    elif arm:
        if name == "arm":
            step_fn, state = adapters.ar_step_fn(model, params, batch)
            fn = lambda key: sampling.autoregressive(step_fn, state, key, batch_size=batch,  # noqa: E731
                                                     seq_len=seq_len, precision="float32", bos_id=vocab)
        else:
            logits_fn = adapters.ar_logits_fn(model, params)
            fn = lambda key: sampling.autoregressive_uncached(  # noqa: E731
                logits_fn, key, batch_size=batch, seq_len=seq_len, precision="float32", bos_id=vocab)
    else:
        denoise = adapters.denoise_fn(model, params)
        common = dict(batch_size=batch, seq_len=seq_len, mask_id=vocab, schedule=sched)
        if name.startswith("fhs"):
            prec = "float64" if name == "fhs_float64" else "float32"
            kk = k if name == "fhs_parallel" else 1
            fn = lambda key: sampling.first_hitting(denoise, key, precision=prec,  # noqa: E731
                                                    tokens_per_step=kk, **common)
            if kk == 1:
                compiled_mem = _fhs_compiled_memory(denoise, batch, seq_len, vocab, sched, prec)
        elif name.startswith("ancestral"):
            fn = lambda key: sampling.ancestral(  # noqa: E731
                denoise, key, num_steps=steps, precision="float32",
                cache=name != "ancestral_uncached", factorized=name == "ancestral_factorized", **common)
        elif name == "floor":
            fn = _floor(denoise, batch, seq_len, vocab)
        else:
            raise ValueError(f"unknown sampler {name!r}: choose from {', '.join(ALL)}")
    out = {"sampler": name, "batch": batch, "seq_len": seq_len, "vocab": vocab}
    if fn is not None:
        keys = [jax.random.key(i) for i in range(repeats + int(warmup))]
        if warmup:
            jax.block_until_ready(fn(keys.pop(0))[0])
        best, stats = float("inf"), {}
        for key in keys:
            t0 = time.perf_counter()
            tokens, stats = fn(key)
            jax.block_until_ready(tokens)
            best = min(best, time.perf_counter() - t0)
        out.update(seconds_per_sequence=best / batch, seconds_per_batch=best, nfe=int(stats["nfe"]),
                   steps=steps if name.startswith("ancestral") else None,
                   includes_compile=not warmup)
    out["rss_peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    out["device_peak_bytes"] = _device_peak()
    out["compiled_bytes"] = compiled_mem
    return out


def _child(name, argv_flags):
    cmd = [sys.executable, os.path.abspath(__file__), f"--one={name}", *argv_flags]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"benchmark of {name} failed:\n{res.stderr[-4000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def _fmt(v, digits=4):
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    return str(v)


def _machine():
    model = "unknown CPU"
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores"


def main(argv):
    del argv
    import jax
    from absl import flags
    f = flags.FLAGS
    config = f.config
    seq_len = int(f.seq_len or config.data.seq_len)
    if f.one:
        print(json.dumps(one(f.one, config, f.batch, seq_len, f.steps, f.tokens_per_step, f.repeats,
                             f.warmup)))
        return
    names = list(ALL) if f.samplers == "all" else [s.strip() for s in f.samplers.split(",") if s.strip()]
    # Children get the same flags (config overrides included), minus the sampler selection.
    passthrough = [a for a in sys.argv[1:] if not a.startswith(("--samplers", "--results", "--one"))]
    base = _child("baseline", passthrough)
    rows = [_child(n, passthrough) for n in names]
    for r in rows:
        r["rss_over_baseline_mb"] = r["rss_peak_mb"] - base["rss_peak_mb"]
    by = {r["sampler"]: r for r in rows}
    m = config.model
    shape = (f"{m.num_layers} layers, width {m.emb_dim}, {m.num_heads} heads, {m.mlp_type} {m.mlp_dim}, "
             f"time conditioning {bool(m.time_conditioning)}, V={m.vocab_size}, L={seq_len}, B={f.batch}, "
             f"compute {config.dtype.compute}")
    load = os.getloadavg()[0]
    head = (f"machine: {_machine()}, jax {jax.__version__}, device {jax.devices()[0].device_kind}; "
            f"1-min load {load:.1f}\nmodel: {shape}; ancestral N={f.steps}; "
            f"{'best of ' + str(f.repeats) + ' after a warm-up call' if f.warmup else 'one call incl. compilation'}")
    lines = ["| sampler | s/sequence | NFE | peak RSS MB (over baseline) | compiled MB |", "|---|---|---|---|---|"]
    for r in rows:
        comp = r["compiled_bytes"] / 2**20 if r["compiled_bytes"] else None
        lines.append(f"| {r['sampler']} | {_fmt(r.get('seconds_per_sequence'))} | {r.get('nfe', 'n/a')} | "
                     f"{_fmt(r['rss_peak_mb'])} ({_fmt(r['rss_over_baseline_mb'])}) | {_fmt(comp)} |")
    checks = []
    if "fhs" in by and "floor" in by:
        ratio = by["fhs"]["seconds_per_batch"] / by["floor"]["seconds_per_batch"]
        checks.append(f"FHS / floor = {ratio:.3f} (target <= 1.10)")
    if "fhs" in by and seq_len == 256 and m.vocab_size == 256 and m.num_layers == 6 and m.emb_dim == 512:
        s = by["fhs"]["seconds_per_sequence"]
        checks.append(f"FHS {s:.3f} s/sequence vs {BEST_PUBLIC_JAX_S_PER_SEQ} s of the best public JAX "
                      f"MDM sampler (1024 steps): {s / BEST_PUBLIC_JAX_S_PER_SEQ:.3f}x (target <= 0.25)")
    if "fhs" in by and "ancestral" in by:
        checks.append(f"cached ancestral (N={f.steps}) / FHS = "
                      f"{by['ancestral']['seconds_per_batch'] / by['fhs']['seconds_per_batch']:.2f}x")
    if "fhs" in by and "fhs_float64" in by:
        a, b = by["fhs"], by["fhs_float64"]
        if a["compiled_bytes"] and b["compiled_bytes"]:
            checks.append(f"FHS float64 / float32 compiled memory = {b['compiled_bytes'] / a['compiled_bytes']:.3f} "
                          "(target <= 1.1)")
        checks.append(f"FHS float64 / float32 peak RSS = {b['rss_peak_mb'] / a['rss_peak_mb']:.3f}, time "
                      f"{b['seconds_per_batch'] / a['seconds_per_batch']:.3f}")
    text = "\n".join([head, "", *lines, "", *[f"- {c}" for c in checks]])
    print(text)
    if f.results:
        with open(f.results, "a") as fh:
            fh.write(f"\n### `python benchmarks/sampling.py {' '.join(sys.argv[1:])}`\n\n{text}\n")


if __name__ == "__main__":
    from absl import app, flags
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", os.path.abspath(__file__),
                                    "Model config file (default: config.base(), the target shape).")
    flags.DEFINE_string("samplers", "fhs,fhs_parallel,fhs_float64,ancestral,ancestral_uncached,"
                        "ancestral_factorized,arm,arm_uncached,floor", "Comma list, or 'all'.")
    flags.DEFINE_integer("batch", 8, "Sequences per sampler call.")
    flags.DEFINE_integer("seq_len", 0, "Sequence length (0: config.data.seq_len).")
    flags.DEFINE_integer("steps", 1024, "Ancestral steps N.")
    flags.DEFINE_integer("tokens_per_step", 4, "k of fhs_parallel.")
    flags.DEFINE_integer("repeats", 2, "Timed calls per sampler (best is kept).")
    flags.DEFINE_boolean("warmup", True, "One untimed call first (excludes compilation).")
    flags.DEFINE_string("results", "", "Append the table to this markdown file (e.g. benchmarks/RESULTS.md).")
    flags.DEFINE_string("one", "", "Internal: run only this sampler and print JSON.")
    app.run(main)
