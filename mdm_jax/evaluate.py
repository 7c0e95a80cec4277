"""Evaluation: validation likelihood (`--mode=eval`) and sample-quality metrics (issue 4).

Likelihood (`evaluate`): the latest checkpoint of a workdir (EMA parameters if
`eval.use_ema`) is scored on `eval.num_batches` validation batches with the training code's own
eval step (no second implementation of the loss):
- MDM: the NELBO, an upper bound on the NLL, with `eval.mc_draws` Monte Carlo draws per
  sequence, each draw with low-discrepancy times across the batch; reported in nats/token,
  bits/token and as the perplexity bound exp(NELBO/token);
- ARM: the exact NLL of the same data with the same tokenizer (one draw: nothing is random).

Sample metrics (pure functions of token ids, as the field computes them, PAPER.md section 5):
- `sequence_entropy`: per sequence, the unigram entropy of its own token ids (nats), averaged;
- `generative_perplexity`: exp of the token-weighted mean NLL of *all* samples together under
  an evaluator ARM. End-of-text handling: sequences are scored exactly as sampled, with the
  evaluator's own tokenizer (no retokenisation, the models of a project share it); each
  sequence is preceded by the ARM's BOS (the mask id V, as in training) and all L tokens are
  scored, document separators (`eot_id`) like any other token; nothing is truncated at a
  separator, so text after it is scored in the (packed-training) context of what precedes it;
- `reference_entropy`: the same entropy on real held-out (validation) sequences of the same
  length, the value a perfect sampler would match.
`sample_quality` combines them into a report that records every sampler setting; `--mode=eval`
with `eval.evaluator_workdir` set also scores every `workdir/samples/*.jsonl` of `--mode=sample`.
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
from typing import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
import scipy.stats

from mdm_jax import gen_ppl, rng, runs

LOG2 = math.log(2.0)

# ----------------------------------------------------------------------------- sample metrics


def _as_sequences(tokens) -> list[np.ndarray]:
    if isinstance(tokens, (list, tuple)):  # possibly ragged
        return [np.asarray(t).reshape(-1) for t in tokens]
    arr = np.asarray(tokens)
    return list(arr.reshape(1, -1) if arr.ndim == 1 else arr)


def sequence_entropies(tokens) -> np.ndarray:
    """Unigram entropy (nats) of each sequence's own token ids; tokens: [N, L] or a list of 1-D."""
    out = []
    for seq in _as_sequences(tokens):
        if seq.size == 0:
            raise ValueError("sequence_entropy: empty sequence")
        _, counts = np.unique(seq, return_counts=True)
        out.append(scipy.stats.entropy(counts))  # normalises counts; natural log
    return np.asarray(out, np.float64)


def sequence_entropy(tokens) -> float:
    """Mean over sequences of the unigram entropy (nats) of each sequence's own ids."""
    return float(np.mean(sequence_entropies(tokens)))


def sequence_nlls(evaluator_logits_fn: Callable, tokens, bos_id: int, *,
                  vocab_size: int | None = None, batch_size: int | None = None) -> np.ndarray:
    """Summed NLL (nats) of each sequence under a causal evaluator.

    evaluator_logits_fn(inputs int32[B, L]) -> logits[B, L, V], logits[:, i] predicting the token
    after inputs[:, :i+1]. The inputs are [bos, x_0, ..., x_{L-2}] and the targets x_0..x_{L-1},
    so every sampled token is scored (the ARM objective's convention).
    """
    tokens = np.asarray(tokens)
    if tokens.ndim != 2:
        raise ValueError(f"generative perplexity needs tokens of shape [N, L], got {tokens.shape}")
    if vocab_size is not None and (tokens.min() < 0 or tokens.max() >= vocab_size):
        raise ValueError(
            f"token ids must be in [0, {vocab_size}) for the evaluator (got min {tokens.min()}, max "
            f"{tokens.max()}): a mask token left in a sample, or an evaluator with another vocabulary")
    n = tokens.shape[0]
    bs = batch_size or n
    out = []
    for i in range(0, n, bs):
        x = jnp.asarray(tokens[i:i + bs], jnp.int32)
        inputs = jnp.concatenate([jnp.full((x.shape[0], 1), bos_id, jnp.int32), x[:, :-1]], axis=1)
        logits = jnp.asarray(evaluator_logits_fn(inputs), jnp.float32)
        if vocab_size is None and int(tokens.max()) >= logits.shape[-1]:
            raise ValueError(f"token id {int(tokens.max())} >= evaluator vocabulary {logits.shape[-1]}")
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, x)
        out.append(np.asarray(ce, np.float64).sum(axis=1))
    return np.concatenate(out)


