"""mdm_jax.timing: slot order, load flagging, per-slot ratios, peaks, matmul precision class.

No test here asserts a measured duration: clocks and loads are injected (synthetic), and the
end-to-end runs of the two benchmarks check what they record, never how fast anything was.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT
from mdm_jax import timing


class FakeClock:
    """Advances by the duration the running measure declares: deterministic 'timings'."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


class NullMeter:
    def start(self):
        pass

    def stop(self):
        return None


def _slot(index, load, seconds):
    return {
        "index": index,
        "load_1m_start": load,
        "load_1m_end": load,
        "others_cpu": None,
        "seconds": dict(seconds),
        "calls": {k: [v] for k, v in seconds.items()},
    }


def test_run_slots_interleaves_warms_up_and_repeats_to_min_seconds():
    clock, order = FakeClock(), []
    loads = iter([0.5, 0.7, 0.7, 3.0, 3.0, 0.2])

    def measure(name, duration):
        def call(i):
            order.append((name, i))
            clock.now += duration
            return np.zeros(1)

        return call

    slots = timing.run_slots(
        {"A": measure("A", 0.4), "B": measure("B", 1.5)},
        num_slots=3,
        min_seconds=1.0,
        load_fn=lambda: next(loads),
        clock=clock,
        meter=NullMeter(),
    )
    # Warm-up once each, then per slot A until >= 1 s has passed (3 calls of 0.4 s), then B once.
    expected = [("A", 0), ("B", 0)]
    for s in range(3):
        expected += [("A", 1 + 3 * s), ("A", 2 + 3 * s), ("A", 3 + 3 * s), ("B", 1 + s)]
    assert order == expected
    assert [len(s["calls"]["A"]) for s in slots] == [3, 3, 3]
    assert slots[0]["seconds"] == {"A": pytest.approx(0.4), "B": pytest.approx(1.5)}
    assert [(s["load_1m_start"], s["load_1m_end"]) for s in slots] == [(0.5, 0.7), (0.7, 3.0), (3.0, 0.2)]
    with pytest.raises(ValueError, match="num_slots"):
        timing.run_slots({"A": measure("A", 0.1)}, num_slots=0)


def test_summarize_flags_loaded_slots_and_takes_ratios_within_a_slot():
    # Slot 2 is loaded (everything 3x slower) and must not count. Ratios per slot: B/A is 2.0 in
    # every kept slot although A and B vary between slots; a ratio of medians would give 2.5/1.0.
    slots = [
        _slot(0, 1.0, {"A": 1.0, "B": 2.0}),
        _slot(1, 1.5, {"A": 2.0, "B": 4.0}),
        _slot(2, 5.0, {"A": 3.0, "B": 9.0}),
        _slot(3, 0.5, {"A": 0.5, "B": 1.0}),
    ]
    res = timing.summarize(slots, max_load=2.0, ratios={"B/A": lambda s: s["B"] / s["A"]})
    assert [s["flagged"] for s in slots] == [False, False, True, False]
    assert (res["kept"], res["flagged"], res["num_slots"]) == (3, 1, 4)
    summary = res["summary"]
    assert summary["slots"] == [0, 1, 3]
    a = summary["measures"]["A"]
    assert (a["median"], a["min"], a["max"], a["best"], a["n"]) == (1.0, 0.5, 2.0, 0.5, 3)
    assert a["spread"] == pytest.approx(1.5)
    r = summary["ratios"]["B/A"]
    assert r["per_slot"] == [2.0, 2.0, 2.0] and r["median"] == 2.0
    assert "all_slots_load_affected" not in res
    text = "\n".join(timing.format_summary(res))
    assert "slots kept: 3 of 4" in text and "exceeds 2.00" in text
    assert "FLAGGED" in timing.format_slot(slots[2]) and "FLAGGED" not in timing.format_slot(slots[0])


def test_a_slot_is_flagged_by_the_larger_of_its_start_and_end_load():
    s = _slot(0, 1.0, {"A": 1.0})
    s["load_1m_end"] = 2.5
    timing.summarize([s], max_load=2.0)
    assert s["flagged"]


def test_no_kept_slot_gives_no_summary_and_says_so():
    slots = [_slot(0, 4.0, {"A": 1.0}), _slot(1, 6.0, {"A": 3.0})]
    res = timing.summarize(slots, max_load=2.0)
    assert res["summary"] is None and res["kept"] == 0
    assert res["all_slots_load_affected"]["measures"]["A"]["median"] == 2.0
    assert "NO SLOT KEPT" in "\n".join(timing.format_summary(res))


