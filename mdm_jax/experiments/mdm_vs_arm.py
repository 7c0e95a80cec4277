"""Experiment `mdm_vs_arm`: the decision page for a masked diffusion model and an ARM of equal budget.

The pair: `experiment.mdm_workdir` and `experiment.arm_workdir`, or, when empty, the config's
MDM and its ARM twin (same backbone, objective.kind="arm") trained for `experiment.num_steps`
into `<workdir>/runs/{mdm,arm}` (reused on a rerun). Measured, each with its settings:
1. validation perplexity: the MDM's NELBO bound (eval.mc_draws low-discrepancy draws) and the
   ARM's exact perplexity on the same `eval.num_batches` validation batches;
2. sample quality at matched entropy: FHS (exact, `sampling.precision`) and KV-cached ARM
   decoding at each temperature of `experiment.temperatures`; entropy and gen PPL of
   `sampling.num_samples` samples of length L = the pair's data.seq_len each (in sampler calls of
   `sampling.batch_size`); the gen PPL of both models is read off at the same entropy (log gen
   PPL interpolated linearly in entropy) -- the entropy of real validation text when both curves
   reach it;
3. sampling wall time per sequence vs L (`experiment.speed_lengths`, () = 16, 32, ... up to
   model.max_len; batch `experiment.speed_batch`, compiled, best of `experiment.speed_repeats`):
   FHS (L network calls on the full sequence) vs the KV-cached ARM (L single-position calls);
4. training throughput: median tokens/s of each run's metrics.jsonl (first interval dropped);
5. a verdict whose sentences are chosen by rules on those numbers (`verdict`).

Evaluator of gen PPL (`experiment.evaluator`): "train" (default) trains a second ARM with another
seed (hence another init and data order) into runs/evaluator, so the ARM under test is not scored
by itself (self-scoring rewards its own idiosyncrasies: at temperature 1 its samples' gen PPL is
its own perplexity); "self" uses the ARM under test (cheaper, biased towards the ARM); any other
value is an ARM workdir (e.g. a bigger model). The page states which one was used.
Outputs: mdm_vs_arm.json and mdm_vs_arm_{summary,quality,speed}.csv (written first), then, drawn
from the JSON by `draw` (also `--mode=report`): perplexity.png, genppl_vs_entropy.png,
sampling_time.png, throughput.png and summary.md (the page).
This module measures and writes the page; the pair, its evaluator and samplers are built in
mdm_vs_arm_pair.py, the figures drawn in mdm_vs_arm_plots.py.
"""

from __future__ import annotations

import math
import os
import time

import numpy as np

from mdm_jax import likelihood, report, rng, runs, sample_metrics
from mdm_jax.experiments import (
    derive,
    mdm_vs_arm_pair,
    mdm_vs_arm_plots,
    parse_list,
    train_run,
    train_throughput,
)

NAME = "mdm_vs_arm"
TITLE = "MDM vs ARM at the same budget: the decision page"


def matched(points_a, points_b, target):
    """Gen PPL of two (entropy, gen_ppl) curves at one entropy: `target` if both curves span it,
    else the middle of their overlap, else (no overlap) None. Returns (entropy, ppl_a, ppl_b, how)."""

    def interp(pts, e):
        pts = sorted(pts)
        xs, ys = [p[0] for p in pts], [math.log(p[1]) for p in pts]
        return math.exp(float(np.interp(e, xs, ys)))

    ea, eb = [p[0] for p in points_a], [p[0] for p in points_b]
    lo, hi = max(min(ea), min(eb)), min(max(ea), max(eb))
    if lo > hi:
        return None, None, None, "no overlap"
    if lo <= target <= hi:
        e, how = target, "the entropy of real validation text"
    else:
        e, how = 0.5 * (lo + hi), "the middle of the entropy range both models reach"
    return e, interp(points_a, e), interp(points_b, e), how


