"""The two models of experiment mdm_vs_arm and how they are sampled: the MDM config and its ARM
twin, each run's restored model, the evaluator ARM that scores gen PPL (experiment.evaluator),
and compiled first-hitting / KV-cached ARM samplers shared across temperatures and repeats.

`mdm_jax.experiments.mdm_vs_arm` measures the pair with them and writes the page.
"""

from __future__ import annotations

import math
import os
import time

import jax
import numpy as np

from mdm_jax import evaluators, models, objectives, rng, runs, sampling
from mdm_jax.experiments import derive, train_run
from mdm_jax.models import adapters


def pair_configs(config):
    """(MDM config, its ARM twin): the experiment config with train.num_steps = experiment.num_steps,
    and the same with objective.kind="arm"."""
    steps = int(config.experiment.num_steps) or int(config.train.num_steps)
    mdm = derive(config, **{"train.num_steps": steps})
    if objectives.of(mdm).causal:
        raise ValueError(
            "mdm_vs_arm: the experiment config must describe the MDM (objective.kind "
            "continuous or discrete); its ARM twin is derived from it"
        )
    arm = derive(mdm, **{"objective.kind": "arm", "sampling.method": "autoregressive"})
    return mdm, arm


def restore_model(cfg, workdir):
    """A trained run's config, workdir, parameters (EMA when eval.use_ema), step, mesh and model."""
    params, step, mesh, pshard = runs.restore_params(cfg, workdir, use_ema=bool(cfg.eval.use_ema))
    return {
        "cfg": cfg,
        "workdir": workdir,
        "params": params,
        "step": step,
        "mesh": mesh,
        "pshard": pshard,
        "model": models.build(cfg),
    }


def evaluator(kind: str, arm, config, workdir):
    """(logits_fn, bos_id, info) following experiment.evaluator: "self", "train" or an ARM workdir
    (see the docstring of mdm_jax.experiments.mdm_vs_arm)."""
    if kind == "self":
        m = arm
        why = "the ARM under test itself (biased towards the ARM: it scores its own samples)"
    elif kind == "train":
        cfg = derive(arm["cfg"], seed=int(arm["cfg"].seed) + 1)
        wd = os.path.join(workdir, "runs", "evaluator")
        train_run(cfg, wd)
        m = restore_model(cfg, wd)
        why = (
            "a second ARM, same size and budget, another seed (init and data order): neither "
            "model under test scores itself"
        )
    else:
        fn, bos, info = evaluators.loadevaluator(config, kind)
        return (
            fn,
            bos,
            {**info, "evaluator": kind, "evaluator_why": "a separate ARM workdir given in the config"},
        )
    jitted = jax.jit(lambda p, x: adapters.ar_logits_fn(m["model"], p)(x))
    fn = lambda x: jitted(m["params"], x)  # noqa: E731
    info = {
        "evaluator": kind,
        "evaluator_workdir": os.path.abspath(m["workdir"]),
        "evaluator_step": m["step"],
        "evaluator_why": why,
    }
    return fn, m["cfg"].model.vocab_size, info


class Samplers:
    """Compiled FHS / cached-ARM samplers of the pair; one function object per model and batch
    size so that the samplers' compile caches hit across temperatures and repeats."""

    def __init__(self, mdm, arm):
        self.mdm, self.arm = mdm, arm
        self.denoise = adapters.denoise_fn(mdm["model"], mdm["params"])
        self.sched = objectives.schedule_of(mdm["cfg"].objective)
        self._ar = {}

    def mdm_sample(self, key, batch, seq_len, temperature, precision):
        toks, stats = sampling.first_hitting(
            self.denoise,
            key,
            batch_size=batch,
            seq_len=seq_len,
            mask_id=self.mdm["cfg"].model.vocab_size,
            schedule=self.sched,
            precision=precision,
            tokens_per_step=1,
            temperature=temperature,
        )
        return jax.block_until_ready(toks), stats

    def arm_sample(self, key, batch, seq_len, temperature, precision):
        if batch not in self._ar:
            self._ar[batch] = adapters.ar_step_fn(self.arm["model"], self.arm["params"], batch)
        step_fn, state = self._ar[batch]
        toks, stats = sampling.autoregressive(
            step_fn,
            state,
            key,
            batch_size=batch,
            seq_len=seq_len,
            precision=precision,
            temperature=temperature,
            bos_id=self.arm["cfg"].model.vocab_size,
        )
        return jax.block_until_ready(toks), stats


def generate(samplers, which, root, ti, n, batch, seq_len, temperature, precision):
    """`n` samples of model `which` ("mdm" or "arm") at temperature index `ti`, in calls of `batch`:
    (tokens [n, seq_len], total NFE, sampling wall seconds)."""
    fn = samplers.mdm_sample if which == "mdm" else samplers.arm_sample
    out, nfe, wall = [], 0, 0.0
    for b in range(math.ceil(n / batch)):
        t0 = time.perf_counter()
        toks, stats = fn(rng.fold(root, f"mdm_vs_arm_{which}", ti, b), batch, seq_len, temperature, precision)
        wall += time.perf_counter() - t0
        nfe += int(stats["nfe"])
        out.append(np.asarray(toks))
    return np.concatenate(out)[:n], nfe, wall