def test_peak_table_picks_the_specific_entry_and_the_matmul_class():
    assert timing.peak_flops("NVIDIA H200", "bfloat16")[0] == 989e12
    assert timing.peak_flops("NVIDIA H100 PCIe", "bfloat16")[0] == 756e12
    assert timing.peak_flops("NVIDIA H100 80GB HBM3", "float32", "tf32")[0] == 494.5e12
    assert timing.peak_flops("NVIDIA H100 80GB HBM3", "float32", "float32")[0] == 67e12
    assert timing.peak_flops("NVIDIA A100-SXM4-80GB", "bfloat16")[0] == 312e12
    assert timing.peak_flops("TPU v5 lite", "bfloat16")[0] == 197e12  # not v5p's 459
    assert timing.peak_flops("TPU v5", "bfloat16")[0] == 459e12
    assert timing.peak_flops("TPU v6 lite", "bfloat16")[0] == 918e12
    assert timing.peak_flops("TPU v4", "float32", "bfloat16")[0] == 275e12  # f32 run as bf16 passes
    assert timing.peak_flops("TPU v4", "float32", "float32") is None
    assert timing.peak_flops("cpu", "float32") is None
    assert "989" in timing.peak_flops("NVIDIA H200", "bfloat16")[1]


def _round_mantissa(x, bits):
    """Rounds float64 values to `bits` stored mantissa bits (round to nearest)."""
    m, e = np.frexp(x)
    return np.ldexp(np.round(m * 2.0 ** (bits + 1)) / 2.0 ** (bits + 1), e)


def test_matmul_class_thresholds_separate_real_roundings():
    gen = np.random.default_rng(0)
    a, b = gen.standard_normal((256, 512)), gen.standard_normal((512, 256))
    exact = a @ b
    for bits, cls in ((23, "float32"), (10, "tf32"), (7, "bfloat16")):
        got = _round_mantissa(a, bits) @ _round_mantissa(b, bits)
        err = np.linalg.norm(got - exact) / np.linalg.norm(exact)
        assert timing.classify_f32_matmul(err) == cls, (bits, err)
    # XLA's CPU backend computes float32 dots in float32 under the default precision.
    got = timing.matmul_precision_in_force()
    assert got["f32_matmul"] == "float32" and got["jax_default_matmul_precision"] == "DEFAULT"


def test_best_time_warms_up_once_and_returns_the_last_result():
    calls = []
    best, out = timing.best_time(lambda k: calls.append(k) or (np.asarray(k), {"nfe": k}), [0, 1, 2])
    assert calls == [0, 1, 2] and out[1] == {"nfe": 2} and best >= 0.0


def _run(script, *args):
    r = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", script), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout


TINY = [
    "--config.model.num_layers=1",
    "--config.model.emb_dim=32",
    "--config.model.num_heads=2",
    "--config.model.mlp_dim=64",
]


@pytest.mark.slow
def test_train_throughput_records_slots_loads_and_environment(tmp_path):
    path = tmp_path / "tt.json"
    # A threshold no load can pass: every slot is flagged, and the output must say so.
    out = _run(
        "train_throughput.py",
        *TINY,
        "--config.data.seq_len=16",
        "--config.model.max_len=16",
        "--config.train.batch_size=2",
        "--slots=2",
        "--min_seconds=0",
        "--max_load=1e-9",
        "--train_only",
        f"--json={path}",
    )
    d = json.loads(path.read_text())
    assert "NO SLOT KEPT" in out and "load-affected" in out
    assert d["result"]["kept"] == 0 and len(d["slots"]) == 2 and all(s["flagged"] for s in d["slots"])
    assert d["method"]["order_in_slot"] == ["matmul", "train"]
    assert {"device_kind", "jax_version", "jax_default_matmul_precision", "f32_matmul", "cpu_model"} <= set(
        d["environment"]
    )
    assert d["peak"] is None and "no MFU" in out  # a CPU has no published peak in the table
    assert d["matmul_reference"]["n"] == 2048
    for s in d["slots"]:
        assert set(s["seconds"]) == {"matmul", "train"} and s["load_1m_start"] >= 0


@pytest.mark.slow
def test_sampling_times_against_the_floor_and_measures_memory(tmp_path):
    path = tmp_path / "s.json"
    out = _run(
        "sampling.py",
        *TINY,
        "--seq_len=8",
        "--batch=2",
        "--samplers=fhs,fhs_float64",
        "--slots=2",
        "--max_load=1e6",
        f"--json={path}",
    )
    d = json.loads(path.read_text())
    t = d["timing"]
    assert t["order"] == ["floor", "fhs", "fhs_float64"] and t["result"]["kept"] == 2
    assert t["nfe"] == {"floor": 8, "fhs": 8, "fhs_float64": 8}
    assert len(t["result"]["summary"]["ratios"]["FHS / floor (target <= 1.10)"]["per_slot"]) == 2
    mem = d["memory"]
    # float64 draws gather the chosen position's logits before casting: no [B, L, V] float64 buffer.
    assert mem["fhs_float64"]["compiled_bytes"] <= 1.1 * mem["fhs"]["compiled_bytes"]
    assert "slots kept: 2 of 2" in out and "FHS float64 / float32 compiled memory" in out
