"""Experiment precision_sweep: the paper's Table 2 / Figure 7 (docs/paper.md section 4).

Samplers {ancestral (V+1)-way, ancestral factorized, first-hitting, parallel first-hitting} x
sampling precision {float32-pytorch, float32, float32-high, bfloat16, float64} x steps N: the
generative perplexity and the sequence entropy of the samples vs N, and gen PPL vs entropy; next
to them the one-step unmask probability and token entropy that Prop. 5.2 and the grid law
predict (`mdm_jax.precision`), and, for the exact reference model, the whole run's predicted
entropy / gen PPL under both laws.

Commands (the quickstart MDM scored by the quickstart ARM; `:reference`, an exact reference model
with no training; accelerator variants): configs/experiments/precision_sweep.py.

What you should see: the (V+1)-way ancestral sampler in bfloat16 loses most of its entropy and
"gains" gen PPL, more as N grows; in 32 bits the same happens once V N is comparable to 2^24
(the paper's GPT-2 vocabulary with N = 1024-10,000: use the `:owt` config on an accelerator);
on a byte vocabulary at CPU-sized N the 32-bit effect is predicted (and measured) to be a few
percent of the tail mass at most; float64 never moves; first-hitting and factorized stay put in
N in every precision (in bfloat16 they differ from float64 by the V-way draw's own distortion,
the same for every N). For the reference model the dashed lines are the grid law's prediction of
each whole run (columns pred_*_grid / pred_*_prop52 hold both laws) to compare the measurement with.

Why CPU runs cannot show the 32-bit effect with statistical force: a float32 draw under-samples
only categories of probability near its grid spacing 2^-24, so each affected event costs about
2^24 category draws; a few dozen events (a 3-5 sigma entropy difference) need ~10^9-10^10 draws,
minutes to hours at the ~2e7 draws/s of this 2-core CPU and seconds on a GPU.

Fields: experiment.* in mdm_jax/config_experiments.py (EXPERIMENT_FIELDS); each cell draws
sampling.num_samples sequences of sampling.seq_len (0 = data.seq_len) in calls of
sampling.batch_size; the parallel first-hitting sampler unmasks sampling.tokens_per_step tokens
per call.

Outputs: precision_sweep.json and precision_sweep_{sweep,one_step}.csv (written first), then, drawn
from the JSON by `draw` (also `--mode=report`): entropy_vs_steps.png, genppl_vs_steps.png,
genppl_vs_entropy.png, one_step_prediction.png and summary.md. One cell (the model source, its
samples, their metrics and predictions) is computed by precision_sweep_cells.py.
"""

from __future__ import annotations

import math
import os

import matplotlib.pyplot as plt
import numpy as np

from mdm_jax import report, rng, sampling
from mdm_jax.experiments import parse_list, precision_sweep_cells
from mdm_jax.experiments.precision_sweep_cells import LABEL, SAMPLERS
from mdm_jax.reference import head_tail as refm

NAME = "precision_sweep"
TITLE = "Sampling precision sweep (Table 2 / Figure 7)"


# ----------------------------------------------------------------------------- plots and findings


