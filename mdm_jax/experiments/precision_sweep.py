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

Fields: experiment.* in mdm_jax/config.py (EXPERIMENT_FIELDS); each cell draws sampling.num_samples
sequences of sampling.seq_len (0 = data.seq_len) in calls of sampling.batch_size; the parallel
first-hitting sampler unmasks sampling.tokens_per_step tokens per call.

Outputs: precision_sweep.json and precision_sweep_{sweep,one_step}.csv (written first), then, drawn
from the JSON by `draw` (also `--mode=report`): entropy_vs_steps.png, genppl_vs_steps.png,
genppl_vs_entropy.png, one_step_prediction.png and summary.md.
"""

from __future__ import annotations

import math
import os
import time

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

from mdm_jax import evaluators, models, objectives, report, rng, runs, sample_metrics, sampling
from mdm_jax.experiments import parse_list
from mdm_jax.models import adapters
from mdm_jax.reference import head_tail as refm
from mdm_jax.sampling.ancestral import step_coefficients

NAME = "precision_sweep"
TITLE = "Sampling precision sweep (Table 2 / Figure 7)"
SAMPLERS = ("ancestral", "factorized", "first_hitting", "parallel")
_LABEL = {
    "ancestral": "ancestral (V+1)-way",
    "factorized": "ancestral factorized",
    "first_hitting": "first-hitting",
    "parallel": "parallel first-hitting",
}


# ----------------------------------------------------------------------------- model sources


def _source(config) -> dict:
    """denoise_fn, V, L, schedule, evaluator and the mu used for predictions, for either source."""
    exp = config.experiment
    if exp.model == "reference":
        ref = refm.HeadTailReference(
            int(exp.reference_vocab),
            int(exp.reference_head),
            float(exp.reference_tail_mass),
            int(exp.reference_seed),
        )
        seq_len = int(config.sampling.seq_len) or int(config.data.seq_len)
        return dict(
            kind="reference",
            denoise_fn=ref.denoise_fn,
            vocab=ref.V,
            seq_len=seq_len,
            schedule=objectives.schedule_of(config.objective),
            evaluator=ref.arm_logits_fn,
            bos_id=ref.bos_id,
            mu=ref.probs,
            reference=ref,
            info={"reference": ref.describe()},
        )
    if exp.model != "checkpoint":
        raise ValueError(
            f"experiment.model={exp.model!r}: use 'checkpoint' (a trained MDM workdir "
            "in experiment.checkpoint_workdir) or 'reference' (exact reference model)"
        )
    wd = exp.checkpoint_workdir
    if not wd or not os.path.isdir(wd):
        raise FileNotFoundError(
            f"experiment.checkpoint_workdir={wd!r} is not a directory: train the MDM first "
            "(python -m mdm_jax.main --config=configs/quickstart.py --workdir=workdirs/quickstart) "
            "or use --config=configs/experiments/precision_sweep.py:reference"
        )
    cfg = runs.workdir_config(wd, config)
    if objectives.of(cfg).causal:
        raise ValueError(f"experiment.checkpoint_workdir={wd} holds an ARM; the sweep needs an MDM")
    params, step, _, _ = runs.restore_params(cfg, wd, use_ema=bool(config.sampling.use_ema))
    model = models.build(cfg)
    denoise = adapters.denoise_fn(model, params)
    if not exp.evaluator_workdir:
        raise ValueError(
            "generative perplexity needs an evaluator ARM: set "
            "--config.experiment.evaluator_workdir (e.g. workdirs/quickstart_arm)"
        )
    ev_fn, bos_id, ev_info = evaluators.load_evaluator(cfg, exp.evaluator_workdir)
    seq_len = int(config.sampling.seq_len) or int(cfg.data.seq_len)
    sched = objectives.schedule_of(cfg.objective)
    v = int(cfg.model.vocab_size)
    # mu for the one-step prediction: the network's own prediction for a fully masked sequence at
    # t = predict_t, averaged over positions (what the first ancestral steps race against).
    x = jnp.full((1, seq_len), v, jnp.int32)
    probs = jax.nn.softmax(denoise(x, jnp.full((1,), float(exp.predict_t), jnp.float32)), axis=-1)
    mu = np.asarray(probs, np.float64).mean(axis=(0, 1))
    info = {"checkpoint_workdir": os.path.abspath(wd), "checkpoint_step": step, **ev_info}
    return dict(
        kind="checkpoint",
        denoise_fn=denoise,
        vocab=v,
        seq_len=seq_len,
        schedule=sched,
        evaluator=ev_fn,
        bos_id=bos_id,
        mu=mu,
        reference=None,
        info=info,
    )


# ----------------------------------------------------------------------------- sampling


def _tokens_per_step(sampler: str, config) -> int:
    return int(config.sampling.tokens_per_step) if sampler == "parallel" else 1


def _run_sampler(src, sampler, prec, num_steps, config, key):
    """All samples of one (sampler, precision, N) cell: tokens [num_samples, L], nfe, wall seconds."""
    b, n = int(config.sampling.batch_size), int(config.sampling.num_samples)
    common = dict(
        batch_size=b, seq_len=src["seq_len"], mask_id=src["vocab"], schedule=src["schedule"], precision=prec
    )
    out, nfe, t0 = [], 0, time.perf_counter()
    for i in range(n // b):
        k = rng.fold(key, "batch", i)
        if sampler in ("ancestral", "factorized"):
            tok, st = sampling.ancestral(
                src["denoise_fn"],
                k,
                num_steps=int(num_steps),
                cache=True,
                factorized=sampler == "factorized",
                **common,
            )
        else:
            tok, st = sampling.first_hitting(
                src["denoise_fn"], k, **common, tokens_per_step=_tokens_per_step(sampler, config)
            )
        out.append(np.asarray(tok))
        nfe += int(st["nfe"])
    return np.concatenate(out), nfe / (n // b), time.perf_counter() - t0


def _metrics(src, tokens) -> dict:
    ent = sample_metrics.sequence_entropies(tokens)
    nll = sample_metrics.sequence_nlls(src["evaluator"], tokens, src["bos_id"], vocab_size=src["vocab"])
    per_tok = nll / tokens.shape[1]
    mean_nll = float(nll.sum() / tokens.size)
    # Delta-method standard error of gen PPL from the spread of per-sequence mean NLLs.
    nll_se = float(per_tok.std(ddof=1) / math.sqrt(len(per_tok))) if len(per_tok) > 1 else float("nan")
    return {
        "entropy": float(ent.mean()),
        "entropy_se": float(ent.std(ddof=1) / math.sqrt(len(ent))) if len(ent) > 1 else float("nan"),
        "gen_ppl": math.exp(mean_nll),
        "gen_ppl_se": math.exp(mean_nll) * nll_se,
        "mean_nll": mean_nll,
    }


# ----------------------------------------------------------------------------- predictions


def _predict_run(src, sampler, prec, num_steps, exp) -> dict:
    """Reference model only: expected entropy / gen PPL of a whole run under the true, grid and
    Prop. 5.2 laws (positions are independent, so the per-position token law says it all)."""
    ref = src["reference"]
    low = prec in ("bfloat16", "float16")
    out = {}
    for law in ("grid", "prop52"):
        if law == "grid" and low and not exp.predict_low_precision:
            continue
        points = int(exp.predict_points)
        if sampler == "ancestral":
            _, _, _, p_unmask = step_coefficients(src["schedule"], int(num_steps))
            q = refm.ancestral_token_law(ref.probs, p_unmask, law, prec, num_points=points)
        else:
            # Factorized and FHS draw one V-way categorical of mu per token: its law, any N.
            q = refm._law(ref.probs, law, prec)
        h, _ = refm.expected_sequence_entropy(q, src["seq_len"], seed=int(exp.reference_seed))
        out[f"pred_entropy_{law}"] = h
        out[f"pred_gen_ppl_{law}"] = refm.generative_perplexity_of_law(q, ref.probs)
        out[f"pred_tail_{law}"] = float(1.0 - q[ref.head_ids].sum())
    return out


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
            ax.set_title(_LABEL[s])
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
        ax.scatter([], [], color="gray", marker=markers[s], label=_LABEL[s])
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
                f"of float64 (largest: {_LABEL[s]}, {p})"
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
                f"r = {f(r, 3)}; the lowest-entropy run ({_LABEL[lo['sampler']]}, {lo['precision']}, "
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
    src = _source(config)
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
                tokens, nfe, wall = _run_sampler(src, s, p, n, config, key)
                k = _tokens_per_step(s, config)
                row = {
                    "sampler": s,
                    "precision": p,
                    "num_steps": int(n) if n else math.ceil(src["seq_len"] / k),
                    "tokens_per_step": k,
                    "nfe": nfe,
                    **_metrics(src, tokens),
                    "num_samples": int(tokens.shape[0]),
                    "seq_len": src["seq_len"],
                    "wall_s_incl_compile": wall,
                }
                if src["reference"] is not None:
                    row["tail_fraction"] = float(1.0 - np.isin(tokens, src["reference"].head_ids).mean())
                    row.update(_predict_run(src, s, p, n, exp))
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
