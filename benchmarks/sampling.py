"""Sampling benchmark: seconds per sequence interleaved with the floor of L network calls, NFE, memory.

  python benchmarks/sampling.py                                  # config.base()'s network, B=8
  python benchmarks/sampling.py --samplers=fhs,fhs_float64 --slots=7 --json=/tmp/sampling.json
  python benchmarks/sampling.py --config=configs/quickstart.py --samplers=all --steps=256
  python benchmarks/sampling.py --config.model.num_layers=2 --config.model.emb_dim=256 \\
      --config.model.num_heads=4 --config.model.mlp_dim=1024 --config.model.vocab_size=50257 \\
      --seq_len=4 --batch=1 --steps=10000 --samplers=fhs,ancestral --slots=1   # GPT-2 vocab, N=10^4

Without --config the network is `mdm_jax.config.base()`'s (6 layers, width 512, 8 heads, SwiGLU
1376, L=256, V=256, time-conditioned): the CPU target shape. Parameters are random (an untrained
network: with the zero-initialised output head every prediction is uniform, the worst case for
the ancestral cache). Samplers (--samplers, comma list or "all"):
  fhs, fhs_parallel (k=--tokens_per_step), fhs_float64   first-hitting, float32 / float64 draws
  ancestral, ancestral_uncached, ancestral_factorized    N = --steps, float32 draws
  arm, arm_uncached                                      the same backbone, causal, KV cache or not
and always the reference,
  floor        L dependent network calls in one compiled lax.fori_loop (each call's argmax fed
               back into the next input): what any exact one-token-per-call sampler must pay.

Time: one process builds the networks, calls every sampler once (compilation, warm-up), then runs
--slots slots; in each, the floor and then every sampler in turn, back to back (each called until
--min_seconds have passed; the slot's figure is the median of its calls). `mdm_jax.timing` records
each slot's 1-minute load and other processes' CPU use, flags the slots above --max_load and
summarises the kept ones; ratios (FHS / floor, float64 / float32, ancestral / FHS, ...) are per
slot, then summarised.
Memory (--memory, default on): each sampler again in its own fresh subprocess, one call. On
GPU/TPU the device's peak_bytes_in_use; on CPU the subprocess's peak resident set size
(VmHWM, reset at its start: a child inherits its parent's high-water mark) and its increase
over a baseline subprocess that only builds the network and runs one forward pass; for
fhs/fhs_float64 also XLA's compiled memory analysis of the sampler loop (temporaries + arguments
+ outputs), which isolates the sampler's own buffers.
"""

from __future__ import annotations

import copy
import importlib
import json
import os
import resource
import subprocess
import sys

# Run from a checkout without installation: the repository root holds the mdm_jax package.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from mdm_jax import (  # noqa: E402
    config as config_lib,  # noqa: E402
    models,
    objectives,
    rng,
    sampling,
    timing,
)
from mdm_jax.models import adapters  # noqa: E402

ALL = (
    "fhs",
    "fhs_parallel",
    "fhs_float64",
    "ancestral",
    "ancestral_uncached",
    "ancestral_factorized",
    "arm",
    "arm_uncached",
)
REFERENCE = "floor"
# Per-slot ratios reported when both samplers ran: (label, numerator, denominator).
RATIOS = (
    ("FHS / floor (target <= 1.10)", "fhs", "floor"),
    ("FHS float64 / float32 time", "fhs_float64", "fhs"),
    ("cached ancestral / FHS", "ancestral", "fhs"),
    ("uncached / cached ancestral", "ancestral_uncached", "ancestral"),
    ("factorized / cached ancestral", "ancestral_factorized", "ancestral"),
    ("FHS / FHS parallel", "fhs", "fhs_parallel"),
    ("ARM uncached / KV cache", "arm_uncached", "arm"),
)


def get_config():
    """The default benchmark shape: config.base() (lets config_flags load this file as --config)."""
    return config_lib.base()


def _build(config, seq_len, arm=False):
    c = copy.deepcopy(config)
    with c.unlocked():
        c.model.max_len = max(int(c.model.max_len), seq_len)
        c.model.dropout = 0.0
        if arm:
            c.objective.kind = "arm"
    model = models.build(c)
    tokens = jnp.zeros((1, seq_len), jnp.int32)
    t = jnp.zeros((1,), jnp.float32) if model.time_conditioning else None
    key = rng.fold(rng.root_key(0), "params")
    params = jax.jit(lambda k: model.init(k, tokens, t, deterministic=True))(key)["params"]
    return c, model, params


def _floor(denoise, batch, seq_len, vocab):
    """L dependent network calls in one compiled loop: call i's argmax at position i is fed back."""

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


