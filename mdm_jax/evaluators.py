"""Evaluators of generative perplexity: the causal models that score samples.

    logits_fn, bos_id, info = evaluators.load_evaluator(config)   # eval.evaluator or eval.evaluator_workdir

`logits_fn(inputs int32[B, L]) -> logits [B, L, V]` is a full causal forward fed
`sampling.shift_right(x, bos_id)`, as `sample_metrics.sequence_nlls` does; `info` goes into every
report that uses the evaluator.

A spec is `KIND:PATH` or a bare path. `LOADERS` is the one dispatch point: `KIND` selects a
loader, and a bare path (or a prefix that is not a kind, e.g. `gs://...`) is a workdir trained by
this project with a causal objective ("workdir"); `gpt2:DIR` is a Hugging Face GPT-2 directory
(`mdm_jax.gpt2_evaluator`; its `logits_fn` also carries the tokenizer that MDLM's definition of
gen PPL retokenises with, see docs/evaluation.md). A new kind of evaluator is one entry there.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable

from mdm_jax import gpt2_evaluator, models, objectives, runs
from mdm_jax.models import adapters

__all__ = ["load_evaluator", "LOADERS"]


def _from_workdir(config, path: str):
    """An ARM trained by this project: its workdir's config.json and EMA params.

    Without a config.json (a run trained before configs were saved) the sample config with the
    causal objective is assumed: the quickstart pair shares its backbone, and a checkpoint of
    another shape fails to restore with an error naming the mismatched parameters.
    """
    fallback = copy.deepcopy(config)
    with fallback.unlocked():
        fallback.objective.kind = objectives.causal().name
    ecfg = runs.workdir_config(path, fallback)
    objective = objectives.of(ecfg)
    if not objective.causal:
        raise ValueError(
            f"evaluator {path} holds a {objective.name!r} model, not a causal one: point "
            "eval.evaluator_workdir at a workdir trained with an ARM config"
        )
    if ecfg.model.vocab_size != config.model.vocab_size or ecfg.data.tokenizer != config.data.tokenizer:
        raise ValueError(
            f"evaluator {path} uses tokenizer {ecfg.data.tokenizer} / "
            f"V={ecfg.model.vocab_size}, the samples {config.data.tokenizer} / "
            f"V={config.model.vocab_size}"
        )
    params, step, _, _ = runs.restore_params(ecfg, path, use_ema=bool(ecfg.eval.use_ema))
    fn = adapters.ar_logits_fn(models.build(ecfg), params)
    bos_id = int(ecfg.model.vocab_size)
    info = {
        "evaluator_workdir": os.path.abspath(path),
        "evaluator_step": step,
        "evaluator_objective": objective.name,
        "evaluator_bos_id": bos_id,
    }
    return fn, bos_id, info


def _from_gpt2(config, path: str):
    """A Hugging Face GPT-2 directory: scores GPT-2 token ids (its BOS is <|endoftext|>)."""
    ev = gpt2_evaluator.load(path)
    if int(config.model.vocab_size) != ev.vocab_size:
        raise ValueError(
            f"eval.evaluator=gpt2:{path} has {ev.vocab_size} tokens but the samples' model has "
            f"model.vocab_size={config.model.vocab_size} (data.tokenizer="
            f"{config.data.tokenizer}): a GPT-2 evaluator scores GPT-2 token ids only"
        )
    return ev, ev.eot_id, ev.info()


LOADERS: dict[str, Callable] = {"workdir": _from_workdir, "gpt2": _from_gpt2}


def load_evaluator(config, spec: str | None = None):
    """(logits_fn, bos_id, info) of the evaluator named by `spec` (default: eval.evaluator, else
    eval.evaluator_workdir)."""
    spec = spec or config.eval.evaluator or config.eval.evaluator_workdir
    if not spec:
        raise ValueError(
            "generative perplexity needs an evaluator: set --config.eval.evaluator_workdir to a "
            "workdir trained with an ARM config (e.g. configs/quickstart_arm.py), or "
            "--config.eval.evaluator=gpt2:/path/to/gpt2-large"
        )
    kind, sep, path = spec.partition(":")
    if not (sep and kind in LOADERS):
        kind, path = "workdir", spec
    return LOADERS[kind](config, path)
