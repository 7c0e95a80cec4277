"""Experiment `time_agnostic` (docs/paper.md section 2, Prop. 3.1/3.2): does the MDM need t?

1. Trains, at the same budget (same steps, batch, data order, backbone), the variants in
   `experiment.variants`: the continuous-time ELBO with and without time input, the discrete
   (time-agnostic, over the number of masks n) ELBO, and the ARM, each in `<workdir>/runs/<name>`
   (reused when already trained). Every MDM is then scored with the *same* estimator, the
   continuous NELBO (`eval.num_batches` validation batches x `eval.mc_draws` low-discrepancy
   draws, common random numbers across variants), and the ARM with its exact NLL. For a time-free
   network the continuous and discrete NELBOs have the same expectation (Prop. 3.1), so one
   estimator compares all of them; the discrete variants' own estimate is reported next to it.
2. For each time-conditioned variant, how much the output depends on t at a fixed input: real
   validation sequences with exactly n = r L positions masked (r in `experiment.kl_ratios`), the
   mean over masked positions of KL( mu(x, t*) || mu(x, t) ) on a grid of t, where t* is the time
   the mask ratio implies (1 - alpha(t*) = n/L). Reference: the mask level the ELBO weight implies
   given n masks is 1 - alpha ~ Beta(n, L-n+1) (alpha ~ Beta(L-n+1, n), std <= 1/(2 sqrt(L+2))), so
   only t inside that band matters; its central 95% is shaded, and the posterior-expected KL
   (16 equal-probability quantiles of the Beta) is reported.
Outputs in `workdir`: time_agnostic.json (written first), time_agnostic_{nelbo,kl,kl_summary}.csv,
then, drawn from the JSON by `draw` (also `--mode=report`): nelbo.png, kl_vs_t.png,
learning_curves.png, summary.md.
"""

from __future__ import annotations

import os
import time

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import scipy.stats

from mdm_jax import likelihood, metrics, models, objectives, report, rng, runs
from mdm_jax.data import pipeline
from mdm_jax.experiments import derive, parse_list, train_run, train_throughput
from mdm_jax.models import adapters

NAME = "time_agnostic"
TITLE = "Masked diffusion models are time-agnostic: same-budget variants"
VARIANTS = {
    # name: (objective.kind, model.time_conditioning, label)
    "tc_continuous": ("continuous", True, "continuous ELBO, with t"),
    "tf_continuous": ("continuous", False, "continuous ELBO, time-free"),
    "tf_discrete": ("discrete", False, "discrete ELBO, time-free"),
    "tc_discrete": ("discrete", True, "discrete ELBO, with t = n/L"),
    "arm": ("arm", False, "ARM (exact NLL)"),
}
POSTERIOR_QUANTILES = 16
KL_FLOOR = 1e-7
BAND = (0.025, 0.975)


def variant_config(config, name: str):
    if name not in VARIANTS:
        raise ValueError(f"experiment.variants: unknown variant {name!r}; choose from {', '.join(VARIANTS)}")
    kind, tc, _ = VARIANTS[name]
    steps = int(config.experiment.num_steps) or int(config.train.num_steps)
    return derive(config, **{"objective.kind": kind, "model.time_conditioning": tc, "train.num_steps": steps})


def _num_params(params) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))


def _learning_curve(workdir: str) -> dict:
    try:
        recs = metrics.read_metrics(workdir, "eval")
    except FileNotFoundError:
        recs = []
    return {"steps": [r["step"] for r in recs], "bits_per_token": [r["bits_per_token"] for r in recs]}


def mask_exactly(x0: np.ndarray, n: int, key, mask_id: int) -> np.ndarray:
    """x0 with exactly n uniformly chosen positions per row set to mask_id."""
    return np.where(np.asarray(objectives.mask_exactly(key, x0.shape, n)), mask_id, x0).astype(np.int32)


