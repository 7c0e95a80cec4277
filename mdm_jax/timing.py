"""Wall-clock measurement that holds up on a shared machine: interleaved slots with recorded load.

A single timing of A followed by a single timing of B says little when other jobs share the
machine: the load changes between them, and a ratio A/B then measures the load, not the code.
So every benchmark here (benchmarks/train_throughput.py, benchmarks/sampling.py, and the
sampler_speed experiment's `best_time`) goes through this module:

    slots = timing.run_slots({"matmul": ref, "train": step}, num_slots=7, min_seconds=2.0)
    summary = timing.summarize(slots, max_load=timing.default_max_load(),
                               ratios={"train/matmul": lambda s: s["train"] / s["matmul"]})

- `run_slots` calls each measure once untimed (compilation, warm-up), then runs slots: in each
  slot every measure in turn (A, B, A, B, ...), each called until `min_seconds` have passed (at
  least once; the slot's figure is the median of its calls). Each slot records the 1-minute load
  average (`os.getloadavg()`) at its start and end, and, on Linux, how many cores' worth of CPU
  time other processes used during it (`/proc/stat` busy time, steal included, minus this
  process's own CPU time): the load average lags by about a minute, this does not.
- `summarize` flags every slot whose load (the larger of start and end) exceeds `max_load` and
  leaves it out of the summary: per measure the median over kept slots, the best single call,
  the slot range and the spread (max - min) / median; per ratio the median of per-slot ratios,
  each computed only from figures measured back to back in one slot. With no slot kept it says
  so and gives the all-slot figures separately, marked load-affected.
- `environment` records what the figures depend on: device kind, versions, CPU model and cores,
  and the float32 matmul precision in force (measured, not assumed: on NVIDIA GPUs XLA's default
  runs float32 matmuls with TF32 inputs, on TPUs with bfloat16 passes).
- `peak_flops` is the published dense peak of the device for a compute dtype, for MFU.
"""

from __future__ import annotations

import math
import os
import statistics
import subprocess
import time
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mdm_jax import report

# Published dense (no sparsity) peak FLOP/s per chip, by a substring of jax's device_kind; the
# first match wins, so more specific names come first. Keys: the compute dtype ("bfloat16",
# "float16") or, for float32 compute, the matmul class actually in force ("tf32" when XLA rounds
# float32 inputs to TF32, "float32" when it does not; see matmul_precision_in_force).
_NVIDIA = "NVIDIA datasheet (tensor-core dense, i.e. half the 'with sparsity' figure)"
_TPU = "Google Cloud TPU system architecture page (per chip)"
PEAK_FLOPS = (
    ("H200 NVL", {"bfloat16": 835e12, "float16": 835e12, "tf32": 417.5e12, "float32": 60e12}, _NVIDIA),
    ("H200", {"bfloat16": 989e12, "float16": 989e12, "tf32": 494.5e12, "float32": 67e12}, _NVIDIA + ", SXM"),
    ("H100 NVL", {"bfloat16": 835e12, "float16": 835e12, "tf32": 417.5e12, "float32": 60e12}, _NVIDIA),
    ("H100 PCIe", {"bfloat16": 756e12, "float16": 756e12, "tf32": 378e12, "float32": 51e12}, _NVIDIA),
    ("H100", {"bfloat16": 989e12, "float16": 989e12, "tf32": 494.5e12, "float32": 67e12}, _NVIDIA + ", SXM"),
    ("A100", {"bfloat16": 312e12, "float16": 312e12, "tf32": 156e12, "float32": 19.5e12}, _NVIDIA),
    ("TPU v4", {"bfloat16": 275e12}, _TPU),
    ("TPU v5 lite", {"bfloat16": 197e12}, _TPU + ", v5e"),
    ("TPU v5e", {"bfloat16": 197e12}, _TPU),
    ("TPU v5p", {"bfloat16": 459e12}, _TPU),
    ("TPU v5", {"bfloat16": 459e12}, _TPU + ", v5p"),
    ("TPU v6 lite", {"bfloat16": 918e12}, _TPU + ", v6e"),
    ("TPU v6e", {"bfloat16": 918e12}, _TPU),
)


def peak_flops(device_kind: str, compute_dtype: str, f32_matmul: str = "float32"):
    """(peak FLOP/s, the figure's name and source) for MFU, or None when the table has no entry.

    f32_matmul: for float32 compute, the class measured by matmul_precision_in_force()
    ("float32", "tf32" or "bfloat16"): the peak of the arithmetic the matmuls really ran in.
    """
    key = f32_matmul if compute_dtype == "float32" else compute_dtype
    for kind, peaks, source in PEAK_FLOPS:
        if kind.lower() in device_kind.lower():
            if key not in peaks:
                return None
            return peaks[key], f"{kind} {key} dense {peaks[key] / 1e12:g} TFLOP/s ({source})"
    return None


