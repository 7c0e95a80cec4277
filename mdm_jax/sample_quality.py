"""Sample-quality reports: entropy, reference entropy and gen PPL of samples, with their settings.

`sample_quality(config, workdir, samples)` scores samples (generate.sample's records, or token
ids plus settings) with `mdm_jax.sample_metrics` under an evaluator from `mdm_jax.evaluators`,
and writes `workdir/eval/<name>.json` and `<name>.md` recording every sampler setting;
`score_sample_files` does it for every `workdir/samples/*.jsonl` of `--mode=sample` (what
`--mode=eval` runs when an evaluator is set). Gen PPL follows `eval.gen_ppl_definition`: the
project's (token ids scored as sampled) or MDLM's (decode, retokenise, chunk; `mdm_jax.gen_ppl`);
every report records which (docs/evaluation.md).
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Mapping, Sequence

import jax
import numpy as np

from mdm_jax import evaluators, gen_ppl, report, sample_metrics
from mdm_jax.data import tokenizers

__all__ = ["SETTINGS", "sample_quality", "score_sample_files"]

SETTINGS = (
    "checkpoint_step",
    "sampler",
    "steps",
    "tokens_per_step",
    "precision",
    "temperature",
    "num_samples",
    "seed",
    "nfe",
    "wall_time_s",
    "device_kind",
    "jax_version",
)
_TABLE = (*SETTINGS, "entropy", "reference_entropy", "gen_ppl")  # the report's settings table
# The settings generate.sample writes into each record that must agree across a report's records
# (the sample count, NFE and wall time are per sampler batch: combined below, not compared).
_RECORD_SETTINGS = tuple(k for k in SETTINGS if k not in ("num_samples", "nfe", "wall_time_s"))


def _settings_from_records(records: Sequence[Mapping]) -> dict:
    """The sampler settings shared by generate.sample's records (must agree across records)."""
    out = {}
    for k in _RECORD_SETTINGS:
        vals = {json.dumps(r.get(k)) for r in records}
        if len(vals) > 1:
            raise ValueError(f"sample records disagree on {k!r}: {sorted(vals)}; report them separately")
        out[k] = records[0].get(k)
    # NFE and wall time are recorded per sampler batch; sum over distinct batches.
    batches = {}
    for r in records:
        batches.setdefault(r.get("batch_index", len(batches)), (r.get("nfe"), r.get("wall_time_s")))
    nfes = [v[0] for v in batches.values() if v[0] is not None]
    walls = [v[1] for v in batches.values() if v[1] is not None]
    out["nfe"] = float(np.mean(nfes)) if nfes else None
    out["wall_time_s"] = float(np.sum(walls)) if walls else None
    out["wall_time_includes_compile"] = any(bool(r.get("includes_compile")) for r in records)
    return out