def time_dependence(vcfg, params, step: int, *, ratios, num_times: int, num_sequences: int):
    """Rows of mean KL(mu(x, t*) || mu(x, t)) at every time evaluated (the t grid, t* and the
    posterior quantiles of t), and one summary row per ratio."""
    model = models.build(vcfg)
    sched = objectives.schedule_of(vcfg.objective)
    V, L = vcfg.model.vocab_size, vcfg.data.seq_len

    @jax.jit
    def log_probs(p, x, t):
        return jax.nn.log_softmax(adapters.denoise_fn(model, p)(x, t), axis=-1)

    @jax.jit
    def kl_and_ce(lp_ref, lp, masked, x0):
        kl = jnp.sum(jnp.exp(lp_ref) * (lp_ref - lp), axis=-1)
        ce = -jnp.take_along_axis(lp_ref, x0[..., None], axis=-1)[..., 0]
        w = masked.astype(jnp.float32)
        return jnp.sum(kl * w) / jnp.sum(w), jnp.sum(ce * w) / jnp.sum(w)

    batch = pipeline.eval_batches(vcfg, 1, split="validation", process_index=0, process_count=1)[0]
    x0 = batch[: max(1, min(num_sequences, batch.shape[0]))]
    s = x0.shape[0]
    root = rng.root_key(vcfg.seed)
    grid = (np.arange(num_times) + 0.5) / num_times
    rows, summary = [], []
    for ri, r in enumerate(ratios):
        n = int(np.clip(round(r * L), 1, L))
        x = mask_exactly(x0, n, rng.fold(root, "time_agnostic_kl", ri), V)
        masked = jnp.asarray(x == V)
        t_star = float(sched.time_of_mask_level(n / L))
        lp_ref = log_probs(params, x, jnp.full((s,), t_star, jnp.float32))
        post = scipy.stats.beta(n, L - n + 1)  # mask level 1 - alpha given n masks (ELBO weighting)
        t_of = lambda m: float(sched.time_of_mask_level(float(m)))  # noqa: E731
        band = (t_of(post.ppf(BAND[0])), t_of(post.ppf(BAND[1])))
        t_post = [t_of(post.ppf((j + 0.5) / POSTERIOR_QUANTILES)) for j in range(POSTERIOR_QUANTILES)]
        at = {}  # t -> (mean KL, mean CE at t*) for every time evaluated
        for t in sorted(set(grid.tolist()) | {t_star} | set(t_post)):
            kl, ce = kl_and_ce(
                lp_ref, log_probs(params, x, jnp.full((s,), t, jnp.float32)), masked, jnp.asarray(x0)
            )
            at[t] = (float(kl), float(ce))
            rows.append(
                {
                    "ratio": r,
                    "n": n,
                    "t": t,
                    "t_star": t_star,
                    "kl": at[t][0],
                    "in_band": band[0] <= t <= band[1],
                    "posterior_quantile": t in t_post,
                }
            )
        kls = [at[t][0] for t in at]
        post_kls = [at[t][0] for t in t_post]
        # Both maxima range over the same evaluated times, so the band's cannot exceed the whole range's.
        band_kls = [at[t][0] for t in at if band[0] <= t <= band[1]]
        summary.append(
            {
                "ratio": r,
                "n": n,
                "L": L,
                "t_star": t_star,
                "band_lo": band[0],
                "band_hi": band[1],
                "mask_level_std": float(post.std()),
                "kl_posterior_mean": float(np.mean(post_kls)),
                "kl_band_max": float(np.max(band_kls)),
                "kl_max": float(np.max(kls)),
                "num_times": len(at),
                "ce_at_t_star": at[t_star][1],
                "num_sequences": s,
                "checkpoint_step": step,
            }
        )
    return rows, summary


# ----------------------------------------------------------------------------- drawing


def _is_arm(row) -> bool:
    return objectives.get(row["objective"]).causal


def _plots(workdir, nelbo_rows, kl_rows, kl_summary, curves) -> dict:
    files = {}
    fig, ax = plt.subplots(figsize=(7, 3.8))
    labels = [r["label"] for r in nelbo_rows]
    vals = [r["val_bits_per_token"] for r in nelbo_rows]
    errs = [r["val_stderr_bits"] for r in nelbo_rows]
    colors = ["tab:gray" if _is_arm(r) else "tab:blue" for r in nelbo_rows]
    ax.barh(range(len(vals)), vals, xerr=errs, color=colors, capsize=3)
    ax.set_yticks(range(len(vals)), labels)
    ax.invert_yaxis()
    lo = min(v - e for v, e in zip(vals, errs))
    ax.set_xlim(max(0.0, lo - 0.15 * (max(vals) - lo + 1e-3)), max(v + e for v, e in zip(vals, errs)) * 1.02)
    ax.set_xlabel("validation bits/token (MDM: NELBO bound; ARM: exact NLL)")
    ax.set_title("Same budget, same backbone")
    files["nelbo"] = report.save_figure(fig, workdir, "nelbo.png")

    if kl_rows:
        fig, ax = plt.subplots(figsize=(7, 4))
        for i, srow in enumerate(kl_summary):
            c = f"C{i}"
            pts = sorted(
                (r["t"], r["kl"])
                for r in kl_rows
                if r["ratio"] == srow["ratio"] and r["variant"] == srow["variant"]
            )
            ts, kls = zip(*pts)
            # Log scale with a floor: KL is exactly 0 at t = t* (the reference itself).
            ax.plot(
                ts,
                np.maximum(kls, KL_FLOOR),
                "o-",
                ms=3,
                color=c,
                label=f"{srow['variant']}: n/L={srow['ratio']:.2g} (t*={srow['t_star']:.2f})",
            )
            ax.axvspan(srow["band_lo"], srow["band_hi"], color=c, alpha=0.12)
            ax.axvline(srow["t_star"], color=c, ls="--", lw=0.8)
        ax.set_yscale("log")
        ax.set_xlabel("t given to the network")
        ax.set_ylabel(f"mean KL(mu(x,t*) || mu(x,t)) [nats], floor {KL_FLOOR:g}")
        ax.set_title(
            "Output change vs t at a fixed input\n(dashed: t*; shaded: central 95% of t given n masks)",
            fontsize=10,
        )
        ax.legend(fontsize=7)
        files["kl"] = report.save_figure(fig, workdir, "kl_vs_t.png")

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, curve in curves.items():
        if curve["steps"]:
            ax.plot(curve["steps"], curve["bits_per_token"], "o-", ms=3, label=name)
    ax.set_xlabel("step")
    ax.set_ylabel("validation bits/token (each run's own estimator)")
    ax.legend(fontsize=8)
    files["curves"] = report.save_figure(fig, workdir, "learning_curves.png")
    return files