def classify_f32_matmul(rel_error: float) -> str:
    """The arithmetic a float32 matmul ran in, from its error against a float64 product.

    Unit roundoff 2^-24 (float32), 2^-11 (TF32: 10 stored mantissa bits), 2^-8 (bfloat16). The
    relative Frobenius error of matmul_precision_in_force's K=512 product of normals is about
    4e-7 in float32 (accumulation included), 3e-4 with TF32 inputs and 2.3e-3 with bfloat16
    inputs; each threshold lies a factor 2.7 or more from both neighbours. (Three-pass bfloat16,
    TPU's "HIGH", lands in the TF32 class, as it should: about that many mantissa bits.)
    """
    if rel_error < 1e-5:
        return "float32"
    if rel_error < 8e-4:
        return "tf32"
    return "bfloat16"


def matmul_precision_in_force() -> dict:
    """jax's default matmul precision setting and what a float32 matmul actually computes."""
    gen = np.random.default_rng(0)
    a = gen.standard_normal((256, 512))
    b = gen.standard_normal((512, 256))
    got = np.asarray(jax.jit(jnp.matmul)(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)))
    exact = a @ b
    err = float(np.linalg.norm(got - exact) / np.linalg.norm(exact))
    return {
        "jax_default_matmul_precision": str(jax.config.jax_default_matmul_precision or "DEFAULT"),
        "f32_matmul_rel_error": err,
        "f32_matmul": classify_f32_matmul(err),
    }


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown CPU"
    for line in out.splitlines():
        if line.startswith("Model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


def environment(config=None) -> dict:
    """report.metadata (device, versions, time, command, config) + CPU and matmul precision."""
    import jaxlib

    env = report.metadata(
        config,
        jaxlib_version=jaxlib.__version__,
        cpu_model=cpu_model(),
        cpu_count=os.cpu_count(),
        **matmul_precision_in_force(),
    )
    return env


def default_max_load() -> float:
    """Cores + 0.5: a benchmark keeps up to one runnable thread per core itself, so a 1-minute
    load above that means other work competed for the cores during the slot."""
    return float(os.cpu_count() or 1) + 0.5


def timed_call(fn: Callable, *args) -> tuple[float, Any]:
    """(seconds, result) of fn(*args), blocked until every array in the result exists."""
    start = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    return time.perf_counter() - start, out


def best_time(fn: Callable, keys) -> tuple[float, Any]:
    """fn(keys[0]) untimed (compilation, warm-up), then fn(k) timed for each other key: (best s,
    last result). For cells timed one after another, not interleaved: no load is recorded."""
    out = jax.block_until_ready(fn(keys[0]))
    best = math.inf
    for k in keys[1:]:
        seconds, out = timed_call(fn, k)
        best = min(best, seconds)
    return best, out


def matmul_reference(n: int, dtype) -> tuple[Callable[[int], Any], float]:
    """(call, FLOPs per call): a jitted [n, n] @ [n, n] in `dtype` accumulating in float32
    (preferred_element_type), on operands made once. Size n so that one call loads the device:
    2048 for a CPU, 8192 or more in bfloat16 for a GPU/TPU (a 2048^3 bfloat16 matmul reaches only
    about a fifth of an H200's peak)."""
    a = jax.random.normal(jax.random.key(0), (n, n), dtype)
    b = jax.random.normal(jax.random.key(1), (n, n), dtype)
    f = jax.jit(lambda x, y: jnp.matmul(x, y, preferred_element_type=jnp.float32))
    return (lambda i: f(a, b)), 2.0 * n**3


class _CpuMeter:
    """Cores' worth of CPU time used by other processes between start() and stop() (Linux)."""

    def __init__(self):
        self.ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

    @staticmethod
    def _busy_ticks():
        try:
            with open("/proc/stat") as f:
                v = [int(x) for x in f.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        # user nice system idle iowait irq softirq steal ...: all but idle and iowait are busy
        # (steal: a hypervisor gave the core to another guest, as good as another process).
        return sum(v[:8]) - v[3] - v[4]

    def start(self):
        self._t, self._own, self._busy = time.perf_counter(), time.process_time(), self._busy_ticks()

    def stop(self):
        busy = self._busy_ticks()
        wall = time.perf_counter() - self._t
        if busy is None or self._busy is None or wall <= 0:
            return None
        others = (busy - self._busy) / self.ticks - (time.process_time() - self._own)
        return max(0.0, others / wall)


def run_slots(
    measures: Mapping[str, Callable[[int], Any]],
    num_slots: int,
    min_seconds: float = 0.0,
    warmup: bool = True,
    load_fn: Callable[[], float] = lambda: os.getloadavg()[0],
    clock: Callable[[], float] = time.perf_counter,
    log: Callable[[str], None] | None = None,
    meter=None,
) -> list[dict]:
    """Runs every measure in turn in each of num_slots slots; returns one dict per slot.

    measures: name -> fn(call_index) returning arrays to block on (call_index counts that
    measure's calls from 0, warm-up included, so it can pick a fresh key). Slot dict: index,
    load_1m_start, load_1m_end, others_cpu (cores; None off Linux), seconds {name: median of the
    slot's calls}, calls {name: [seconds of each call]}.
    """
    if num_slots < 1:
        raise ValueError(f"num_slots={num_slots}: need at least one slot")
    meter = _CpuMeter() if meter is None else meter
    counts = {name: 0 for name in measures}

    def call(name):
        start = clock()
        jax.block_until_ready(measures[name](counts[name]))
        counts[name] += 1
        return clock() - start

    if warmup:
        for name in measures:
            seconds = call(name)
            if log:
                log(f"warm-up {name}: {seconds:.3f} s (first call: compilation unless compiled ahead)")
    slots = []
    for i in range(num_slots):
        slot = {"index": i, "load_1m_start": float(load_fn()), "seconds": {}, "calls": {}}
        meter.start()
        for name in measures:
            times, first = [], clock()
            while not times or clock() - first < min_seconds:
                times.append(call(name))
            slot["calls"][name] = times
            slot["seconds"][name] = statistics.median(times)
        slot["others_cpu"] = meter.stop()
        slot["load_1m_end"] = float(load_fn())
        slots.append(slot)
        if log:
            log(format_slot(slot))
    return slots


def slot_load(slot: Mapping) -> float:
    return max(slot["load_1m_start"], slot["load_1m_end"])


def _stats(values: list[float], spread: bool = True) -> dict:
    med = statistics.median(values)
    lo, hi = min(values), max(values)
    out = {"median": med, "min": lo, "max": hi, "n": len(values)}
    if spread:  # relative to the median: for times, not for ratios that may sit near zero
        out["spread"] = (hi - lo) / med
    return out


def _summary_of(slots, ratios) -> dict:
    names = list(slots[0]["seconds"])
    measures = {}
    for name in names:
        s = _stats([sl["seconds"][name] for sl in slots])
        s["best"] = min(t for sl in slots for t in sl["calls"][name])
        measures[name] = s
    out = {"slots": [sl["index"] for sl in slots], "measures": measures, "ratios": {}}
    for label, fn in (ratios or {}).items():
        per_slot = [float(fn(sl["seconds"])) for sl in slots]
        out["ratios"][label] = {**_stats(per_slot, spread=False), "per_slot": per_slot}
    return out


def summarize(slots: list[dict], max_load: float, ratios: Mapping[str, Callable] | None = None) -> dict:
    """Flags slots above max_load (sets slot["flagged"]) and summarises the kept ones.

    ratios: label -> fn(slot["seconds"]) -> float, evaluated per slot (figures measured back to
    back) and then summarised; never a ratio of two medians taken from different slots.
    Returns {"max_load", "num_slots", "kept", "flagged", "summary" (kept slots, or None),
    "all_slots_load_affected" (only when no slot was kept)}.
    """
    for sl in slots:
        sl["flagged"] = slot_load(sl) > max_load
    kept = [sl for sl in slots if not sl["flagged"]]
    out = {
        "max_load": max_load,
        "num_slots": len(slots),
        "kept": len(kept),
        "flagged": len(slots) - len(kept),
        "summary": _summary_of(kept, ratios) if kept else None,
    }
    if not kept and slots:
        out["all_slots_load_affected"] = _summary_of(slots, ratios)
    return out


def format_slot(slot: Mapping, show: Callable[[str, float], str] | None = None) -> str:
    show = show or (lambda name, s: f"{s:.4g} s")
    others = slot.get("others_cpu")
    parts = [
        f"{n} {show(n, s)}" + (f" (x{len(slot['calls'][n])})" if len(slot["calls"][n]) > 1 else "")
        for n, s in slot["seconds"].items()
    ]
    flag = "  FLAGGED (load above threshold)" if slot.get("flagged") else ""
    return (
        f"slot {slot['index']}: load {slot['load_1m_start']:.2f}->{slot['load_1m_end']:.2f}"
        + (f", others' CPU {others:.2f} cores" if others is not None else "")
        + ": "
        + ", ".join(parts)
        + flag
    )


def format_summary(result: Mapping, show: Callable[[str, float], str] | None = None) -> list[str]:
    """Lines: the flagging rule and count, then per measure and per ratio the median and spread."""
    show = show or (lambda name, s: f"{s:.4g} s")
    lines = [
        f"slots kept: {result['kept']} of {result['num_slots']} (a slot whose 1-minute load, the "
        f"larger of start and end, exceeds {result['max_load']:.2f} is flagged and left out)"
    ]
    summary = result["summary"]
    if summary is None:
        lines.append("NO SLOT KEPT: the figures below are over all slots, load-affected; do not quote them")
        summary = result.get("all_slots_load_affected")
        if summary is None:
            return lines
    for name, s in summary["measures"].items():
        lines.append(
            f"  {name}: median {show(name, s['median'])}, best call {show(name, s['best'])}, "
            f"fastest slot {show(name, s['min'])}, slowest {show(name, s['max'])} "
            f"(spread {100 * s['spread']:.1f}% of the median, {s['n']} slots)"
        )
    for label, r in summary["ratios"].items():
        lines.append(
            f"  {label} (per slot, back to back): median {r['median']:.4g}, "
            f"range {r['min']:.4g} .. {r['max']:.4g} over {r['n']} slots"
        )
    return lines


def write_json(path: str, payload: Mapping) -> str:
    return report.write_json(path, payload)