def generative_perplexity(evaluator_logits_fn: Callable, tokens, bos_id: int, *,
                          vocab_size: int | None = None, batch_size: int | None = None) -> float:
    """exp(token-weighted mean NLL over all samples) under the evaluator ARM (see module doc)."""
    tokens = np.asarray(tokens)
    nll = sequence_nlls(evaluator_logits_fn, tokens, bos_id, vocab_size=vocab_size, batch_size=batch_size)
    return float(np.exp(nll.sum() / tokens.size))


def reference_entropy(config, seq_len: int, num_sequences: int, split: str = "validation") -> float:
    """Mean unigram entropy of the first `num_sequences` real `split` sequences of length seq_len."""
    from mdm_jax.data import pipeline

    cfg = copy.deepcopy(config)
    with cfg.unlocked():
        cfg.data.seq_len = int(seq_len)
        cfg.train.batch_size = int(num_sequences)
    # One global batch of the wanted size; sequences are packed text with separators, like the
    # training data the samples imitate.
    batch = pipeline.eval_batches(cfg, 1, split=split, process_index=0, process_count=1)[0]
    return sequence_entropy(batch)


# ----------------------------------------------------------------------------- evaluator


def load_evaluator(config, evaluator_workdir: str | None = None):
    """(logits_fn, bos_id, info) of the evaluator ARM in `eval.evaluator_workdir` (EMA params).

    The evaluator's config is read from its workdir's config.json; without one (a run trained
    before configs were saved), the sample config with objective.kind="arm" is assumed: the
    quickstart pair shares its backbone, and a checkpoint of another shape fails to restore
    with an error naming the mismatched parameters.
    """
    from mdm_jax import models
    from mdm_jax.models import adapters

    if not evaluator_workdir and config.eval.get("evaluator", ""):
        return _load_gpt2_evaluator(config, config.eval.evaluator)
    wd = evaluator_workdir or config.eval.evaluator_workdir
    if not wd:
        raise ValueError("generative perplexity needs an evaluator ARM: set --config.eval.evaluator_workdir "
                         "to a workdir trained with an ARM config (e.g. configs/quickstart_arm.py)")
    fallback = copy.deepcopy(config)
    with fallback.unlocked():
        fallback.objective.kind = "arm"
    ecfg = runs.workdir_config(wd, fallback)
    if ecfg.objective.kind != "arm":
        raise ValueError(f"eval.evaluator_workdir={wd} holds a {ecfg.objective.kind!r} model, not an ARM")
    if ecfg.model.vocab_size != config.model.vocab_size or ecfg.data.tokenizer != config.data.tokenizer:
        raise ValueError(f"evaluator {wd} uses tokenizer {ecfg.data.tokenizer} / V={ecfg.model.vocab_size}, "
                         f"the samples {config.data.tokenizer} / V={config.model.vocab_size}")
    params, step, _, _ = runs.restore_params(ecfg, wd, use_ema=bool(ecfg.eval.use_ema))
    fn = adapters.ar_logits_fn(models.build(ecfg), params)
    info = {"evaluator_workdir": os.path.abspath(wd), "evaluator_step": step,
            "evaluator_objective": "arm", "evaluator_bos_id": ecfg.model.vocab_size}
    return fn, ecfg.model.vocab_size, info


def _load_gpt2_evaluator(config, spec: str):
    """(evaluator, bos_id, info) of `eval.evaluator="gpt2:DIR"`: a GPT-2 scores GPT-2 token ids."""
    # Imported here: it reads safetensors checkpoints (mdm_jax.interop), which only this path needs.
    from mdm_jax import gpt2_evaluator

    ev = gpt2_evaluator.load(spec)
    if int(config.model.vocab_size) != ev.vocab_size:
        raise ValueError(f"eval.evaluator={spec} has {ev.vocab_size} tokens but the samples' model has "
                         f"model.vocab_size={config.model.vocab_size} (data.tokenizer="
                         f"{config.data.tokenizer}): a GPT-2 evaluator scores GPT-2 token ids only")
    return ev, ev.eot_id, ev.info()


def _mdlm_gen_ppl(config, evaluator, tokens) -> dict:
    """MDLM's definition (mdm_jax.gen_ppl) of samples of this config's model under a GPT-2 evaluator."""
    from mdm_jax.data import tokenizers

    if not hasattr(evaluator, "tokenizer"):
        raise ValueError("eval.gen_ppl_definition='mdlm' decodes and retokenises text: it needs a GPT-2 "
                         "evaluator (eval.evaluator='gpt2:/path/to/gpt2-large'), not an ARM workdir")
    tok = tokenizers.get(config.data)
    if tok.vocab_size != evaluator.vocab_size:
        raise ValueError(f"data.tokenizer={config.data.tokenizer} has {tok.vocab_size} tokens, the evaluator "
                         f"{evaluator.vocab_size}: MDLM's definition decodes with the samples' tokenizer")
    return gen_ppl.mdlm_generative_perplexity(
        evaluator, tokens, sample_tokenizer=tok, eval_tokenizer=evaluator.tokenizer,
        eot_id=evaluator.eot_id, context=evaluator.context, vocab_size=evaluator.vocab_size,
        group_size=int(config.sampling.batch_size), batch_size=int(config.sampling.batch_size))


