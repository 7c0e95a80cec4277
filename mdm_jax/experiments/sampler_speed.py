"""Experiment sampler_speed: the paper's 20x claim (docs/paper.md section 3) and the cost of no KV cache.

1. Wall time per sequence of the first-hitting sampler (FHS) vs the cached ancestral sampler for
   N from L up to 10^4, at two vocabulary sizes (bytes, 256, and GPT-2's 50,257), on an untrained
   network of the `owt_mdm_small` shape scaled down to this machine (config.model.*).
2. The paper's cost model, time = NFE x t_net + draws x t_cat (draws = categories drawn: N B L (V+1)
   for ancestral, B L V for FHS), fitted by non-negative least squares per vocabulary; its
   predicted speed-up is shown next to the measured one, and extrapolated to the N that are too
   slow to run here (experiment.predict_steps).
3. The ARM on the same backbone (causal) with its KV cache (`sampling.autoregressive`) vs without
   (`sampling.autoregressive_uncached`, one full causal forward per token) as a function of L.

Timing: every cell is run once to compile (and warm up), then timed `experiment.repeats` times
with fresh keys (results block on the host), and the best time is kept. The MDM samples
`sampling.batch_size` sequences of L = sampling.seq_len (0: data.seq_len) with `sampling.precision`.
The timed cells are in sampler_speed_timings.py; this module fits the cost model and reports.

Command (from the repository root, ~5 minutes on 2 CPU cores):
  python -m mdm_jax.main --mode=experiment --config=configs/experiments/sampler_speed.py \\
      --workdir=workdirs/sampler_speed
Accelerators (owt_mdm_small's full shape, L=1024, N up to 10^4 measured):
  python -m mdm_jax.main --mode=experiment --config=configs/experiments/sampler_speed.py:owt \\
      --workdir=DIR

What you should see (sampler_speed.json and CSVs, written first; then, drawn from the JSON by
`draw`, also `--mode=report`: summary.md, time_vs_steps.png, speedup_vs_steps.png,
arm_cache_vs_length.png): FHS time is flat in N; ancestral time grows linearly in N once
N >> B L (its categorical draws, N L (V+1), dominate), so the speed-up grows with N and is far
larger with the GPT-2 vocabulary than with bytes (the paper: ~20x at N = 10^4 with GPT-2, ~1.07x
with a 256 vocabulary on a GPU, where the network dominates; on a CPU the draws are relatively
dearer, so the speed-ups are larger); the fitted cost model tracks the measured speed-up; the
uncached ARM's time grows ~quadratically in L while the cached one grows ~linearly.
"""

from __future__ import annotations

import os

import matplotlib.pyplot as plt
import numpy as np
import scipy.optimize

from mdm_jax import report, rng
from mdm_jax.experiments import parse_list, sampler_speed_timings

NAME = "sampler_speed"
TITLE = "Sampler speed: first-hitting vs ancestral, ARM cache"


def _expected_nfe(num_steps: int, positions: int) -> float:
    """E[network calls] of the cached ancestral sampler, linear schedule: N (1 - (1 - 1/N)^(B L))."""
    return num_steps * (1.0 - (1.0 - 1.0 / num_steps) ** positions)


def _fit(rows):
    """Non-negative least squares of time = NFE t_net + draws t_cat, relative errors weighted equally."""
    a = np.array([[r["nfe"], r["draws"]] for r in rows], np.float64)
    y = np.array([r["seconds_per_batch"] for r in rows], np.float64)
    w = 1.0 / y  # minimise relative error: small (FHS) and large (ancestral) times count alike
    (t_net, t_cat), _ = scipy.optimize.nnls(a * w[:, None], y * w)
    return float(t_net), float(t_cat)