def sample_quality(
    config,
    workdir: str,
    samples,
    *,
    settings: Mapping | None = None,
    evaluator: tuple | None = None,
    name: str | None = None,
    reference_split: str = "validation",
) -> dict:
    """Entropy, reference entropy and gen PPL of samples, written with all their settings.

    samples: generate.sample's records (dicts with "tokens") or an int array [N, L] plus
    `settings` (keys of SETTINGS; anything missing is recorded as None). evaluator:
    (logits_fn, bos_id, info) or None to load `eval.evaluator_workdir`.
    Writes workdir/eval/<name>.json and <name>.md; returns the result dict.
    """
    if len(samples) and isinstance(samples[0], Mapping):
        tokens = np.asarray([r["tokens"] for r in samples], np.int32)
        s = _settings_from_records(samples)
    else:
        tokens = np.asarray(samples, np.int32)
        s = {}
    s.update(dict(settings or {}))
    s["num_samples"] = int(tokens.shape[0])
    s.setdefault("device_kind", report.device_kind())
    s.setdefault("jax_version", jax.__version__)
    for k in SETTINGS:
        s.setdefault(k, None)
    definition = gen_ppl.check_definition(config.eval.gen_ppl_definition)
    logits_fn, bos_id, info = evaluator if evaluator is not None else evaluators.load_evaluator(config)
    ent = sample_metrics.sequence_entropies(tokens)
    if definition == "mdlm":
        g = _mdlm_gen_ppl(config, logits_fn, tokens)
        nll_sum, count = g["sequence_nll"].sum(), g["sequence_count"].sum()
    else:
        nll = sample_metrics.sequence_nlls(
            logits_fn,
            tokens,
            bos_id,
            vocab_size=config.model.vocab_size,
            batch_size=int(config.sampling.batch_size),
        )
        nll_sum, count = nll.sum(), tokens.size
    result = {
        **s,
        "seq_len": int(tokens.shape[1]),
        "entropy": float(ent.mean()),
        "entropy_std": float(ent.std()),
        "reference_entropy": sample_metrics.reference_entropy(
            config, tokens.shape[1], tokens.shape[0], split=reference_split
        ),
        "gen_ppl": float(np.exp(nll_sum / count)),
        "gen_nll_per_token": float(nll_sum / count),
        "gen_ppl_definition": gen_ppl.DESCRIPTIONS[definition],
        "gen_ppl_definition_name": definition,
        **info,
    }
    name = name or f"sample_quality_{s['sampler']}_{s['precision']}_{s['steps']}"
    out_dir = os.path.join(workdir, "eval")
    if jax.process_index() == 0:
        finding = (
            f"{result['num_samples']} samples: entropy {result['entropy']:.3f} nats (real text "
            f"{result['reference_entropy']:.3f}), gen PPL {result['gen_ppl']:.3f} ({definition} "
            f"definition) under {info.get('evaluator_workdir') or info.get('evaluator')}."
        )
        report.write(
            out_dir,
            name,
            config=config,
            results=result,
            tables={"settings": [{k: result[k] for k in _TABLE}]},
            findings=[(None, finding)],
            title=f"Sample quality: {s['sampler']}, {s['precision']}",
            summary_name=f"{name}.md",
        )
    result["path"] = os.path.join(out_dir, f"{name}.json")
    return result


def _mdlm_gen_ppl(config, evaluator, tokens) -> dict:
    """MDLM's definition (mdm_jax.gen_ppl) of samples of this config's model under a GPT-2 evaluator."""
    if not hasattr(evaluator, "tokenizer"):
        raise ValueError(
            "eval.gen_ppl_definition='mdlm' decodes and retokenises text: it needs a GPT-2 "
            "evaluator (eval.evaluator='gpt2:/path/to/gpt2-large'), not an ARM workdir"
        )
    tok = tokenizers.get(config.data)
    if tok.vocab_size != evaluator.vocab_size:
        raise ValueError(
            f"data.tokenizer={config.data.tokenizer} has {tok.vocab_size} tokens, the evaluator "
            f"{evaluator.vocab_size}: MDLM's definition decodes with the samples' tokenizer"
        )
    return gen_ppl.mdlm_generative_perplexity(
        evaluator,
        tokens,
        sample_tokenizer=tok,
        eval_tokenizer=evaluator.tokenizer,
        eot_id=evaluator.eot_id,
        context=evaluator.context,
        vocab_size=evaluator.vocab_size,
        group_size=int(config.sampling.batch_size),
        batch_size=int(config.sampling.batch_size),
    )


def score_sample_files(config, workdir: str) -> list[dict]:
    """Sample quality of every `workdir/samples/*.jsonl` written by `--mode=sample`, under the
    evaluator of `eval.evaluator_workdir`: `--mode=eval` then reports likelihood and samples together."""
    files = sorted(glob.glob(os.path.join(workdir, "samples", "*.jsonl")))
    if not files:
        if jax.process_index() == 0:
            print(f"no samples in {workdir}/samples to score: run --mode=sample first")
        return []
    evaluator = evaluators.load_evaluator(config)
    out = []
    for path in files:
        with open(path) as f:
            records = [json.loads(line) for line in f if line.strip()]
        name = "sample_quality_" + os.path.splitext(os.path.basename(path))[0]
        q = sample_quality(config, workdir, records, evaluator=evaluator, name=name)
        if jax.process_index() == 0:
            print(
                f"samples {os.path.basename(path)}: {q['num_samples']} x L={q['seq_len']}, entropy "
                f"{q['entropy']:.3f} nats (real text {q['reference_entropy']:.3f}), "
                f"gen PPL {q['gen_ppl']:.3f} ({q['sampler']}, {q['precision']}, {q['steps']} steps) "
                f"-> {q['path']}"
            )
        out.append(q)
    return out