def _fhs_compiled(denoise, batch, seq_len, vocab, sched, precision):
    """(run, bytes): the first-hitting loop compiled once, a call that runs it, and XLA's memory
    analysis of it (temporaries + arguments + outputs); (None, None) if that is unavailable."""
    try:
        # The package re-exports functions under these names: import the modules themselves.
        plumbing = importlib.import_module("mdm_jax.sampling.plumbing")
        first_hitting = importlib.import_module("mdm_jax.sampling.first_hitting")
        fn_args = importlib.import_module("mdm_jax.sampling.fn_args")
        fn_static, fn_leaves = fn_args.split(denoise)  # params enter the loop as traced arguments
        args = (jax.random.key(0), jnp.full((batch, seq_len), vocab, jnp.int32), jnp.float32(1.0), fn_leaves)
        with plumbing.sampler_scope(precision):
            compiled = first_hitting._fhs.lower(
                *args,
                denoise_fn=fn_static,
                batch_size=batch,
                seq_len=seq_len,
                mask_id=vocab,
                sched=plumbing.StaticSchedule(sched),
                precision=precision,
                k=1,
                num_iters=seq_len,
                batch_sharding=None,
            ).compile()
        m = compiled.memory_analysis()

        def run():
            with plumbing.sampler_scope(precision):
                return jax.block_until_ready(compiled(*args))

        return run, int(m.temp_size_in_bytes + m.argument_size_in_bytes + m.output_size_in_bytes)
    except Exception as e:  # noqa: BLE001 - private API of the sampler module; report, don't fail
        print(f"compiled memory analysis unavailable: {e!r}", file=sys.stderr)
        return None, None


class Samplers:
    """Builds each network once and hands out fn(key) -> (tokens, stats) per sampler name."""

    def __init__(self, config, batch, seq_len, steps, k):
        self.config, self.batch, self.seq_len, self.steps, self.k = config, batch, seq_len, steps, k
        self.vocab = int(config.model.vocab_size)
        self._nets = {}

    def net(self, arm: bool):
        if arm not in self._nets:
            self._nets[arm] = _build(self.config, self.seq_len, arm=arm)
        return self._nets[arm]

    def schedule(self):
        return objectives.schedule_of(self.config.objective)

    def fn(self, name):
        b, length, vocab = self.batch, self.seq_len, self.vocab
        if name.startswith("arm"):
            _, model, params = self.net(arm=True)
            if name == "arm":
                step_fn, state = adapters.ar_step_fn(model, params, b)
                return lambda key: sampling.autoregressive(
                    step_fn, state, key, batch_size=b, seq_len=length, precision="float32", bos_id=vocab
                )
            logits_fn = adapters.ar_logits_fn(model, params)
            return lambda key: sampling.autoregressive_uncached(
                logits_fn, key, batch_size=b, seq_len=length, precision="float32", bos_id=vocab
            )
        _, model, params = self.net(arm=False)
        denoise = adapters.denoise_fn(model, params)
        common = dict(batch_size=b, seq_len=length, mask_id=vocab, schedule=self.schedule())
        if name.startswith("fhs"):
            prec = "float64" if name == "fhs_float64" else "float32"
            kk = self.k if name == "fhs_parallel" else 1
            return lambda key: sampling.first_hitting(
                denoise, key, precision=prec, tokens_per_step=kk, **common
            )
        if name.startswith("ancestral"):
            return lambda key: sampling.ancestral(
                denoise,
                key,
                num_steps=self.steps,
                precision="float32",
                cache=name != "ancestral_uncached",
                factorized=name == "ancestral_factorized",
                **common,
            )
        if name == REFERENCE:
            return _floor(denoise, b, length, vocab)
        raise ValueError(f"--samplers: unknown sampler {name!r}; choose from {', '.join(ALL)} or 'all'")

    def compiled_fhs(self, name):
        """(run, compiled bytes) of the first-hitting loop for fhs / fhs_float64 (else None, None)."""
        if name not in ("fhs", "fhs_float64"):
            return None, None
        _, model, params = self.net(arm=False)
        prec = "float64" if name == "fhs_float64" else "float32"
        return _fhs_compiled(
            adapters.denoise_fn(model, params), self.batch, self.seq_len, self.vocab, self.schedule(), prec
        )