# ----------------------------------------------------------------------------- likelihood


def validation_metrics(config, params, mesh, params_shardings, *, num_batches: int, mc_draws: int,
                       split: str = "validation") -> dict:
    """Mean eval metrics over the validation batches x MC draws, with a standard error.

    Key of draw d on batch b: rng.fold(root, "eval", d, b), so results do not depend on the
    device count; every (batch, draw) has the same number of tokens, so the mean of the per-batch
    means is the token-weighted mean.
    """
    from mdm_jax import sharding, train
    from mdm_jax.data import pipeline

    draws = 1 if config.objective.kind == "arm" else int(mc_draws)
    if draws < 1:
        raise ValueError(f"eval.mc_draws must be >= 1, got {mc_draws}")
    eval_step = train.make_eval_step(config, mesh, params_shardings)
    root = rng.root_key(config.seed)
    batches = pipeline.eval_batches(config, num_batches, split=split)
    per = []
    for b, local in enumerate(batches):
        batch = sharding.global_batch(local, mesh)
        for d in range(draws):
            m = eval_step(params, batch, rng.fold(root, "eval", d, b))
            per.append({k: float(v) for k, v in jax.device_get(m).items()})
    keys = per[0].keys()
    out = {k: float(np.mean([p[k] for p in per])) for k in keys}
    nelbo = np.array([p["nelbo"] for p in per])
    out["nelbo_stderr"] = float(nelbo.std(ddof=1) / np.sqrt(len(nelbo))) if len(nelbo) > 1 else 0.0
    # Derived quantities from the mean NELBO (the mean of per-batch ppl would be biased).
    out["bits_per_token"] = out["nelbo"] / LOG2
    out["ppl_bound"] = float(np.exp(out["nelbo"]))
    out["num_sequences"] = int(config.train.batch_size) * len(batches)
    out["num_tokens"] = out["num_sequences"] * int(config.data.seq_len)
    out["mc_draws"] = draws
    out["num_batches"] = len(batches)
    return out


def evaluate(config, workdir: str) -> dict:
    """--mode=eval: validation NELBO (MDM) or exact NLL (ARM) of the latest checkpoint."""
    from mdm_jax import report

    use_ema = bool(config.eval.use_ema)
    params, step, mesh, pshard = runs.restore_params(config, workdir, use_ema=use_ema)
    t0 = time.perf_counter()
    m = validation_metrics(config, params, mesh, pshard, num_batches=int(config.eval.num_batches),
                           mc_draws=int(config.eval.mc_draws))
    kind = config.objective.kind
    bound = "exact NLL" if kind == "arm" else "NELBO bound"
    result = {
        "checkpoint_step": step, "objective": kind, "params": "ema" if use_ema else "raw",
        "nats_per_token": m["nelbo"], "bits_per_token": m["bits_per_token"],
        "perplexity" if kind == "arm" else "ppl_bound": m["ppl_bound"],
        "nats_per_token_stderr": m["nelbo_stderr"], "likelihood": bound,
        "num_sequences": m["num_sequences"], "num_tokens": m["num_tokens"],
        "num_batches": m["num_batches"], "mc_draws": m["mc_draws"], "split": "validation",
        "eval_seconds": time.perf_counter() - t0, "eval_metrics": m,
    }
    out_dir = os.path.join(workdir, "eval")
    path = os.path.join(out_dir, f"eval_{step}.json")
    if jax.process_index() == 0:
        os.makedirs(out_dir, exist_ok=True)
        report.write_json(path, {**result, "metadata": report.metadata(config, workdir=os.path.abspath(workdir))})
        print(f"eval step {step} ({kind}, {'EMA' if use_ema else 'raw'} params): {m['nelbo']:.4f} nats/token = "
              f"{m['bits_per_token']:.4f} bits/token ({bound}; ppl {m['ppl_bound']:.3f}) over "
              f"{m['num_tokens']} tokens, {m['mc_draws']} draw(s)/sequence -> {path}")
    result["path"] = path
    if config.eval.evaluator_workdir or config.eval.get("evaluator", ""):
        result["sample_quality"] = score_sample_files(config, workdir)
    return result


