"""Experiment table2: the paper's Table 2 with the published MDLM checkpoint, scored by GPT-2 Large.

Rows (experiment.rows), each `sampling.num_samples` sequences of the MDLM model's length:
  mdlm_float32             MDLM's own sampler (`sampling.mdlm_ancestral`: its time grid, cache, noise
                           removal) with its float32 arithmetic: the paper's "32-bit" (31.24 / 5.17);
  mdlm_float64             the same in float64: "64-bit" (126.11 / 5.66);
  mdlm_float64_truncated   float64 arithmetic on 24-bit uniforms, the ones float32 draws: "64-bit with
                           uniforms truncated as in 32-bit" (28.64 / 5.12);
  fhs_float64              the first-hitting sampler (exact, L network calls), float64 draws;
  parallel_fhs_float64     first-hitting with sampling.tokens_per_step tokens per call.
For every row: the per-sequence unigram entropy of the sampled ids (mean +- standard error) and the
generative perplexity under the GPT-2 in experiment.evaluator_dir with MDLM's definition (the
paper's numbers come from MDLM's code) and with the project's (token ids as sampled), each with its
delta-method standard error (mdm_jax/gen_ppl.py, docs/evaluation.md); NFE and wall time.

`compute(config, workdir)` samples and scores and writes table2.json (plus table2_samples.jsonl);
`draw(workdir)` (also `--mode=report`) turns that JSON alone into table2_rows.csv, table2.png and
summary.md. Command: configs/experiments/table2.py; fields: mdm_jax/config_experiments.py (EXPERIMENT_FIELDS).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time

import matplotlib.pyplot as plt
import numpy as np

from mdm_jax import gen_ppl, gpt2_evaluator, interop, report, rng, sample_metrics, sampling, schedules
from mdm_jax.experiments import parse_list

NAME = "table2"
# The paper's Table 2 (MDLM OpenWebText, 2048 steps, GPT-2 Large): (gen PPL, entropy).
PAPER = {
    "mdlm_float32": (31.24, 5.17),
    "mdlm_float64": (126.11, 5.66),
    "mdlm_float64_truncated": (28.64, 5.12),
}
# MDLM's forward process: mask level (1 - 1e-3) t, the t its adapter maps to sigma (mdm_jax.interop).
LOGLINEAR = schedules.get("loglinear", eps=1e-3)
ROWS = {
    "mdlm_float32": dict(
        label="MDLM sampler, 32-bit", sampler="mdlm_ancestral", precision="float32-pytorch", uniform_bits=24
    ),
    "mdlm_float64": dict(
        label="MDLM sampler, 64-bit", sampler="mdlm_ancestral", precision="float64", uniform_bits=53
    ),
    "mdlm_float64_truncated": dict(
        label="MDLM sampler, 64-bit, 24-bit uniforms",
        sampler="mdlm_ancestral",
        precision="float64",
        uniform_bits=24,
    ),
    "fhs_float64": dict(label="first-hitting, 64-bit", sampler="first_hitting", precision="float64"),
    "parallel_fhs_float64": dict(
        label="parallel first-hitting, 64-bit", sampler="first_hitting", precision="float64"
    ),
}


def _settings(config) -> dict:
    """The experiment's fields, checked before anything is loaded."""
    e, smp = config.experiment, config.sampling
    rows = parse_list(e.rows, str, "experiment.rows")
    for r in rows:
        if r not in ROWS:
            raise ValueError(f"experiment.rows: unknown row {r!r}; choose from {', '.join(ROWS)}")
    n, b = int(smp.num_samples), int(smp.batch_size)
    if n < 2 or b < 1 or n % b:
        raise ValueError(
            f"sampling.num_samples={n} must be >= 2 (standard errors) and a multiple of "
            f"sampling.batch_size={b}"
        )
    if int(smp.num_steps) < 1 or int(smp.tokens_per_step) < 1:
        raise ValueError("sampling.num_steps and sampling.tokens_per_step must be >= 1")
    for field in ("mdlm_dir", "evaluator_dir"):
        if not e[field] or not os.path.isdir(os.path.expanduser(e[field])):
            raise FileNotFoundError(
                f"experiment.{field}={e[field]!r} is not a directory: download the checkpoint first "
                "(README, 'Reproduce Table 2 with the published checkpoints')"
            )
    return dict(
        rows=rows,
        num_samples=n,
        batch_size=b,
        num_steps=int(smp.num_steps),
        tokens_per_step=int(smp.tokens_per_step),
        seq_len=int(smp.seq_len),
        seed=int(config.seed),
        mdlm_dir=os.path.abspath(os.path.expanduser(e.mdlm_dir)),
        evaluator_dir=os.path.abspath(os.path.expanduser(e.evaluator_dir)),
        mdlm_dtype=str(e.mdlm_dtype),
        evaluator_dtype=str(e.evaluator_dtype),
    )