def verdict(s: dict) -> dict[str, str]:
    """Rule-based sentences from the page's numbers (s: the summary dict built by `run`), keyed
    likelihood / samples / speed / training (when both throughputs are known) / verdict."""
    out = {}
    mdm_p, arm_p = s["mdm_val_ppl_bound"], s["arm_val_ppl"]
    gap = 100 * (mdm_p - arm_p) / mdm_p
    if arm_p < mdm_p:
        out["likelihood"] = (
            f"Likelihood: the ARM wins validation perplexity by {gap:.1f}% ({arm_p:.3f} vs the "
            f"MDM's bound {mdm_p:.3f}; the bound overstates the MDM's true perplexity by an "
            "unknown margin)."
        )
    else:
        out["likelihood"] = (
            f"Likelihood: the MDM's bound is already {-gap:.1f}% below the ARM's perplexity "
            f"({mdm_p:.3f} vs {arm_p:.3f})."
        )
    if s.get("matched_entropy") is not None:
        gm, ga = s["mdm_gen_ppl_matched"], s["arm_gen_ppl_matched"]
        better, worse = ("ARM", "MDM") if ga < gm else ("MDM", "ARM")
        ratio = max(gm, ga) / min(gm, ga)
        out["samples"] = (
            f"Samples: at matched entropy {s['matched_entropy']:.3f} nats ({s['matched_how']}) the "
            f"{better}'s samples have {ratio:.2f}x lower gen PPL than the {worse}'s ({min(gm, ga):.2f} "
            f"vs {max(gm, ga):.2f}, evaluator: {s['evaluator']})."
        )
    else:
        out["samples"] = (
            "Samples: the temperature sweeps of the two models reach no common entropy; widen "
            "experiment.temperatures to compare gen PPL at matched entropy."
        )
    L, fm, fa = s["speed_max_len"], s["fhs_s_per_seq_at_max_len"], s["arm_s_per_seq_at_max_len"]
    faster, slower = ("ARM (KV cache)", "FHS") if fa < fm else ("FHS", "ARM (KV cache)")
    out["speed"] = (
        f"Sampling speed: at L={L} the {faster} takes {min(fa, fm) * 1e3:.1f} ms per sequence, "
        f"{max(fa, fm) / min(fa, fm):.1f}x less than {slower} ({max(fa, fm) * 1e3:.1f} ms); "
        f"the FHS/ARM time ratio goes from {s['speed_ratio_min_len']:.1f}x at L={s['speed_min_len']} "
        f"to {fm / fa:.1f}x at L={L}."
    )
    tm, ta = s.get("mdm_train_tokens_per_s"), s.get("arm_train_tokens_per_s")
    if tm and ta:
        rel = 100 * (tm - ta) / ta
        why = (
            "the objective barely changes the cost of a step"
            if abs(rel) < 15
            else "a gap this large is not the objective (same backbone, same tokens per step): the runs saw "
            "different machine load, so compare throughput only from runs on the same idle machine"
        )
        out["training"] = f"Training: {tm:.0f} vs {ta:.0f} tokens/s (MDM vs ARM, {rel:+.0f}%): {why}."
    arm_wins = (
        (arm_p < mdm_p)
        + (s.get("matched_entropy") is not None and s["arm_gen_ppl_matched"] < s["mdm_gen_ppl_matched"])
        + (fa < fm)
    )
    if arm_wins == 3:
        out["verdict"] = (
            "Verdict: at this budget the ARM is better on likelihood, sample quality and sampling "
            "speed; pick the MDM only for what an ARM cannot do (infilling, any-order or parallel "
            "decoding)."
        )
    elif arm_wins == 0:
        out["verdict"] = (
            "Verdict: the MDM wins on likelihood, sample quality and sampling speed at this budget."
        )
    else:
        out["verdict"] = (
            f"Verdict: mixed, the ARM wins {arm_wins} of 3 criteria (likelihood, matched-entropy "
            "gen PPL, sampling speed); weigh them by what the application needs."
        )
    return out


def findings(s: dict, quality, files) -> tuple[list[tuple[str | None, str]], dict[str, str]]:
    """The page's sentences (the verdict's, and the entropy span of the temperature sweep)."""
    sentences = verdict(s)
    temps = list(dict.fromkeys(r["temperature"] for r in quality))
    pts = {w: [r["entropy"] for r in quality if r["model"] == w] for w in ("mdm", "arm")}
    span = (
        f" Over T in {temps} the samples' entropy spans {min(pts['mdm']):.3f}-{max(pts['mdm']):.3f} "
        f"(MDM) and {min(pts['arm']):.3f}-{max(pts['arm']):.3f} (ARM) nats; real text: "
        f"{s['reference_entropy']:.3f}."
    )
    out = [
        (None, sentences["verdict"]),
        (files["ppl"], sentences["likelihood"]),
        (files["quality"], sentences["samples"] + span),
        (files["speed"], sentences["speed"]),
    ]
    if "training" in sentences and "throughput" in files:
        out.append((files["throughput"], sentences["training"]))
    return out, sentences


