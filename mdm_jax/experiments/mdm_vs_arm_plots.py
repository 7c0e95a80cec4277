"""The figures of experiment mdm_vs_arm's page, drawn from its results JSON: validation
perplexity, gen PPL against sample entropy over the temperature sweep, sampling time per
sequence against L, and training throughput.
"""

from __future__ import annotations

import matplotlib.pyplot as plt

from mdm_jax import report


def plots(workdir, s, quality, speed) -> dict:
    """perplexity.png, genppl_vs_entropy.png, sampling_time.png and (when both runs' training
    throughput is known) throughput.png in workdir: {key: path}."""
    files = {}
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.bar(
        ["MDM (NELBO bound)", "ARM (exact)"],
        [s["mdm_val_ppl_bound"], s["arm_val_ppl"]],
        color=["tab:blue", "tab:gray"],
    )
    ax.set_ylabel("validation perplexity")
    files["ppl"] = report.save_figure(fig, workdir, "perplexity.png")

    fig, ax = plt.subplots(figsize=(6, 4))
    for which, c in (("mdm", "tab:blue"), ("arm", "tab:gray")):
        rows = sorted((r for r in quality if r["model"] == which), key=lambda r: r["entropy"])
        ax.plot(
            [r["entropy"] for r in rows],
            [r["gen_ppl"] for r in rows],
            "o-",
            color=c,
            label="MDM (FHS)" if which == "mdm" else "ARM (cached)",
        )
        for r in rows:
            ax.annotate(f"T={r['temperature']:g}", (r["entropy"], r["gen_ppl"]), fontsize=7)
    ax.axvline(s["reference_entropy"], color="k", ls=":", lw=1, label="real text entropy")
    if s.get("matched_entropy") is not None:
        ax.plot(
            [s["matched_entropy"]] * 2,
            [s["mdm_gen_ppl_matched"], s["arm_gen_ppl_matched"]],
            "r*",
            ms=10,
            label="matched entropy",
        )
    ax.set_yscale("log")
    ax.set_xlabel("sample entropy (nats, mean unigram entropy per sequence)")
    ax.set_ylabel("gen PPL under the evaluator ARM")
    ax.legend(fontsize=8)
    files["quality"] = report.save_figure(fig, workdir, "genppl_vs_entropy.png")

    fig, ax = plt.subplots(figsize=(6, 4))
    for which, c, lab in (
        ("fhs", "tab:blue", "MDM, first-hitting (L calls)"),
        ("arm", "tab:gray", "ARM, KV cache"),
    ):
        rows = [r for r in speed if r["sampler"] == which]
        ax.plot([r["seq_len"] for r in rows], [r["s_per_seq"] * 1e3 for r in rows], "o-", color=c, label=lab)
    report.log_x(ax, base=2)
    ax.set_yscale("log")
    ax.set_xlabel("sequence length L")
    ax.set_ylabel("ms per sequence")
    ax.legend(fontsize=8)
    files["speed"] = report.save_figure(fig, workdir, "sampling_time.png")

    if s.get("mdm_train_tokens_per_s") and s.get("arm_train_tokens_per_s"):
        fig, ax = plt.subplots(figsize=(5, 3.2))
        ax.bar(
            ["MDM", "ARM"],
            [s["mdm_train_tokens_per_s"], s["arm_train_tokens_per_s"]],
            color=["tab:blue", "tab:gray"],
        )
        ax.set_ylabel("training tokens/s")
        files["throughput"] = report.save_figure(fig, workdir, "throughput.png")
    return files