def score_sample_files(config, workdir: str) -> list[dict]:
    """Sample quality of every `workdir/samples/*.jsonl` written by `--mode=sample`, under the ARM
    in `eval.evaluator_workdir`: `--mode=eval` then reports likelihood and samples together."""
    import glob

    files = sorted(glob.glob(os.path.join(workdir, "samples", "*.jsonl")))
    if not files:
        if jax.process_index() == 0:
            print(f"no samples in {workdir}/samples to score: run --mode=sample first")
        return []
    evaluator = load_evaluator(config)
    out = []
    for path in files:
        with open(path) as f:
            records = [json.loads(line) for line in f if line.strip()]
        name = "sample_quality_" + os.path.splitext(os.path.basename(path))[0]
        q = sample_quality(config, workdir, records, evaluator=evaluator, name=name)
        if jax.process_index() == 0:
            print(f"samples {os.path.basename(path)}: {q['num_samples']} x L={q['seq_len']}, entropy "
                  f"{q['entropy']:.3f} nats (real text {q['reference_entropy']:.3f}), gen PPL {q['gen_ppl']:.3f} "
                  f"({q['sampler']}, {q['precision']}, {q['steps']} steps) -> {q['path']}")
        out.append(q)
    return out


# ----------------------------------------------------------------------------- sample quality

SETTINGS = ("checkpoint_step", "sampler", "steps", "tokens_per_step", "precision", "temperature",
            "num_samples", "seed", "nfe", "wall_time_s", "device_kind", "jax_version")


def _settings_from_records(records: Sequence[Mapping]) -> dict:
    """The sampler settings shared by generate.sample's records (must agree across records)."""
    keys = {"checkpoint_step": "checkpoint_step", "sampler": "sampler", "steps": "steps",
            "tokens_per_step": "tokens_per_step", "precision": "precision", "temperature": "temperature",
            "seed": "seed", "device_kind": "device_kind", "jax_version": "jax_version"}
    out = {}
    for k, src in keys.items():
        vals = {json.dumps(r.get(src)) for r in records}
        if len(vals) > 1:
            raise ValueError(f"sample records disagree on {src!r}: {sorted(vals)}; report them separately")
        out[k] = records[0].get(src)
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


def sample_quality(config, workdir: str, samples, *, settings: Mapping | None = None,
                   evaluator: tuple | None = None, name: str | None = None,
                   reference_split: str = "validation") -> dict:
    """Entropy, reference entropy and gen PPL of samples, written with all their settings.

    samples: generate.sample's records (dicts with "tokens") or an int array [N, L] plus
    `settings` (keys of SETTINGS; anything missing is recorded as None). evaluator:
    (logits_fn, bos_id, info) or None to load `eval.evaluator_workdir`.
    Writes workdir/eval/<name>.json and <name>.md; returns the result dict.
    """
    from mdm_jax import report

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
    definition = gen_ppl.check_definition(config.eval.get("gen_ppl_definition", "project"))
    logits_fn, bos_id, info = evaluator if evaluator is not None else load_evaluator(config)
    ent = sequence_entropies(tokens)
    if definition == "mdlm":
        g = _mdlm_gen_ppl(config, logits_fn, tokens)
        nll_sum, count = g["sequence_nll"].sum(), g["sequence_count"].sum()
    else:
        nll = sequence_nlls(logits_fn, tokens, bos_id, vocab_size=config.model.vocab_size,
                            batch_size=int(config.sampling.batch_size))
        nll_sum, count = nll.sum(), tokens.size
    result = {
        **s, "seq_len": int(tokens.shape[1]),
        "entropy": float(ent.mean()), "entropy_std": float(ent.std()),
        "reference_entropy": reference_entropy(config, tokens.shape[1], tokens.shape[0], split=reference_split),
        "gen_ppl": float(np.exp(nll_sum / count)),
        "gen_nll_per_token": float(nll_sum / count),
        "gen_ppl_definition": gen_ppl.DESCRIPTIONS[definition], "gen_ppl_definition_name": definition,
        **info,
    }
    name = name or f"sample_quality_{s['sampler']}_{s['precision']}_{s['steps']}"
    out_dir = os.path.join(workdir, "eval")
    if jax.process_index() == 0:
        report.write(out_dir, name, config=config, results=result,
                     tables={"settings": [{k: result[k] for k in (*SETTINGS, "entropy", "reference_entropy", "gen_ppl")}]},
                     findings=[(None, f"{result['num_samples']} samples: entropy {result['entropy']:.3f} nats "
                                      f"(real text {result['reference_entropy']:.3f}), gen PPL "
                                      f"{result['gen_ppl']:.3f} ({definition} definition) under "
                                      f"{info.get('evaluator_workdir') or info.get('evaluator')}.")],
                     title=f"Sample quality: {s['sampler']}, {s['precision']}", summary_name=f"{name}.md")
    result["path"] = os.path.join(out_dir, f"{name}.json")
    return result