def draw(workdir: str) -> dict:
    """Plots, findings and summary.md (the page) from mdm_vs_arm.json in workdir (nothing is recomputed)."""
    data = report.read_results(workdir, NAME)
    s, quality, speed = data["results"]["summary"], data["tables"]["quality"], data["tables"]["speed"]
    files = mdm_vs_arm_plots.plots(workdir, s, quality, speed)
    found, sentences = findings(s, quality, files)
    summary = report.write_summary(workdir, data, findings=found, title=TITLE)
    return {"summary": summary, "plots": files, "findings": found, "verdict": sentences}


def _speed_lengths(exp, max_len: int, field_max_len: int) -> list[int]:
    if not exp.speed_lengths:  # powers of two from 16 up to the models' max_len
        top = max(1, int(math.log2(max(max_len, 16) / 16)) + 1)
        return sorted({min(16 * 2**i, max_len) for i in range(top)})
    lengths = sorted(parse_list(exp.speed_lengths, int, "experiment.speed_lengths"))
    if max(lengths) > max_len:
        raise ValueError(
            f"experiment.speed_lengths={exp.speed_lengths!r} exceeds the models' model.max_len "
            f"({field_max_len}); use lengths up to it"
        )
    return lengths


def run(config, workdir: str) -> dict:
    exp = config.experiment
    temps = parse_list(exp.temperatures, float, "experiment.temperatures")
    t_start = time.perf_counter()
    mdm_cfg, arm_cfg = mdm_vs_arm_pair.pair_configs(config)
    pair = {}
    for which, cfg, given in (("mdm", mdm_cfg, exp.mdm_workdir), ("arm", arm_cfg, exp.arm_workdir)):
        if given:
            # The workdir's own model; the experiment's validation settings, so both see the same data.
            cfg = derive(
                runs.workdir_config(given, cfg),
                **{"eval.num_batches": config.eval.num_batches, "eval.mc_draws": config.eval.mc_draws},
            )
            wd = given
        else:
            wd = os.path.join(workdir, "runs", which)
            train_run(cfg, wd)
        pair[which] = mdm_vs_arm_pair.restore_model(cfg, wd)
    mdm, arm = pair["mdm"], pair["arm"]
    max_len = min(mdm["cfg"].model.max_len, arm["cfg"].model.max_len)
    lengths = _speed_lengths(exp, max_len, mdm["cfg"].model.max_len)

    # 1. validation perplexity on the same batches.
    val = {}
    for which, m in pair.items():
        val[which] = likelihood.validation_metrics(
            m["cfg"],
            m["params"],
            m["mesh"],
            m["pshard"],
            num_batches=int(m["cfg"].eval.num_batches),
            mc_draws=int(m["cfg"].eval.mc_draws),
        )

    # 2. sample quality vs temperature.
    eval_fn, bos, einfo = mdm_vs_arm_pair.evaluator(str(exp.evaluator), arm, config, workdir)
    samplers = mdm_vs_arm_pair.Samplers(mdm, arm)
    root = rng.root_key(config.seed)
    # Samples as long as the pair's training sequences (the length their validation numbers refer to).
    L = min(int(mdm["cfg"].data.seq_len), int(arm["cfg"].data.seq_len), max_len)
    n, batch = int(config.sampling.num_samples), int(config.sampling.batch_size)
    prec = str(config.sampling.precision)
    ref_ent = sample_metrics.reference_entropy(mdm["cfg"], L, n)
    quality = []
    for ti, temp in enumerate(temps):
        for which in ("mdm", "arm"):
            toks, nfe, wall = mdm_vs_arm_pair.generate(samplers, which, root, ti, n, batch, L, temp, prec)
            ent = sample_metrics.sequence_entropy(toks)
            gppl = sample_metrics.generative_perplexity(
                eval_fn, toks, bos, vocab_size=config.model.vocab_size, batch_size=batch
            )
            quality.append(
                {
                    "model": which,
                    "sampler": "first_hitting" if which == "mdm" else "autoregressive",
                    "temperature": temp,
                    "entropy": ent,
                    "gen_ppl": gppl,
                    "num_samples": n,
                    "seq_len": L,
                    "precision": prec,
                    "tokens_per_step": 1,
                    "steps": L,
                    "nfe_total": nfe,
                    "wall_time_s_incl_compile": wall,
                    "checkpoint_step": pair[which]["step"],
                    "seed": int(config.seed),
                }
            )

    # 3. sampling time per sequence vs L (compile excluded: one warm-up call per shape).
    speed = []
    sb, reps = int(exp.speed_batch), int(exp.speed_repeats)
    for seq_len in lengths:
        for which, fn in (("fhs", samplers.mdm_sample), ("arm", samplers.arm_sample)):
            fn(rng.fold(root, "mdm_vs_arm_speed", seq_len, 0), sb, seq_len, 1.0, prec)
            times = []
            for r in range(reps):
                t0 = time.perf_counter()
                _, stats = fn(rng.fold(root, "mdm_vs_arm_speed", seq_len, r + 1), sb, seq_len, 1.0, prec)
                times.append(time.perf_counter() - t0)
            speed.append(
                {
                    "sampler": which,
                    "seq_len": seq_len,
                    "batch": sb,
                    "nfe": int(stats["nfe"]),
                    "s_per_batch": min(times),
                    "s_per_seq": min(times) / sb,
                    "precision": prec,
                    "repeats": reps,
                }
            )

    by = {(r["sampler"], r["seq_len"]): r["s_per_seq"] for r in speed}
    pts = {w: [(r["entropy"], r["gen_ppl"]) for r in quality if r["model"] == w] for w in ("mdm", "arm")}
    me, pm, pa, how = matched(pts["mdm"], pts["arm"], ref_ent)
    s = {
        "mdm_workdir": os.path.abspath(mdm["workdir"]),
        "arm_workdir": os.path.abspath(arm["workdir"]),
        "mdm_step": mdm["step"],
        "arm_step": arm["step"],
        "mdm_objective": mdm["cfg"].objective.kind,
        "mdm_time_conditioning": bool(mdm["cfg"].model.time_conditioning),
        "mdm_val_bits_per_token": val["mdm"]["bits_per_token"],
        "arm_val_bits_per_token": val["arm"]["bits_per_token"],
        "mdm_val_ppl_bound": val["mdm"]["perplexity"],
        "arm_val_ppl": val["arm"]["perplexity"],
        "val_tokens": val["mdm"]["num_tokens"],
        "mdm_mc_draws": val["mdm"]["mc_draws"],
        "reference_entropy": ref_ent,
        "matched_entropy": me,
        "mdm_gen_ppl_matched": pm,
        "arm_gen_ppl_matched": pa,
        "matched_how": how,
        **einfo,
        "speed_min_len": lengths[0],
        "speed_max_len": lengths[-1],
        "fhs_s_per_seq_at_max_len": by[("fhs", lengths[-1])],
        "arm_s_per_seq_at_max_len": by[("arm", lengths[-1])],
        "speed_ratio_min_len": by[("fhs", lengths[0])] / by[("arm", lengths[0])],
        "mdm_train_tokens_per_s": train_throughput(mdm["workdir"]),
        "arm_train_tokens_per_s": train_throughput(arm["workdir"]),
        "sampling_precision": prec,
        "num_samples": n,
        "seq_len": L,
        "seed": int(config.seed),
    }
    notes = [
        f"Evaluator of gen PPL: {einfo['evaluator_workdir']} ({einfo['evaluator_why']}).",
        "Gen PPL = exp(total NLL / total tokens) over all samples; each sample scored as generated after "
        "the evaluator's BOS, document separators scored like any token (mdm_jax/sample_metrics.py).",
        f"Sampling: FHS with tokens_per_step=1 (L={L} network calls), ARM with KV cache; precision {prec}; "
        f"{n} samples per temperature, sampler batch {batch}; speed: batch {sb}, best of {reps}, "
        "compile excluded.",
        f"Validation: {s['val_tokens']} tokens; MDM bound with {s['mdm_mc_draws']} low-discrepancy draw(s) "
        "per sequence; EMA parameters for everything.",
        "Training throughput comes from each run's metrics.jsonl: it compares like with like only when both "
        "runs trained on the same machine (true for pairs this experiment trains).",
    ]
    results = {"summary": s, "seconds": time.perf_counter() - t_start}
    tables = {
        "summary": [{"quantity": k, "value": v} for k, v in s.items()],
        "quality": quality,
        "speed": speed,
    }
    paths = report.write_results(workdir, NAME, config=config, results=results, tables=tables, notes=notes)
    drawn = draw(workdir)
    print(open(drawn["summary"]).read())
    return {
        **results,
        "verdict": drawn["verdict"],
        "findings": drawn["findings"],
        "paths": {**paths, "summary": drawn["summary"]},
    }