def _reset_peak_rss() -> None:
    """A child's peak RSS starts at its parent's at fork time (Linux copies the high-water mark):
    reset it to the current RSS ("5" > /proc/self/clear_refs), so the figure is this process's."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _peak_rss_mb() -> float:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # kB on Linux


def memory_one(name, config, batch, seq_len, steps, k) -> dict:
    """One sampler in this (fresh) process: one call (compilation included), then its peak memory."""
    _reset_peak_rss()
    s = Samplers(config, batch, seq_len, steps, k)
    out = {"sampler": name, "compiled_bytes": None}
    if name == "baseline":
        _, model, params = s.net(arm=False)
        denoise = adapters.denoise_fn(model, params)
        x = jnp.full((batch, seq_len), s.vocab, jnp.int32)
        # The params enter as arguments (denoise is a Partial, a pytree), as in the samplers' loops:
        # closed over, XLA would fold them into the executable as constants and inflate the baseline.
        forward = jax.jit(lambda fn, tokens, t: fn(tokens, t))
        jax.block_until_ready(forward(denoise, x, jnp.zeros((batch,), jnp.float32)))
    else:
        # fhs: run the loop XLA analysed (one compilation, not two); others: the public call.
        run, out["compiled_bytes"] = s.compiled_fhs(name)
        if run is None:
            jax.block_until_ready(s.fn(name)(rng.fold(rng.root_key(0), "sample", 0)))
        else:
            run()
    out["rss_peak_mb"] = _peak_rss_mb()
    out["device_peak_bytes"] = (jax.devices()[0].memory_stats() or {}).get("peak_bytes_in_use")
    return out


def time_samplers(
    names,
    config,
    batch,
    seq_len,
    steps,
    k,
    num_slots,
    min_seconds,
    max_load,
    log=lambda line: print(line, file=sys.stderr, flush=True),
) -> dict:
    s = Samplers(config, batch, seq_len, steps, k)
    order = [REFERENCE] + [n for n in names if n != REFERENCE]
    stats = {}

    def measure(name, fn, idx):
        def call(i):
            tokens, stats[name] = fn(rng.fold(rng.root_key(0), "sample", idx, i))
            return tokens

        return call

    measures = {name: measure(name, s.fn(name), idx) for idx, name in enumerate(order)}
    ratios = {
        label: (lambda sec, a=a, b=b: sec[a] / sec[b])
        for label, a, b in RATIOS
        if a in measures and b in measures
    }
    slots = timing.run_slots(measures, num_slots, min_seconds, log=log)
    result = timing.summarize(slots, max_load, ratios)
    nfe = {name: int(st["nfe"]) for name, st in stats.items()}
    return {"slots": slots, "result": result, "nfe": nfe, "order": order}


def _child(name, argv_flags):
    cmd = [sys.executable, os.path.abspath(__file__), f"--one={name}", *argv_flags]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"memory run of {name} failed:\n{res.stderr[-4000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def _fmt(v, digits=4):
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    return str(v)


def report(out: dict) -> str:
    env, f, t = out["environment"], out["flags"], out["timing"]
    res = t["result"]
    summary = res["summary"] or res["all_slots_load_affected"]
    b = f["batch"]
    per_seq = lambda name, sec: f"{sec / b:.4g} s/seq"  # noqa: E731
    head = [
        f"machine: {env['cpu_model']}, {env['cpu_count']} cores; device {env['device_kind']}; "
        f"jax {env['jax_version']}; default matmul precision {env['jax_default_matmul_precision']} "
        f"(float32 matmuls as {env['f32_matmul']})",
        f"model: {out['shape']}; ancestral N={f['steps']}; {f['slots']} slots (order "
        f"{', '.join(t['order'])}), each sampler called for >= {f['min_seconds']} s per slot after a "
        "warm-up call",
        "",
        *[timing.format_slot(sl, per_seq) for sl in t["slots"]],
        *timing.format_summary(res, per_seq),
        "",
    ]
    tag = "" if res["kept"] else " (load-affected: no slot kept)"
    mem = out.get("memory") or {}
    lines = [
        f"| sampler | s/sequence, median{tag} | best | spread | NFE | peak RSS MB (over baseline) "
        "| compiled MB | device peak MB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in t["order"]:
        m = summary["measures"][name]
        r = mem.get(name, {})
        comp = r["compiled_bytes"] / 2**20 if r.get("compiled_bytes") else None
        dev = r["device_peak_bytes"] / 2**20 if r.get("device_peak_bytes") else None
        rss = f"{_fmt(r.get('rss_peak_mb'))} ({_fmt(r.get('rss_over_baseline_mb'))})" if r else "n/a"
        lines.append(
            f"| {name} | {_fmt(m['median'] / b)} | {_fmt(m['best'] / b)} | "
            f"{100 * m['spread']:.1f}% | "
            f"{t['nfe'].get(name, 'n/a')} | {rss} | {_fmt(comp)} | {_fmt(dev)} |"
        )
    checks = []
    if "fhs" in mem and "fhs_float64" in mem:
        a, c = mem["fhs"], mem["fhs_float64"]
        if a["compiled_bytes"] and c["compiled_bytes"]:
            checks.append(
                "FHS float64 / float32 compiled memory = "
                f"{c['compiled_bytes'] / a['compiled_bytes']:.3f} "
                "(target <= 1.1)"
            )
        checks.append(f"FHS float64 / float32 peak RSS = {c['rss_peak_mb'] / a['rss_peak_mb']:.3f}")
    return "\n".join([*head, *lines, "", *[f"- {c}" for c in checks]])


def main(argv):
    del argv
    from absl import flags

    f = flags.FLAGS
    config = f.config
    seq_len = int(f.seq_len or config.data.seq_len)
    if f.one:
        print(json.dumps(memory_one(f.one, config, f.batch, seq_len, f.steps, f.tokens_per_step)))
        return
    names = list(ALL) if f.samplers == "all" else [s.strip() for s in f.samplers.split(",") if s.strip()]
    unknown = [n for n in names if n not in ALL and n != REFERENCE]
    if unknown:
        raise SystemExit(f"--samplers: unknown {', '.join(unknown)}; choose from {', '.join(ALL)} or 'all'")
    if f.slots < 1 or f.min_seconds < 0:
        raise SystemExit(f"--slots={f.slots} must be >= 1 and --min_seconds={f.min_seconds} >= 0")
    max_load = f.max_load if f.max_load > 0 else timing.default_max_load()
    m = config.model
    out = {
        "benchmark": "sampling",
        "environment": timing.environment(config),
        "shape": (
            f"{m.num_layers} layers, width {m.emb_dim}, {m.num_heads} heads, "
            f"{m.mlp_type} {m.mlp_dim}, "
            f"time conditioning {bool(m.time_conditioning)}, V={m.vocab_size}, L={seq_len}, "
            f"B={f.batch}, compute {config.dtype.compute}"
        ),
        "flags": {
            "batch": f.batch,
            "seq_len": seq_len,
            "steps": f.steps,
            "tokens_per_step": f.tokens_per_step,
            "slots": f.slots,
            "min_seconds": f.min_seconds,
            "max_load": max_load,
        },
    }
    out["timing"] = time_samplers(
        names, config, f.batch, seq_len, f.steps, f.tokens_per_step, f.slots, f.min_seconds, max_load
    )
    if f.memory:
        # Children get the same flags (config overrides included), minus the selection and outputs.
        skip = ("--samplers", "--results", "--one", "--json")
        passthrough = [a for a in sys.argv[1:] if not a.startswith(skip)]
        base = _child("baseline", passthrough)
        out["memory"] = {"baseline": base}
        for name in out["timing"]["order"][1:]:  # the samplers, not the floor
            r = _child(name, passthrough)
            r["rss_over_baseline_mb"] = r["rss_peak_mb"] - base["rss_peak_mb"]
            out["memory"][name] = r
    text = report(out)
    print(text)
    if f.json:
        timing.write_json(f.json, out)
        print(f"wrote {f.json}")
    if f.results:
        with open(f.results, "a") as fh:
            fh.write(f"\n### `python benchmarks/sampling.py {' '.join(sys.argv[1:])}`\n\n{text}\n")


if __name__ == "__main__":
    from absl import app, flags
    from ml_collections import config_flags

    config_flags.DEFINE_config_file(
        "config", os.path.abspath(__file__), "Model config file (default: config.base(), the target shape)."
    )
    flags.DEFINE_string(
        "samplers",
        "fhs,fhs_parallel,fhs_float64,ancestral,ancestral_uncached,ancestral_factorized,arm,arm_uncached",
        "Comma list, or 'all' (the floor always runs).",
    )
    flags.DEFINE_integer("batch", 8, "Sequences per sampler call.")
    flags.DEFINE_integer("seq_len", 0, "Sequence length (0: config.data.seq_len).")
    flags.DEFINE_integer("steps", 1024, "Ancestral steps N.")
    flags.DEFINE_integer("tokens_per_step", 4, "k of fhs_parallel.")
    flags.DEFINE_integer("slots", 5, "Slots; each times the floor and every sampler back to back.")
    flags.DEFINE_float("min_seconds", 0.0, "Each sampler is called for at least this long per slot.")
    flags.DEFINE_float(
        "max_load",
        0.0,
        "Slots whose 1-minute load exceeds this are flagged and left out "
        "of the summary (<= 0: CPU cores + 0.5).",
    )
    flags.DEFINE_boolean("memory", True, "Also measure each sampler's peak memory in a fresh subprocess.")
    flags.DEFINE_string(
        "json", "", "Also write everything (environment, slots, summary, memory) to this file."
    )
    flags.DEFINE_string("results", "", "Append the text to this markdown file.")
    flags.DEFINE_string("one", "", "Internal: peak memory of this sampler alone, printed as JSON.")
    app.run(main)
