"""One cell of experiment precision_sweep, a (sampler, precision, N): the model sampled (a trained
MDM checkpoint with its evaluator ARM, or the exact head + tail reference model), the cell's
samples, their entropy and gen PPL, and, for the reference model, the whole run's predicted
token law under the grid law and Prop. 5.2.

`mdm_jax.experiments.precision_sweep` runs the cells over the sweep, then reports them.
"""

from __future__ import annotations

import math
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from mdm_jax import evaluators, models, objectives, rng, runs, sample_metrics, sampling
from mdm_jax.models import adapters
from mdm_jax.reference import head_tail as refm
from mdm_jax.sampling.ancestral import step_coefficients

# The samplers a cell can run (experiment.samplers), and their names in plots and sentences.
SAMPLERS = ("ancestral", "factorized", "first_hitting", "parallel")
LABEL = {
    "ancestral": "ancestral (V+1)-way",
    "factorized": "ancestral factorized",
    "first_hitting": "first-hitting",
    "parallel": "parallel first-hitting",
}


# ----------------------------------------------------------------------------- model sources


def source(config) -> dict:
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


def tokens_per_step(sampler: str, config) -> int:
    """Tokens unmasked per network call: sampling.tokens_per_step for `parallel`, else 1."""
    return int(config.sampling.tokens_per_step) if sampler == "parallel" else 1


def run_cell(src, sampler, prec, num_steps, config, key):
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
                src["denoise_fn"], k, **common, tokens_per_step=tokens_per_step(sampler, config)
            )
        out.append(np.asarray(tok))
        nfe += int(st["nfe"])
    return np.concatenate(out), nfe / (n // b), time.perf_counter() - t0


def cell_metrics(src, tokens) -> dict:
    """Sequence entropy and gen PPL (under the source's evaluator) of a cell's samples, with their
    standard errors."""
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


def predict_run(src, sampler, prec, num_steps, exp) -> dict:
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