def _sample(row: str, s: dict, denoise_fn, mdlm_info, seq_len: int, key):
    """All samples of one row: (tokens [num_samples, L], stats of the first batch, NFE per batch, seconds)."""
    spec = ROWS[row]
    b = s["batch_size"]
    common = dict(batch_size=b, seq_len=seq_len, mask_id=mdlm_info.mask_id, precision=spec["precision"])
    out, nfe, t0 = [], [], time.perf_counter()
    for i in range(s["num_samples"] // b):
        k = rng.fold(key, "batch", i)
        if spec["sampler"] == "mdlm_ancestral":
            # MDLM reuses the network output only for a time-free network (`_sample`).
            # The adapter returns MDLM's SUBS log-probabilities: p_x0 is their exp (normalized=True).
            tok, st = sampling.mdlm_ancestral(
                denoise_fn,
                k,
                num_steps=s["num_steps"],
                uniform_bits=spec["uniform_bits"],
                normalized=True,
                cache=not mdlm_info.time_conditioning,
                **common,
            )
        else:
            kk = s["tokens_per_step"] if row.startswith("parallel") else 1
            tok, st = sampling.first_hitting(denoise_fn, k, tokens_per_step=kk, schedule=LOGLINEAR, **common)
        out.append(np.asarray(tok))
        nfe.append(int(st["nfe"]))
    return np.concatenate(out), st, float(np.mean(nfe)), time.perf_counter() - t0


def _score(tokens, ev, s) -> dict:
    """Entropy and both gen PPL definitions with standard errors."""
    ent = sample_metrics.sequence_entropies(tokens)
    m = gen_ppl.mdlm_generative_perplexity(
        ev,
        tokens,
        sample_tokenizer=ev.tokenizer,
        eval_tokenizer=ev.tokenizer,
        eot_id=ev.eot_id,
        context=ev.context,
        vocab_size=ev.vocab_size,
        group_size=s["batch_size"],
        batch_size=s["batch_size"],
    )
    nll = sample_metrics.sequence_nlls(
        ev, tokens, ev.eot_id, vocab_size=ev.vocab_size, batch_size=s["batch_size"]
    )
    count = np.full(len(nll), tokens.shape[1], np.float64)
    p_mean = float(nll.sum() / count.sum())
    p_se = gen_ppl.ratio_stderr(nll, count)
    return {
        "entropy": float(ent.mean()),
        "entropy_se": float(ent.std(ddof=1) / math.sqrt(len(ent))),
        "gen_ppl": m["gen_ppl"],
        "gen_ppl_se": m["gen_ppl_se"],
        "gen_ppl_project": math.exp(p_mean),
        "gen_ppl_project_se": math.exp(p_mean) * p_se,
        "retokenized_mean_length": float(np.mean(m["retokenized_lengths"])),
    }, m["texts"]


def compute(config, workdir: str) -> str:
    """Samples every row, scores it, writes table2.json and table2_samples.jsonl; returns the JSON path."""
    s = _settings(config)
    os.makedirs(workdir, exist_ok=True)
    ev = gpt2_evaluator.load(s["evaluator_dir"], dtype=s["evaluator_dtype"], field="experiment.evaluator_dir")
    denoise_fn, mdlm_info = interop.load_mdlm(s["mdlm_dir"], dtype=s["mdlm_dtype"])
    vocab = int(mdlm_info.vocab_size)
    # The samples are decoded with the evaluator's GPT-2 tokenizer: MDLM OpenWebText has exactly its
    # 50,257 ids. A smaller vocabulary (the CI fixture's 600) is read as the first ids of GPT-2's.
    if vocab > ev.tokenizer.vocab_size:
        raise ValueError(
            f"experiment.mdlm_dir={s['mdlm_dir']} has {vocab} tokens (+ mask), more than "
            f"the GPT-2 tokenizer in experiment.evaluator_dir ({ev.tokenizer.vocab_size}): the "
            "samples are decoded with that tokenizer, so they must use its ids (MDLM "
            "OpenWebText: 50,257)"
        )
    if vocab < ev.tokenizer.vocab_size:
        print(
            f"{NAME}: the MDLM model has {vocab} tokens, the GPT-2 tokenizer {ev.tokenizer.vocab_size}: "
            "its ids are read as the first GPT-2 ids (a test setup, not a published checkpoint)",
            flush=True,
        )
    seq_len = s["seq_len"] or int(mdlm_info.model_length)
    if not 2 <= seq_len <= min(int(mdlm_info.model_length), ev.context):
        raise ValueError(
            f"sampling.seq_len={seq_len}: the MDLM model takes at most "
            f"{mdlm_info.model_length} tokens and the evaluator reads {ev.context} (the "
            "project's gen PPL scores whole samples); use 0 for the model's length"
        )
    root = rng.root_key(s["seed"])
    rows, records = [], []
    for row in s["rows"]:
        spec = ROWS[row]
        key = rng.fold(root, "table2", list(ROWS).index(row))
        tokens, st, nfe, wall = _sample(row, s, denoise_fn, mdlm_info, seq_len, key)
        metrics, texts = _score(tokens, ev, s)
        paper = PAPER.get(row, (None, None))
        rows.append(
            {
                "row": row,
                "label": spec["label"],
                "sampler": spec["sampler"],
                "precision": spec["precision"],
                "uniform_bits": st.get("uniform_bits"),
                "num_steps": s["num_steps"] if spec["sampler"] == "mdlm_ancestral" else None,
                "tokens_per_step": st.get("tokens_per_step", 1),
                "cache": st.get("cache"),
                "nfe_per_batch": nfe,
                **metrics,
                "paper_gen_ppl": paper[0],
                "paper_entropy": paper[1],
                "num_samples": int(tokens.shape[0]),
                "seq_len": seq_len,
                "wall_s_incl_compile": wall,
            }
        )
        records += [
            {"row": row, "sample_index": i, "tokens": t.tolist(), "text": x}
            for i, (t, x) in enumerate(zip(tokens, texts))
        ]
        r = rows[-1]
        print(
            f"{NAME}: {row:24s} entropy {r['entropy']:.3f}+-{r['entropy_se']:.3f} gen PPL "
            f"{r['gen_ppl']:.2f}+-{r['gen_ppl_se']:.2f} (project def. {r['gen_ppl_project']:.2f}) "
            f"NFE {nfe:.0f} ({wall:.1f}s)",
            flush=True,
        )
    results = {
        **{k: v for k, v in s.items() if k != "rows"},
        "seq_len": seq_len,
        "vocab_size": vocab,
        "mdlm": dataclasses.asdict(mdlm_info),
        **ev.info(),
        "gen_ppl_definition": gen_ppl.DESCRIPTIONS["mdlm"],
        "gen_ppl_project_definition": gen_ppl.DESCRIPTIONS["project"],
    }
    with open(os.path.join(workdir, f"{NAME}_samples.jsonl"), "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
    path = os.path.join(workdir, f"{NAME}.json")
    paper = {k: {"gen_ppl": g, "entropy": h} for k, (g, h) in PAPER.items()}
    report.write_json(
        path,
        {"name": NAME, "metadata": report.metadata(config), "results": results, "rows": rows, "paper": paper},
    )
    return path


# ----------------------------------------------------------------------------- report from the JSON


def _z(a: dict, b: dict) -> float:
    return (a["entropy"] - b["entropy"]) / math.hypot(a["entropy_se"] or 0.0, b["entropy_se"] or 0.0)


def _findings(rows: dict) -> list[str]:
    f = report.fmt
    out = []

    def cell(r):
        return (
            f"entropy {f(r['entropy'], 3)} +- {f(r['entropy_se'], 2)}, gen PPL {f(r['gen_ppl'], 4)} +- "
            f"{f(r['gen_ppl_se'], 3)}"
            + (f" (paper {r['paper_entropy']} / {r['paper_gen_ppl']})" if r.get("paper_gen_ppl") else "")
        )

    a, b, c = (rows.get(k) for k in ("mdlm_float32", "mdlm_float64", "mdlm_float64_truncated"))
    if a and b:
        out.append(
            f"MDLM's sampler in 32-bit: {cell(a)}; in 64-bit: {cell(b)}. The 32-bit samples are "
            f"{f(_z(b, a), 3)} standard errors lower in entropy, with a "
            f"{f(b['gen_ppl'] / a['gen_ppl'], 3)}x lower gen PPL: lost diversity, not better text."
        )
    if c and a and b:
        closer = "32-bit" if abs(_z(c, a)) < abs(_z(c, b)) else "64-bit"
        out.append(
            f"64-bit arithmetic on the 24-bit uniforms of 32-bit: {cell(c)}; {f(_z(c, a), 3)} "
            f"standard errors from the 32-bit row and {f(_z(c, b), 3)} from the 64-bit one: "
            f"it behaves like {closer}."
        )
    for k in ("fhs_float64", "parallel_fhs_float64"):
        r = rows.get(k)
        if r:
            ref = f"; {f(_z(r, b), 3)} standard errors from MDLM's sampler in 64-bit" if b else ""
            out.append(f"{r['label']} ({f(r['nfe_per_batch'], 4)} network calls per batch): {cell(r)}{ref}.")
    return out


def _plot(rows: list[dict], workdir: str) -> str:
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for r in rows:
        ax.errorbar(
            r["entropy"],
            r["gen_ppl"],
            xerr=r["entropy_se"],
            yerr=r["gen_ppl_se"],
            fmt="o",
            capsize=3,
            label=r["label"],
        )
        if r.get("paper_gen_ppl"):
            ax.plot(r["paper_entropy"], r["paper_gen_ppl"], "x", color=ax.lines[-1].get_color(), markersize=9)
    ax.plot([], [], "kx", label="paper's Table 2")
    ax.set_yscale("log")
    ax.set_xlabel("sequence entropy (nats)")
    ax.set_ylabel("gen PPL under GPT-2 (MDLM's definition)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return report.save_figure(fig, workdir, f"{NAME}.png")


def report_from_json(path: str) -> dict:
    """table2_rows.csv, table2.png and summary.md beside `path` (a table2.json), from it alone."""
    with open(path) as fh:
        data = json.load(fh)
    workdir = os.path.dirname(os.path.abspath(path))
    rows, res, meta = data["rows"], data["results"], data["metadata"]
    paths = {"csv": report.write_csv(os.path.join(workdir, f"{NAME}_rows.csv"), rows)}
    paths["plot"] = _plot(rows, workdir)
    cols = [
        "label",
        "nfe_per_batch",
        "entropy",
        "entropy_se",
        "paper_entropy",
        "gen_ppl",
        "gen_ppl_se",
        "paper_gen_ppl",
        "gen_ppl_project",
        "gen_ppl_project_se",
        "wall_s_incl_compile",
    ]
    findings = _findings({r["row"]: r for r in rows})
    md = ["# Table 2: MDLM sampling precision, scored by GPT-2", "", "## Findings", ""]
    md += [f"- {x}" for x in findings] + [
        "",
        f"![{paths['plot']}]({paths['plot']})",
        "",
        "## Rows",
        "",
        report.markdown_table(rows, cols),
        f"(CSV: `{NAME}_rows.csv`)",
        "",
    ]
    md += [
        "## Notes",
        "",
        f"- MDLM checkpoint {res['mdlm_dir']} ({res['mdlm_dtype']} compute), L={res['seq_len']}, "
        f"V={res['vocab_size']}; {res['num_samples']} samples per row in batches of {res['batch_size']}, "
        f"seed {res['seed']}; MDLM rows {res['num_steps']} steps, parallel first-hitting "
        f"{res['tokens_per_step']} tokens per call.",
        f"- Evaluator {res['evaluator']} ({res['evaluator_dtype']}), context {res['evaluator_context']}.",
        f"- gen_ppl: {res['gen_ppl_definition']}. gen_ppl_project: {res['gen_ppl_project_definition']}. "
        "Errors are delta-method standard errors over sequences (docs/evaluation.md).",
        "- Entropy: per-sequence unigram entropy of the sampled ids (nats), mean +- standard error.",
        "- Wall times include compilation; samples and their decoded texts: table2_samples.jsonl.",
        "",
        "## Run",
        "",
        f"device: {meta['device_kind']} x{meta['num_devices']} ({meta['platform']}), jax "
        f"{meta['jax_version']}, {meta['timestamp_utc']}; full config and metadata in `{NAME}.json`.",
        "",
    ]
    paths["summary"] = os.path.join(workdir, "summary.md")
    with open(paths["summary"], "w") as fh:
        fh.write("\n".join(md))
    return {**paths, "findings": findings}


def draw(workdir: str) -> dict:
    """The CSV, plot and summary.md from table2.json in workdir (what `--mode=report` runs)."""
    out = report_from_json(os.path.join(workdir, f"{NAME}.json"))
    return {**out, "plots": [out["plot"]]}


def run(config, workdir: str) -> dict:
    path = compute(config, workdir)
    out = report_from_json(path)
    with open(path) as fh:
        data = json.load(fh)
    return {"rows": data["rows"], "results": data["results"], "json": path, **out}