def findings(nelbo_rows, kl_summary, curves, files) -> list[tuple[str | None, str]]:
    """The summary's sentences, derived from the numbers (and the plots they refer to)."""
    mdm = [r for r in nelbo_rows if not _is_arm(r)]
    arm = [r for r in nelbo_rows if _is_arm(r)]
    out = []
    if mdm:
        best = min(mdm, key=lambda r: r["val_bits_per_token"])
        spread = max(r["val_bits_per_token"] for r in mdm) - best["val_bits_per_token"]
        se = max(r["val_stderr_bits"] for r in mdm)
        close = "within" if spread <= 2 * se else "beyond"
        s = (
            f"At the same budget the MDM variants' validation bounds span {spread:.3f} bits/token "
            f"({close} twice the largest standard error, {se:.3f}), the lowest being "
            f"{best['label']} at {best['val_bits_per_token']:.3f}"
        )
        if arm:
            a = arm[0]["val_bits_per_token"]
            rel = 100 * (best["val_bits_per_token"] - a) / best["val_bits_per_token"]
            s += (
                f"; the ARM's exact NLL is {a:.3f} bits/token, "
                f"{abs(rel):.1f}% {'below' if rel > 0 else 'above'} the best MDM bound"
            )
        out.append((files["nelbo"], s + "."))
    for srow in kl_summary:
        frac = srow["kl_band_max"] / max(srow["ce_at_t_star"], 1e-12)
        verdict = (
            "t carries little information beyond the mask ratio"
            if frac < 0.05
            else "the output depends noticeably on t even where the data put it"
        )
        out.append(
            (
                files.get("kl"),
                (
                    f"{srow['variant']} at n/L={srow['ratio']:.2g}: within the central 95% of the Beta "
                    f"posterior of t ({srow['band_lo']:.3f}-{srow['band_hi']:.3f}) the output moves by at "
                    f"most {srow['kl_band_max']:.2g} nats mean KL ({100 * frac:.2g}% of its "
                    f"{srow['ce_at_t_star']:.3g}-nat loss per masked token; posterior-expected KL "
                    f"{srow['kl_posterior_mean']:.2g}), and by at most {srow['kl_max']:.2g} nats over all "
                    f"{srow['num_times']} times evaluated in (0, 1): {verdict}."
                ),
            )
        )
    finals = {k: v["bits_per_token"][-1] for k, v in curves.items() if v["bits_per_token"]}
    if finals:
        firsts = {k: v["bits_per_token"][0] for k, v in curves.items() if v["bits_per_token"]}
        order = " < ".join(f"{k} ({v:.3f})" for k, v in sorted(finals.items(), key=lambda kv: kv[1]))
        out.append(
            (
                files["curves"],
                (
                    f"Validation bits/token go from {min(firsts.values()):.3f}-{max(firsts.values()):.3f} at "
                    f"the first eval to the final order {order} (each run's own estimator, "
                    "train.eval_batches batches)."
                ),
            )
        )
    return out


def draw(workdir: str) -> dict:
    """Plots, findings and summary.md from time_agnostic.json in workdir (nothing is recomputed)."""
    data = report.read_results(workdir, NAME)
    res, tables = data["results"], data["tables"]
    nelbo_rows, kl_summary = tables["nelbo"], tables.get("kl_summary", [])
    files = _plots(workdir, nelbo_rows, tables.get("kl", []), kl_summary, res["curves"])
    found = findings(nelbo_rows, kl_summary, res["curves"], files)
    summary = report.write_summary(
        workdir, data, findings=found, title=TITLE, markdown_tables=("nelbo", "kl_summary")
    )
    return {"summary": summary, "plots": files, "findings": found}


# ----------------------------------------------------------------------------- computing


