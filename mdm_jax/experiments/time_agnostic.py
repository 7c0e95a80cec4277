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
Outputs in `workdir`: time_agnostic.json, time_agnostic_{nelbo,kl,kl_summary}.csv, nelbo.png,
kl_vs_t.png, learning_curves.png, summary.md.
"""

from __future__ import annotations

import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import scipy.stats

from mdm_jax import evaluate, rng, runs
from mdm_jax import report
from mdm_jax.experiments import derive, parse_list, train_run

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
    return derive(config, **{"objective.kind": kind, "model.time_conditioning": tc,
                             "train.num_steps": steps})


def _num_params(params) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))


def _throughput(workdir: str) -> float | None:
    """Median training tokens/s of a run, without its first log interval (compilation)."""
    from mdm_jax import metrics

    try:
        recs = [r["tokens_per_s"] for r in metrics.read_metrics(workdir, "train") if "tokens_per_s" in r]
    except FileNotFoundError:
        return None
    recs = recs[1:] if len(recs) > 1 else recs
    return float(np.median(recs)) if recs else None


def _learning_curve(workdir: str):
    from mdm_jax import metrics

    try:
        recs = metrics.read_metrics(workdir, "eval")
    except FileNotFoundError:
        return [], []
    return [r["step"] for r in recs], [r["bits_per_token"] for r in recs]


def mask_exactly(x0: np.ndarray, n: int, key, mask_id: int) -> np.ndarray:
    """x0 with exactly n uniformly chosen positions per row set to mask_id."""
    u = jax.random.uniform(key, x0.shape)
    ranks = jnp.argsort(jnp.argsort(u, axis=1), axis=1)
    return np.where(np.asarray(ranks) < n, mask_id, x0).astype(np.int32)


def time_dependence(vcfg, params, step: int, *, ratios, num_times: int, num_sequences: int):
    """Rows of mean KL(mu(x, t*) || mu(x, t)) over a t grid, and one summary row per ratio."""
    from mdm_jax import models, objectives
    from mdm_jax.data import pipeline
    from mdm_jax.models import adapters

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
    x0 = batch[:max(1, min(num_sequences, batch.shape[0]))]
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

        def kl_at(t):
            kl, ce = kl_and_ce(lp_ref, log_probs(params, x, jnp.full((s,), t, jnp.float32)), masked, jnp.asarray(x0))
            return float(kl), float(ce)

        ce_star = kl_at(t_star)[1]
        kls = []
        for t in sorted(set(grid.tolist()) | {t_star}):
            kl, _ = kl_at(t)
            kls.append(kl)
            rows.append({"ratio": r, "n": n, "t": t, "t_star": t_star, "kl": kl,
                         "in_band": band[0] <= t <= band[1]})
        post_kls = [kl_at(t)[0] for t in t_post]
        in_band = [row["kl"] for row in rows if row["ratio"] == r and row["in_band"]] + post_kls
        summary.append({
            "ratio": r, "n": n, "L": L, "t_star": t_star, "band_lo": band[0], "band_hi": band[1],
            "mask_level_std": float(post.std()), "kl_posterior_mean": float(np.mean(post_kls)),
            "kl_band_max": float(np.max(in_band)), "kl_grid_max": float(np.max(kls)),
            "ce_at_t_star": ce_star, "num_sequences": s, "checkpoint_step": step})
    return rows, summary


def _plots(workdir, nelbo_rows, kl_rows, kl_summary, curves):
    import matplotlib.pyplot as plt

    files = {}
    fig, ax = plt.subplots(figsize=(7, 3.8))
    labels = [r["label"] for r in nelbo_rows]
    vals = [r["val_bits_per_token"] for r in nelbo_rows]
    errs = [r["val_stderr_bits"] for r in nelbo_rows]
    colors = ["tab:gray" if r["objective"] == "arm" else "tab:blue" for r in nelbo_rows]
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
            pts = [(r["t"], r["kl"]) for r in kl_rows if r["ratio"] == srow["ratio"] and r["variant"] == srow["variant"]]
            ts, kls = zip(*pts)
            # Log scale with a floor: KL is exactly 0 at t = t* (the reference itself).
            ax.plot(ts, np.maximum(kls, KL_FLOOR), "o-", ms=3, color=c,
                    label=f"{srow['variant']}: n/L={srow['ratio']:.2g} (t*={srow['t_star']:.2f})")
            ax.axvspan(srow["band_lo"], srow["band_hi"], color=c, alpha=0.12)
            ax.axvline(srow["t_star"], color=c, ls="--", lw=0.8)
        ax.set_yscale("log")
        ax.set_xlabel("t given to the network")
        ax.set_ylabel(f"mean KL(mu(x,t*) || mu(x,t)) [nats], floor {KL_FLOOR:g}")
        ax.set_title("Output change vs t at a fixed input\n(dashed: t*; shaded: central 95% of t given n masks)",
                     fontsize=10)
        ax.legend(fontsize=7)
        files["kl"] = report.save_figure(fig, workdir, "kl_vs_t.png")

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, (steps, bits) in curves.items():
        if steps:
            ax.plot(steps, bits, "o-", ms=3, label=name)
    ax.set_xlabel("step")
    ax.set_ylabel("validation bits/token (each run's own estimator)")
    ax.legend(fontsize=8)
    files["curves"] = report.save_figure(fig, workdir, "learning_curves.png")
    return files


def _findings(nelbo_rows, kl_summary, curves, files):
    mdm = [r for r in nelbo_rows if r["objective"] != "arm"]
    arm = [r for r in nelbo_rows if r["objective"] == "arm"]
    out = []
    if mdm:
        best = min(mdm, key=lambda r: r["val_bits_per_token"])
        spread = max(r["val_bits_per_token"] for r in mdm) - best["val_bits_per_token"]
        se = max(r["val_stderr_bits"] for r in mdm)
        close = "within" if spread <= 2 * se else "beyond"
        s = (f"At the same budget the MDM variants' validation bounds span {spread:.3f} bits/token "
             f"({close} twice the largest standard error, {se:.3f}), the lowest being "
             f"{best['label']} at {best['val_bits_per_token']:.3f}")
        if arm:
            a = arm[0]["val_bits_per_token"]
            rel = 100 * (best["val_bits_per_token"] - a) / best["val_bits_per_token"]
            s += (f"; the ARM's exact NLL is {a:.3f} bits/token, "
                  f"{abs(rel):.1f}% {'below' if rel > 0 else 'above'} the best MDM bound")
        out.append((files["nelbo"], s + "."))
    for srow in kl_summary:
        frac = srow["kl_band_max"] / max(srow["ce_at_t_star"], 1e-12)
        verdict = ("t carries little information beyond the mask ratio" if frac < 0.05
                   else "the output depends noticeably on t even where the data put it")
        out.append((files.get("kl"), (
            f"{srow['variant']} at n/L={srow['ratio']:.2g}: within the central 95% of the Beta posterior "
            f"of t ({srow['band_lo']:.3f}-{srow['band_hi']:.3f}) the output moves by at most "
            f"{srow['kl_band_max']:.2g} nats mean KL ({100 * frac:.2g}% of its {srow['ce_at_t_star']:.3g}-nat "
            f"loss per masked token; posterior-expected KL {srow['kl_posterior_mean']:.2g}), against "
            f"{srow['kl_grid_max']:.2g} nats over the whole t range: {verdict}.")))
    finals = {k: v[1][-1] for k, v in curves.items() if v[1]}
    if finals:
        firsts = {k: v[1][0] for k, v in curves.items() if v[1]}
        order = " < ".join(f"{k} ({v:.3f})" for k, v in sorted(finals.items(), key=lambda kv: kv[1]))
        out.append((files["curves"], (
            f"Validation bits/token go from {min(firsts.values()):.3f}-{max(firsts.values()):.3f} at the "
            f"first eval to the final order {order} (each run's own estimator, train.eval_batches batches).")))
    return out


def run(config, workdir: str) -> dict:
    exp = config.experiment
    names = parse_list(exp.variants, str, "experiment.variants")
    for name in names:
        if name not in VARIANTS:
            raise ValueError(f"experiment.variants: unknown variant {name!r}; choose from {', '.join(VARIANTS)}")
    ratios = parse_list(exp.kl_ratios, float, "experiment.kl_ratios")
    if not all(0.0 < r <= 1.0 for r in ratios):
        raise ValueError(f"experiment.kl_ratios={exp.kl_ratios!r}: mask ratios must be in (0, 1]")
    t0 = time.perf_counter()
    nelbo_rows, kl_rows, kl_summary, curves = [], [], [], {}
    for name in names:
        vcfg = variant_config(config, name)
        wd = os.path.join(workdir, "runs", name)
        info = train_run(vcfg, wd)
        kind = vcfg.objective.kind
        # One estimator for all MDMs (continuous NELBO, same keys); the ARM's exact NLL.
        ecfg = vcfg if kind == "arm" else derive(vcfg, **{"objective.kind": "continuous"})
        params, step, mesh, pshard = runs.restore_params(vcfg, wd, use_ema=bool(vcfg.eval.use_ema))
        m = evaluate.validation_metrics(ecfg, params, mesh, pshard, num_batches=int(vcfg.eval.num_batches),
                                        mc_draws=int(vcfg.eval.mc_draws))
        row = {"variant": name, "label": VARIANTS[name][2], "objective": kind,
               "time_conditioning": bool(vcfg.model.time_conditioning) and kind != "arm",
               "num_params": _num_params(params), "checkpoint_step": step,
               "val_bits_per_token": m["bits_per_token"], "val_stderr_bits": m["nelbo_stderr"] / evaluate.LOG2,
               "val_ppl" if kind == "arm" else "val_ppl_bound": m["ppl_bound"],
               "estimator": "exact NLL" if kind == "arm" else "continuous NELBO",
               "num_tokens": m["num_tokens"], "mc_draws": m["mc_draws"]}
        if kind == "discrete":
            own = evaluate.validation_metrics(vcfg, params, mesh, pshard, num_batches=int(vcfg.eval.num_batches),
                                              mc_draws=int(vcfg.eval.mc_draws))
            row["own_estimator_bits_per_token"] = own["bits_per_token"]
        row["train_tokens_per_s"] = _throughput(wd)
        row["train_seconds"] = info["train_seconds"]
        nelbo_rows.append(row)
        curves[name] = _learning_curve(wd)
        if row["time_conditioning"]:
            rows, summary = time_dependence(vcfg, params, step, ratios=ratios, num_times=int(exp.kl_num_times),
                                            num_sequences=int(exp.kl_num_sequences))
            kl_rows += [{"variant": name, **r} for r in rows]
            kl_summary += [{"variant": name, **r} for r in summary]
    files = _plots(workdir, nelbo_rows, kl_rows, kl_summary, curves)
    findings = _findings(nelbo_rows, kl_summary, curves, files)
    budget = {"num_steps": variant_config(config, names[0]).train.num_steps,
              "batch_size": config.train.batch_size, "seq_len": config.data.seq_len}
    results = {"budget": budget, "variants": {r["variant"]: r for r in nelbo_rows},
               "kl_summary": kl_summary, "seconds": time.perf_counter() - t0}
    tables = {"nelbo": nelbo_rows}
    if kl_rows:
        tables["kl_summary"] = kl_summary
        tables["kl"] = kl_rows
    notes = [
        f"Budget per variant: {budget['num_steps']} steps x batch {budget['batch_size']} x L={budget['seq_len']}, "
        "same data order and seed; time-conditioned variants have the adaLN parameters on top (see num_params).",
        f"Validation: {nelbo_rows[0]['num_tokens']} tokens, {config.eval.mc_draws} low-discrepancy draw(s) per "
        "sequence, EMA parameters; stderr over (batch, draw) means.",
        "Discrete variants are scored with the continuous NELBO for comparability (the same expectation for a "
        "time-free network, Prop. 3.1); their own estimator is in own_estimator_bits_per_token.",
        "KL reference band: mask level 1 - alpha ~ Beta(n, L - n + 1) given n masks (the paper's "
        "alpha ~ Beta(L-n+1, n)), mapped to t through the schedule's inverse.",
    ]
    paths = report.write(workdir, "time_agnostic", config=config, results=results, tables=tables,
                         findings=findings, notes=notes, markdown_tables=("nelbo", "kl_summary"),
                         title="Masked diffusion models are time-agnostic: same-budget variants")
    print(open(paths["summary"]).read())
    return {**results, "paths": paths}
