"""Validation likelihood of a trained run (`--mode=eval`).

The latest checkpoint of a workdir (EMA parameters if `eval.use_ema`) is scored on
`eval.num_batches` validation batches with the training code's own eval step and eval loop
(`train.make_eval_step`, `train.eval_metrics`: no second implementation of the loss):
- MDM: the NELBO, an upper bound on the NLL, with `eval.mc_draws` Monte Carlo draws per
  sequence, each draw with low-discrepancy times across the batch;
- ARM: the exact NLL of the same data with the same tokenizer (one draw: nothing is random).
Both are reported in nats/token, bits/token and as perplexity; `likelihood` in the report says
whether they are bounds (the objective's `.likelihood`).
"""

from __future__ import annotations

import os
import time

import jax

from mdm_jax import objectives, report, rng, runs, train
from mdm_jax.data import pipeline

__all__ = ["validation_metrics", "evaluate"]


def validation_metrics(
    config, params, mesh, params_shardings, *, num_batches: int, mc_draws: int, split: str = "validation"
) -> dict:
    """Mean eval metrics over the validation batches x MC draws, with a standard error.

    Draw d of batch b uses rng.fold(root_key(seed), "eval", d, b), so draw 0 is exactly the
    training loop's eval of the same batches (`train.eval_metrics`).
    """
    if int(mc_draws) < 1:
        raise ValueError(f"eval.mc_draws must be >= 1, got {mc_draws}")
    draws = int(mc_draws) if objectives.of(config).random_estimate else 1
    eval_step = train.make_eval_step(config, mesh, params_shardings)
    batches = pipeline.eval_batches(config, num_batches, split=split)
    out = train.eval_metrics(eval_step, params, batches, rng.root_key(config.seed), mesh, draws=draws)
    out["num_sequences"] = int(config.train.batch_size) * len(batches)
    out["num_tokens"] = out["num_sequences"] * int(config.data.seq_len)
    out["mc_draws"] = draws
    out["num_batches"] = len(batches)
    return out


def evaluate(config, workdir: str, output_dir: str | None = None) -> dict:
    """Validation NELBO (MDM) or exact NLL (ARM) of the latest checkpoint in `workdir`; writes
    <output_dir or workdir>/eval/eval_<step>.json and returns its contents (plus "path")."""
    use_ema = bool(config.eval.use_ema)
    objective = objectives.of(config)
    params, step, mesh, pshard = runs.restore_params(config, workdir, use_ema=use_ema)
    t0 = time.perf_counter()
    m = validation_metrics(
        config,
        params,
        mesh,
        pshard,
        num_batches=int(config.eval.num_batches),
        mc_draws=int(config.eval.mc_draws),
    )
    result = {
        "checkpoint_step": step,
        "objective": objective.name,
        "params": "ema" if use_ema else "raw",
        "nats_per_token": m["nats_per_token"],
        "bits_per_token": m["bits_per_token"],
        "perplexity": m["perplexity"],
        "nats_per_token_stderr": m["nats_per_token_stderr"],
        "likelihood": objective.likelihood,
        "num_sequences": m["num_sequences"],
        "num_tokens": m["num_tokens"],
        "num_batches": m["num_batches"],
        "mc_draws": m["mc_draws"],
        "split": "validation",
        "eval_seconds": time.perf_counter() - t0,
        "eval_metrics": m,
    }
    out_dir = os.path.join(output_dir or workdir, "eval")  # --output_dir: a read-only workdir
    path = os.path.join(out_dir, f"eval_{step}.json")
    if jax.process_index() == 0:
        os.makedirs(out_dir, exist_ok=True)
        meta = report.metadata(config, workdir=os.path.abspath(workdir))
        report.write_json(path, {**result, "metadata": meta})
        print(
            f"eval step {step} ({objective.name}, {'EMA' if use_ema else 'raw'} params): "
            f"{m['nats_per_token']:.4f} nats/token = {m['bits_per_token']:.4f} bits/token "
            f"({objective.likelihood}; {objective.perplexity} {m['perplexity']:.3f}) over "
            f"{m['num_tokens']} tokens, {m['mc_draws']} draw(s)/sequence -> {path}"
        )
    result["path"] = path
    return result