def _plots(rows, preds, arm_rows, vocabs, workdir) -> dict:
    colors = dict(zip(vocabs, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    files = {}
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for v in vocabs:
        anc = _ancestral(rows, v)
        fhs = _first_hitting(rows, v)
        ax.plot(
            [r["num_steps"] for r in anc],
            [r["seconds_per_sequence"] for r in anc],
            "o-",
            color=colors[v],
            label=f"ancestral (cached), V={v}",
        )
        pn = sorted({p["num_steps"] for p in preds if p["vocab"] == v})
        ax.plot(
            pn,
            [p["model_ancestral_s_per_sequence"] for p in preds if p["vocab"] == v],
            "--",
            color=colors[v],
            alpha=0.6,
            label=f"cost model, V={v}",
        )
        ax.axhline(fhs["seconds_per_sequence"], color=colors[v], ls=":", label=f"first-hitting, V={v}")
    report.log_x(ax)
    ax.set_yscale("log")
    ax.set_xlabel("ancestral steps N")
    ax.set_ylabel("seconds per sequence")
    ax.legend(fontsize=7)
    files["time"] = report.save_figure(fig, workdir, "time_vs_steps.png")

    fig, ax = plt.subplots(figsize=(6, 4.2))
    for v in vocabs:
        m = _ancestral(rows, v)
        ax.plot(
            [r["num_steps"] for r in m],
            [r["measured_speedup"] for r in m],
            "o-",
            color=colors[v],
            label=f"measured, V={v}",
        )
        p = sorted([p for p in preds if p["vocab"] == v], key=lambda p: p["num_steps"])
        ax.plot(
            [q["num_steps"] for q in p],
            [q["model_speedup"] for q in p],
            "--",
            color=colors[v],
            label=f"cost model, V={v}",
        )
    report.log_x(ax)
    ax.set_yscale("log")
    ax.axhline(1.0, color="k", lw=0.6)
    ax.set_xlabel("ancestral steps N")
    ax.set_ylabel("ancestral time / first-hitting time")
    ax.legend(fontsize=7)
    files["speedup"] = report.save_figure(fig, workdir, "speedup_vs_steps.png")

    if arm_rows:
        fig, ax = plt.subplots(figsize=(6, 4.2))
        ls = [r["seq_len"] for r in arm_rows]
        ax.plot(ls, [r["cached_s_per_sequence"] for r in arm_rows], "o-", label="ARM, KV cache")
        ax.plot(ls, [r["uncached_s_per_sequence"] for r in arm_rows], "s-", label="ARM, no cache")
        report.log_x(ax, base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sequence length L")
        ax.set_ylabel("seconds per sequence")
        ax.legend(fontsize=7)
        files["arm"] = report.save_figure(fig, workdir, "arm_cache_vs_length.png")
    return files


def _slope(xs, ys):
    """Exponent of a power law fitted to (x, y) in log-log (growth rate with L)."""
    if len(xs) < 2:
        return float("nan")
    return float(np.polyfit(np.log(xs), np.log(ys), 1)[0])


def _ancestral(rows, v):
    return sorted(
        (r for r in rows if r["vocab"] == v and r["sampler"] == "ancestral"), key=lambda r: r["num_steps"]
    )


def _first_hitting(rows, v):
    return next(r for r in rows if r["vocab"] == v and r["sampler"] == "first_hitting")


def findings(rows, fits, preds, arm_rows, vocabs, files) -> list[tuple[str | None, str]]:
    """The summary's sentences, derived from the timings and the fitted cost model."""
    f = report.fmt
    out = []
    parts = []
    for v in vocabs:
        fhs, anc = _first_hitting(rows, v), _ancestral(rows, v)
        parts.append(
            f"V={v}: first-hitting {f(fhs['seconds_per_sequence'], 3)} s/sequence, cached "
            f"ancestral {f(anc[0]['seconds_per_sequence'], 3)} s at N={anc[0]['num_steps']} "
            f"and {f(anc[-1]['seconds_per_sequence'], 3)} s at N={anc[-1]['num_steps']}"
        )
    out.append((files["time"], "; ".join(parts) + "."))
    parts = []
    for v in vocabs:
        top = _ancestral(rows, v)[-1]
        far = max((p for p in preds if p["vocab"] == v), key=lambda p: p["num_steps"])
        fit = fits[str(v)]
        s = (
            f"V={v}: measured {f(top['measured_speedup'], 3)}x at N={top['num_steps']} (cost model "
            f"{f(top['model_speedup'], 3)}x; t_net {f(fit['t_net_s'] * 1e3, 3)} ms per call, t_cat "
            f"{f(fit['t_cat_s_per_draw'] * 1e9, 3)} ns per category draw)"
        )
        if not far["measured"]:
            s += f", cost model {f(far['model_speedup'], 3)}x at N={far['num_steps']} (not run here)"
        parts.append(s)
    out.append(
        (files["speedup"], "First-hitting speed-up over cached ancestral sampling: " + "; ".join(parts) + ".")
    )
    if arm_rows:
        ls = [r["seq_len"] for r in arm_rows]
        out.append(
            (
                files["arm"],
                f"ARM decoding without a KV cache costs "
                f"{f(arm_rows[0]['uncached_over_cached'], 3)}x the cached time at L={ls[0]} and "
                f"{f(arm_rows[-1]['uncached_over_cached'], 3)}x at L={ls[-1]}; time grows as "
                f"L^{f(_slope(ls, [r['cached_s_per_sequence'] for r in arm_rows]), 2)} cached and "
                f"L^{f(_slope(ls, [r['uncached_s_per_sequence'] for r in arm_rows]), 2)} uncached.",
            )
        )
    return out


def draw(workdir: str) -> dict:
    """Plots, findings and summary.md from sampler_speed.json in workdir (nothing is recomputed)."""
    data = report.read_results(workdir, NAME)
    res, tables = data["results"], data["tables"]
    rows, preds, arm_rows = tables["mdm"], tables["cost_model"], tables.get("arm", [])
    vocabs = list(dict.fromkeys(r["vocab"] for r in rows))
    files = _plots(rows, preds, arm_rows, vocabs, workdir)
    found = findings(rows, res["fits"], preds, arm_rows, vocabs, files)
    summary = report.write_summary(workdir, data, findings=found, title=TITLE)
    return {"summary": summary, "plots": files, "findings": found}


def _steps_by_vocab(exp, vocabs) -> list[list[int]]:
    """experiment.steps: one tuple of N per vocabulary, or one flat tuple for every vocabulary."""
    steps = tuple(exp.steps)
    nested = bool(steps) and all(isinstance(x, (tuple, list)) for x in steps)
    per_vocab = list(steps) if nested else [steps] * len(vocabs)
    if len(per_vocab) != len(vocabs):
        raise ValueError(
            f"experiment.steps={exp.steps!r}: give one tuple of steps per vocabulary in "
            f"experiment.vocab_sizes ({len(vocabs)}), e.g. ((16, 128), (16, 64)), or one flat "
            "tuple for all"
        )
    out = [sorted(set(parse_list(st, int, "experiment.steps"))) for st in per_vocab]
    if min(min(st) for st in out) < 1:
        raise ValueError(f"experiment.steps={exp.steps!r}: steps must be positive")
    return out


def run(config, workdir: str) -> dict:
    exp = config.experiment
    os.makedirs(workdir, exist_ok=True)
    root = rng.root_key(config.seed)
    vocabs = parse_list(exp.vocab_sizes, int, "experiment.vocab_sizes")
    steps_by_vocab = _steps_by_vocab(exp, vocabs)
    extra = parse_list(exp.predict_steps, int, "experiment.predict_steps", allow_empty=True)
    arm_lengths = sorted(set(parse_list(exp.arm_lengths, int, "experiment.arm_lengths", allow_empty=True)))
    b, L = int(config.sampling.batch_size), sampler_speed_timings.mdm_seq_len(config)
    rows, fits, preds = [], {}, []
    for v, steps in zip(vocabs, steps_by_vocab):
        vr = sampler_speed_timings.mdm_timings(config, root, v, steps, print)
        t_net, t_cat = _fit(vr)
        fits[str(v)] = {"t_net_s": t_net, "t_cat_s_per_draw": t_cat}
        fhs = _first_hitting(vr, v)
        model_fhs = fhs["nfe"] * t_net + fhs["draws"] * t_cat
        for r in vr:
            r["model_s_per_batch"] = r["nfe"] * t_net + r["draws"] * t_cat
            if r["sampler"] == "ancestral":
                r["measured_speedup"] = r["seconds_per_batch"] / fhs["seconds_per_batch"]
                r["model_speedup"] = r["model_s_per_batch"] / model_fhs
        for n in sorted(set(steps) | set(extra)):
            nfe = _expected_nfe(n, b * L)
            t = nfe * t_net + n * b * L * (v + 1) * t_cat
            preds.append(
                {
                    "vocab": v,
                    "num_steps": n,
                    "measured": n in steps,
                    "expected_nfe": nfe,
                    "model_ancestral_s_per_sequence": t / b,
                    "model_speedup": t / model_fhs,
                }
            )
        rows += vr
    arm_rows = sampler_speed_timings.arm_timings(config, arm_lengths, root, print) if arm_lengths else []

    m = config.model
    notes = [
        f"Backbone (untrained): {m.num_layers} layers, width {m.emb_dim}, {m.num_heads} heads, "
        f"{m.mlp_type} MLP {m.mlp_dim}, time conditioning {bool(m.time_conditioning)}, compute "
        f"{config.dtype.compute}; MDM L={L}, batch {b}; precision {config.sampling.precision}; schedule "
        f"{config.objective.schedule}; best of {exp.repeats} timed runs after one warm-up run.",
        "draws = categories drawn by the sampler: N B L (V+1) for ancestral (every position, every "
        "step), B L V for first-hitting; NFE = network calls (ancestral: cached, measured).",
        f"ARM: vocabulary {exp.arm_vocab}, same backbone with a causal mask; the KV cache is sized "
        "to L for each L.",
    ]
    results = {"fits": fits, "device_note": "CPU timings; see metadata"}
    tables = {"mdm": rows, "cost_model": preds}
    if arm_rows:
        tables["arm"] = arm_rows
    paths = report.write_results(workdir, NAME, config=config, results=results, tables=tables, notes=notes)
    drawn = draw(workdir)
    return {
        "rows": rows,
        "fits": fits,
        "predictions": preds,
        "arm": arm_rows,
        "findings": drawn["findings"],
        "paths": {**paths, "summary": drawn["summary"]},
    }