def _validation_row(name, vcfg, params, step, mesh, pshard) -> dict:
    """The variant's validation numbers: every MDM under one estimator (the continuous NELBO, same
    keys), the ARM with its exact NLL; a variant trained on another objective also gets its own."""
    obj = objectives.of(vcfg)
    ecfg = vcfg if obj.causal else derive(vcfg, **{"objective.kind": "continuous"})
    kw = dict(num_batches=int(vcfg.eval.num_batches), mc_draws=int(vcfg.eval.mc_draws))
    m = likelihood.validation_metrics(ecfg, params, mesh, pshard, **kw)
    row = {
        "variant": name,
        "label": VARIANTS[name][2],
        "objective": obj.name,
        "time_conditioning": objectives.uses_time(vcfg),
        "num_params": _num_params(params),
        "checkpoint_step": step,
        "val_bits_per_token": m["bits_per_token"],
        "val_stderr_bits": m["nats_per_token_stderr"] / objectives.LN2,
        "val_perplexity": m["perplexity"],
        "estimator": f"{ecfg.objective.kind} {obj.likelihood}",
        "num_tokens": m["num_tokens"],
        "mc_draws": m["mc_draws"],
    }
    if ecfg.objective.kind != obj.name:
        own = likelihood.validation_metrics(vcfg, params, mesh, pshard, **kw)
        row["own_estimator_bits_per_token"] = own["bits_per_token"]
    return row


def run(config, workdir: str) -> dict:
    exp = config.experiment
    names = parse_list(exp.variants, str, "experiment.variants")
    for name in names:
        if name not in VARIANTS:
            raise ValueError(
                f"experiment.variants: unknown variant {name!r}; choose from {', '.join(VARIANTS)}"
            )
    ratios = parse_list(exp.kl_ratios, float, "experiment.kl_ratios")
    if not all(0.0 < r <= 1.0 for r in ratios):
        raise ValueError(f"experiment.kl_ratios={exp.kl_ratios!r}: mask ratios must be in (0, 1]")
    t0 = time.perf_counter()
    nelbo_rows, kl_rows, kl_summary, curves = [], [], [], {}
    for name in names:
        vcfg = variant_config(config, name)
        wd = os.path.join(workdir, "runs", name)
        info = train_run(vcfg, wd)
        params, step, mesh, pshard = runs.restore_params(vcfg, wd, use_ema=bool(vcfg.eval.use_ema))
        row = _validation_row(name, vcfg, params, step, mesh, pshard)
        row["train_tokens_per_s"] = train_throughput(wd)
        row["train_seconds"] = info["train_seconds"]
        nelbo_rows.append(row)
        curves[name] = _learning_curve(wd)
        if row["time_conditioning"]:
            rows, summary = time_dependence(
                vcfg,
                params,
                step,
                ratios=ratios,
                num_times=int(exp.kl_num_times),
                num_sequences=int(exp.kl_num_sequences),
            )
            kl_rows += [{"variant": name, **r} for r in rows]
            kl_summary += [{"variant": name, **r} for r in summary]
    budget = {
        "num_steps": variant_config(config, names[0]).train.num_steps,
        "batch_size": config.train.batch_size,
        "seq_len": config.data.seq_len,
    }
    results = {
        "budget": budget,
        "variants": {r["variant"]: r for r in nelbo_rows},
        "kl_summary": kl_summary,
        "curves": curves,
        "seconds": time.perf_counter() - t0,
    }
    tables = {"nelbo": nelbo_rows}
    if kl_rows:
        tables["kl_summary"] = kl_summary
        tables["kl"] = kl_rows
    notes = [
        f"Budget per variant: {budget['num_steps']} steps x batch {budget['batch_size']} x "
        f"L={budget['seq_len']}, same data order and seed; time-conditioned variants have the adaLN "
        "parameters on top (see num_params).",
        f"Validation: {nelbo_rows[0]['num_tokens']} tokens, {config.eval.mc_draws} low-discrepancy draw(s) "
        "per sequence, EMA parameters; stderr over (batch, draw) means.",
        "Discrete variants are scored with the continuous NELBO for comparability (the same expectation for "
        "a time-free network, Prop. 3.1); their own estimator is in own_estimator_bits_per_token.",
        "KL reference band: mask level 1 - alpha ~ Beta(n, L - n + 1) given n masks (the paper's "
        "alpha ~ Beta(L-n+1, n)), mapped to t through the schedule's inverse. KL is evaluated on the t grid, "
        f"at t* and at the {POSTERIOR_QUANTILES} posterior quantiles (posterior_quantile in the kl table); "
        "both maxima range over those times.",
    ]
    paths = report.write_results(workdir, NAME, config=config, results=results, tables=tables, notes=notes)
    drawn = draw(workdir)
    print(open(drawn["summary"]).read())
    return {**results, "findings": drawn["findings"], "paths": {**paths, "summary": drawn["summary"]}}