def _plots(rows, one_step, workdir, samplers, precisions, steps, truth):
    colors = dict(zip(precisions, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    files = {}
    for metric, fname, ylabel in (
        ("entropy", "entropy_vs_steps.png", "sequence entropy (nats)"),
        ("gen_ppl", "genppl_vs_steps.png", "generative perplexity"),
    ):
        fig, axes = plt.subplots(
            1, len(samplers), figsize=(4.2 * len(samplers), 3.6), sharey=True, squeeze=False
        )
        for ax, s in zip(axes[0], samplers):
            for p in precisions:
                r = sorted(
                    [x for x in rows if x["sampler"] == s and x["precision"] == p],
                    key=lambda x: x["num_steps"],
                )
                if not r:
                    continue
                xs = [x["num_steps"] for x in r] if len(r) > 1 else [min(steps), max(steps)]
                ys = [x[metric] for x in r] if len(r) > 1 else [r[0][metric]] * 2
                # dtype=float: a JSON null (a NaN when written) is NaN again.
                es = np.array([x[f"{metric}_se"] for x in (r if len(r) > 1 else r * 2)], float)
                ax.errorbar(xs, ys, yerr=es, marker="o", ms=3, capsize=2, color=colors[p], label=p)
                pk = f"pred_{metric}_grid"
                if pk in r[0]:
                    py = [x[pk] for x in r] if len(r) > 1 else [r[0][pk]] * 2
                    ax.plot(xs, py, ls="--", color=colors[p], alpha=0.7)
            if truth is not None:
                ax.axhline(truth[metric], color="k", lw=0.8, ls=":", label="exact")
            report.log_x(ax)
            ax.set_title(LABEL[s])
            ax.set_xlabel("steps N (FHS: flat, NFE = L/k)")
        axes[0][0].set_ylabel(ylabel)
        if metric == "gen_ppl":
            axes[0][0].set_yscale("log")
        axes[0][0].legend(
            fontsize=7, title="solid: measured, dashed: grid law" if truth else None, title_fontsize=7
        )
        files[metric] = report.save_figure(fig, workdir, fname)

    fig, ax = plt.subplots(figsize=(5.5, 4.2))
    markers = dict(zip(SAMPLERS, "osD^"))
    for x in rows:
        ax.scatter(
            x["entropy"],
            x["gen_ppl"],
            color=colors[x["precision"]],
            marker=markers[x["sampler"]],
            s=18 + 4 * math.log2(max(x["num_steps"], 1)),
        )
    for p in precisions:
        ax.scatter([], [], color=colors[p], label=p)
    for s in samplers:
        ax.scatter([], [], color="gray", marker=markers[s], label=LABEL[s])
    if truth is not None:
        ax.scatter([truth["entropy"]], [truth["gen_ppl"]], color="k", marker="*", s=120, label="exact")
    ax.set_xlabel("sequence entropy (nats)")
    ax.set_ylabel("generative perplexity")
    ax.set_yscale("log")
    ax.legend(fontsize=6)
    files["scatter"] = report.save_figure(fig, workdir, "genppl_vs_entropy.png")

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for p in precisions:
        r = sorted([x for x in one_step if x["precision"] == p], key=lambda x: x["num_steps"])
        n = [x["num_steps"] for x in r]
        axes[0].plot(n, [x["unmask_ratio_grid"] for x in r], color=colors[p], marker="o", ms=3, label=p)
        axes[0].plot(n, [x["unmask_ratio_prop52"] for x in r], color=colors[p], ls="--")
        axes[1].plot(n, [x["entropy_grid"] for x in r], color=colors[p], marker="o", ms=3, label=p)
        axes[1].plot(n, [x["entropy_prop52"] for x in r], color=colors[p], ls="--")
    if one_step:
        axes[1].axhline(one_step[0]["entropy_true"], color="k", lw=0.8, ls=":", label="true")
    t = one_step[0]["t"] if one_step else float("nan")
    axes[0].set_ylabel(f"unmask probability / true (one step at t={t:g})")
    axes[1].set_ylabel("entropy of the unmasked token (nats)")
    for ax in axes:
        report.log_x(ax)
        ax.set_xlabel("steps N")
    axes[0].legend(fontsize=7, title="solid: grid law, dashed: Prop. 5.2", title_fontsize=7)
    files["one_step"] = report.save_figure(fig, workdir, "one_step_prediction.png")
    return files


def _z(a, b):
    se = math.hypot(a.get("entropy_se") or 0.0, b.get("entropy_se") or 0.0)
    return (a["entropy"] - b["entropy"]) / se if se > 0 else float("inf")


def findings(rows, one_step, files, precisions, steps, truth) -> list[tuple[str | None, str]]:
    """The summary's sentences, derived from the measured cells and the one-step predictions."""
    f = report.fmt
    out = []
    nmin, nmax = min(steps), max(steps)
    anc = {(x["precision"], x["num_steps"]): x for x in rows if x["sampler"] == "ancestral"}
    if anc:
        drops = []
        for p in precisions:
            if (p, nmin) in anc and (p, nmax) in anc:
                drops.append((anc[(p, nmin)]["entropy"] - anc[(p, nmax)]["entropy"], p))
        drops.sort(reverse=True)
        worst_drop, worst = drops[0]
        verb = "loses" if worst_drop >= 0 else "gains"
        sent = (
            f"Ancestral (V+1)-way sampling in {worst} {verb} {f(abs(worst_drop), 3)} nats of "
            f"sequence entropy from N={nmin} to N={nmax} (the largest drop of any precision)"
        )
        if ("float64", nmax) in anc and worst != "float64":
            a64 = anc[("float64", nmax)]
            z = _z(a64, anc[(worst, nmax)])
            sent += (
                f" and ends {f(abs(z), 3)} standard errors {'below' if z >= 0 else 'above'} "
                f"float64 ({f(anc[(worst, nmax)]['entropy'], 4)} vs {f(a64['entropy'], 4)} nats)"
            )
        rest = [f"{p} {f(d, 2)}" for d, p in drops[1:]]
        if rest:
            sent += f"; the change over the same range is {', '.join(rest)} nats for the other precisions"
        fac = [x for x in rows if x["sampler"] == "factorized"]
        if len({x["num_steps"] for x in fac}) > 1:
            spread = max(abs(_z(a, b)) for a in fac for b in fac if a["precision"] == b["precision"])
            sent += (
                f"; factorized ancestral changes by at most {f(spread, 2)} standard errors "
                "across N at any fixed precision"
            )
        fhs = {
            (x["sampler"], x["precision"]): x for x in rows if x["sampler"] in ("first_hitting", "parallel")
        }
        wide = [
            (abs(_z(x, fhs[(s, "float64")])), s, p)
            for (s, p), x in fhs.items()
            if p not in ("bfloat16", "float16", "float64") and (s, "float64") in fhs
        ]
        if wide:
            z, s, p = max(wide)
            sent += (
                f"; first-hitting in every 32-bit precision is within {f(z, 2)} standard errors "
                f"of float64 (largest: {LABEL[s]}, {p})"
            )
        out.append((files["entropy"], sent + "."))
        g = [
            (anc[(p, nmin)]["gen_ppl"], anc[(p, nmax)]["gen_ppl"], p)
            for p in precisions
            if (p, nmin) in anc and (p, nmax) in anc
        ]
        parts = [f"{p} {f(a, 4)} -> {f(b, 4)}" for a, b, p in g]
        out.append(
            (
                files["gen_ppl"],
                f"Generative perplexity of ancestral samples from N={nmin} to "
                f"N={nmax}: {'; '.join(parts)}"
                + (f" (exact model: {f(truth['gen_ppl'], 4)})" if truth else "")
                + ".",
            )
        )
    ent = np.array([x["entropy"] for x in rows])
    ppl = np.log(np.array([x["gen_ppl"] for x in rows]))
    if len(rows) > 2 and ent.std() > 0 and ppl.std() > 0:
        r = float(np.corrcoef(ent, ppl)[0, 1])
        lo = min(rows, key=lambda x: x["entropy"])
        tail = (
            "so a low gen PPL here signals lost entropy, not better samples"
            if r > 0.5
            else "no strong relation at these settings"
        )
        out.append(
            (
                files["scatter"],
                f"Across all {len(rows)} runs log gen PPL and entropy correlate with "
                f"r = {f(r, 3)}; the lowest-entropy run ({LABEL[lo['sampler']]}, {lo['precision']}, "
                f"N={lo['num_steps']}: {f(lo['entropy'], 4)} nats) has gen PPL {f(lo['gen_ppl'], 4)}: "
                f"{tail}.",
            )
        )
    if one_step:
        last = [x for x in one_step if x["num_steps"] == nmax]
        # The 32-bit policies are the paper's question; 16-bit ones only when nothing else ran.
        wide = [x for x in last if x["precision"] not in ("bfloat16", "float16")] or last
        worst = min(wide, key=lambda x: x["unmask_ratio_grid"])
        out.append(
            (
                files["one_step"],
                f"At N={nmax} and t={f(worst['t'], 3)} the grid law predicts that one "
                f"{worst['precision']} ancestral step unmasks {f(worst['unmask_ratio_grid'], 4)}x the "
                f"true probability with token entropy {f(abs(worst['entropy_grid']), 4)} nats (true "
                f"{f(worst['entropy_true'], 4)}), where Prop. 5.2 predicts "
                f"{f(worst['unmask_ratio_prop52'], 4)}x and {f(abs(worst['entropy_prop52']), 4)} nats.",
            )
        )
    return out


def draw(workdir: str) -> dict:
    """Plots, findings and summary.md from precision_sweep.json in workdir (nothing is recomputed)."""
    data = report.read_results(workdir, NAME)
    res, rows, one_step = data["results"], data["tables"]["sweep"], data["tables"]["one_step"]
    samplers, precisions, steps, truth = res["samplers"], res["precisions"], res["steps"], res["exact"]
    files = _plots(rows, one_step, workdir, samplers, precisions, steps, truth)
    found = findings(rows, one_step, files, precisions, steps, truth)
    summary = report.write_summary(workdir, data, findings=found, title=TITLE)
    return {"summary": summary, "plots": files, "findings": found}


# ----------------------------------------------------------------------------- entry point


def run(config, workdir: str) -> dict:
    """Runs the sweep, writes precision_sweep.json and the CSVs, then draws the plots and summary.md."""
    exp = config.experiment
    samplers = parse_list(exp.samplers, str, "experiment.samplers")
    precisions = parse_list(exp.precisions, str, "experiment.precisions")
    steps = sorted(set(parse_list(exp.steps, int, "experiment.steps")))
    for s in samplers:
        if s not in SAMPLERS:
            raise ValueError(f"experiment.samplers: unknown sampler {s!r}; choose from {', '.join(SAMPLERS)}")
    for p in precisions:
        sampling.categorical_scope(p)  # validates the name with the samplers' own error message
    if min(steps) < 1:
        raise ValueError(f"experiment.steps must be positive, got {steps}")
    batch, num = int(config.sampling.batch_size), int(config.sampling.num_samples)
    if num % batch:
        raise ValueError(f"sampling.num_samples={num} must be a multiple of sampling.batch_size={batch}")
    os.makedirs(workdir, exist_ok=True)
    src = precision_sweep_cells.source(config)
    truth = None
    if src["reference"] is not None:
        ref = src["reference"]
        h, h_se = refm.expected_sequence_entropy(ref.probs, src["seq_len"], seed=int(exp.reference_seed))
        truth = {
            "entropy": h,
            "entropy_se": h_se,
            "gen_ppl": refm.generative_perplexity_of_law(ref.probs, ref.probs),
        }
    root = rng.root_key(config.seed)
    rows = []
    for si, s in enumerate(samplers):
        cell_steps = steps if s in ("ancestral", "factorized") else [None]
        for pi, p in enumerate(precisions):
            for n in cell_steps:
                key = rng.fold(root, "precision_sweep", si, pi, n or 0)
                tokens, nfe, wall = precision_sweep_cells.run_cell(src, s, p, n, config, key)
                k = precision_sweep_cells.tokens_per_step(s, config)
                row = {
                    "sampler": s,
                    "precision": p,
                    "num_steps": int(n) if n else math.ceil(src["seq_len"] / k),
                    "tokens_per_step": k,
                    "nfe": nfe,
                    **precision_sweep_cells.cell_metrics(src, tokens),
                    "num_samples": int(tokens.shape[0]),
                    "seq_len": src["seq_len"],
                    "wall_s_incl_compile": wall,
                }
                if src["reference"] is not None:
                    row["tail_fraction"] = float(1.0 - np.isin(tokens, src["reference"].head_ids).mean())
                    row.update(precision_sweep_cells.predict_run(src, s, p, n, exp))
                rows.append(row)
                print(
                    f"precision_sweep: {s:13s} {p:15s} N={row['num_steps']:6d} "
                    f"entropy {row['entropy']:.3f}+-{row['entropy_se']:.3f} "
                    f"gen PPL {row['gen_ppl']:.2f} ({wall:.1f}s)",
                    flush=True,
                )
    one_step = [
        refm.one_step_stats(src["mu"], n, float(exp.predict_t), src["schedule"], p)
        for p in precisions
        for n in steps
    ]
    results = {
        "source": src["kind"],
        **src["info"],
        "vocab": src["vocab"],
        "seq_len": src["seq_len"],
        "schedule": str(src["schedule"]),
        "seed": int(config.seed),
        "exact": truth,
        "samplers": samplers,
        "precisions": precisions,
        "steps": steps,
    }
    notes = [
        f"Model: {src['kind']} ({src['info']}); V={src['vocab']}, L={src['seq_len']}, schedule "
        f"{src['schedule']}, {num} samples per cell in batches of {batch}, seed {config.seed}.",
        "Entropy: per-sequence unigram entropy of the token ids (nats), mean +- standard error over "
        "samples. Gen PPL: exp of the token-weighted mean NLL of all samples under the evaluator "
        + ("(the exact reference ARM)" if src["kind"] == "reference" else "ARM")
        + ", every token scored after a BOS; its error is the delta-method standard error.",
        "Ancestral runs use cache=True; first-hitting runs do not depend on N (NFE = ceil(L/k)) and "
        "are drawn flat across N. Wall times include compilation.",
        "One-step predictions: mu is "
        + (
            "the reference law"
            if src["kind"] == "reference"
            else "the model's mean prediction on an all-mask input at t=predict_t"
        )
        + "; grid law = mean-field form of the exact grid law for 32/64-bit policies, exact enumeration "
        "for bfloat16/float16.",
    ]
    if src["kind"] == "reference":
        notes.append(
            "Dashed lines in the N plots: the run-level prediction of the grid law "
            "(positions of the i.i.d. reference are independent, so the token law is exact "
            "up to the law's own approximation); columns pred_* hold both laws."
        )
    paths = report.write_results(
        workdir,
        NAME,
        config=config,
        results=results,
        tables={"sweep": rows, "one_step": one_step},
        notes=notes,
    )
    drawn = draw(workdir)
    return {
        "rows": rows,
        "one_step": one_step,
        "findings": drawn["findings"],
        "results": results,
        "paths": {**paths, "summary": drawn["summary"]},
    }
