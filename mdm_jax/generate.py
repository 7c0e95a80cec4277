"""Sample mode (`--mode=sample`): latest checkpoint -> configured sampler -> JSONL of samples.

    python -m mdm_jax.main --mode=sample --config=configs/quickstart.py --workdir=workdirs/quickstart \
        --config.sampling.method=first_hitting --config.sampling.precision=float64

The checkpoint's EMA parameters (or the raw ones, `sampling.use_ema=False`) become a plain function
through `mdm_jax.models.adapters` (denoise_fn for MDMs, a KV-cached step_fn for the ARM), and
`config.sampling.method` draws `num_samples` sequences in batches of `sampling.batch_size`, batch i
with key `rng.fold(root_key(seed), "sample", i)`, so a sample depends only on (checkpoint, seed,
settings, batch index). An optional text prompt (`sampling.prompt`) is tokenized with the data
tokenizer and fixed as the first positions (MDM: `init`, ARM: `prompt`).

Output: `workdir/samples/<method>_<precision>_<steps>.jsonl`, one record per sample with the
token ids, decoded text and every setting that produced it (the fields
`sample_quality.sample_quality` reads). `wall_time_s` is per sampler batch (all its samples share
it) and the first batch's includes compilation (`includes_compile`).
"""

from __future__ import annotations

import json
import math
import os
import time

import jax
import numpy as np
from jax.experimental import multihost_utils

from mdm_jax import errors, models, objectives, report, rng, runs, sampling, sharding
from mdm_jax.data import tokenizers
from mdm_jax.models import adapters
from mdm_jax.sampling.categorical import check_precision


def check_method(config) -> str:
    """The sampler name, checked against the objective (an ARM cannot denoise, an MDM is not causal)."""
    method = config.sampling.method
    objective = objectives.of(config)
    if method not in objectives.SAMPLING_METHODS:
        raise errors.ConfigError(
            f"unknown sampling.method {method!r}: choose one of {', '.join(objectives.SAMPLING_METHODS)}"
        )
    if method not in objective.sampling_methods:
        raise errors.ConfigError(
            f"sampling.method={method!r} cannot sample a model trained with objective.kind="
            f"{objective.name!r}: use --config.sampling.method={' or '.join(objective.sampling_methods)}"
        )
    if method == "mdlm_ancestral":
        _check_mdlm(config)
    elif int(config.sampling.uniform_bits):
        raise errors.ConfigError(
            f"sampling.uniform_bits={config.sampling.uniform_bits} applies to "
            f"sampling.method=mdlm_ancestral only, not {method!r}: set it to 0"
        )
    return method


def _check_mdlm(config) -> None:
    """MDLM's procedure moves masks with probability t itself: only linear-like schedules fit it."""
    sampling.mdlm.check(config.sampling.precision, config.sampling.uniform_bits)
    if config.objective.schedule not in ("linear", "loglinear"):
        raise errors.ConfigError(
            f"sampling.method=mdlm_ancestral is MDLM's procedure, whose mask level is t (MDLM's "
            f"log-linear schedule); this model was trained with objective.schedule="
            f"{config.objective.schedule!r}: use sampling.method=ancestral or first_hitting"
        )
    if float(config.sampling.temperature) != 1.0:
        raise errors.ConfigError(
            "sampling.method=mdlm_ancestral has no temperature (MDLM's sampler has "
            "none): set sampling.temperature=1.0 or use another sampling.method"
        )


def check_sampling(config) -> None:
    """Every sampling.* field, before any checkpoint is read or anything compiled (also run before
    training when train.sample_at_end is set, so that a bad field does not fail after the run)."""
    s = config.sampling
    method = check_method(config)
    check_precision(s.precision)
    for name in ("num_samples", "batch_size"):
        if int(s[name]) < 1:
            raise errors.ConfigError(f"sampling.{name}={s[name]} must be >= 1")
    if method == "first_hitting" and int(s.tokens_per_step) < 1:
        raise errors.ConfigError(
            f"sampling.tokens_per_step={s.tokens_per_step} must be >= 1 (tokens "
            "unmasked per network call; 1 is the exact first-hitting sampler)"
        )
    if method in ("ancestral", "mdlm_ancestral") and int(s.num_steps) < 1:
        raise errors.ConfigError(f"sampling.num_steps={s.num_steps} must be >= 1 (ancestral steps)")
    if not (math.isfinite(s.temperature) and s.temperature > 0):
        raise errors.ConfigError(f"sampling.temperature={s.temperature} must be a finite number > 0")
    if int(s.seq_len) < 0:
        raise errors.ConfigError(f"sampling.seq_len={s.seq_len} must be >= 0 (0 means data.seq_len)")
    _prompt_ids(config, tokenizers.get(config.data), _seq_len(config))


def _seq_len(config) -> int:
    length = int(config.sampling.seq_len) or int(config.data.seq_len)
    if length > config.model.max_len:
        raise errors.ConfigError(
            f"sampling.seq_len={length} exceeds model.max_len={config.model.max_len}; "
            "lower --config.sampling.seq_len"
        )
    return length


def _prompt_ids(config, tok, seq_len: int) -> np.ndarray:
    if not config.sampling.prompt:
        return np.zeros((0,), np.int32)
    ids = np.asarray(tok.encode(config.sampling.prompt), np.int32)
    if len(ids) >= seq_len:
        raise errors.ConfigError(
            f"sampling.prompt is {len(ids)} tokens long; it must be shorter than the "
            f"sample length {seq_len} (sampling.seq_len / data.seq_len)"
        )
    return ids


def _gather(x) -> np.ndarray:
    """A (possibly multi-host sharded) global array as one host numpy array on every process."""
    if jax.process_count() > 1:
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)


def make_sampler(config, params, mesh):
    """(run, seq_len, prompt): the configured sampler over `params`.

    run(key, batch_size) -> (tokens int32[batch_size, seq_len], stats) draws one batch; seq_len is
    the sample length (`sampling.seq_len`, else `data.seq_len`) and prompt the int32 ids of
    `sampling.prompt` that every sample starts with (empty without one).
    """
    method = check_method(config)
    s = config.sampling
    model = models.build(config)
    seq_len = _seq_len(config)
    vocab = int(config.model.vocab_size)
    prompt = _prompt_ids(config, tokenizers.get(config.data), seq_len)
    schedule = objectives.schedule_of(config.objective)
    dp = sharding.data_parallel_size(mesh)

    if objectives.of(config).causal:
        step_fns = {}  # one adapter per batch size: params cast and cache shapes built once

        def run(key, batch_size):
            bs = sharding.batch_sharding(mesh, ndim=1) if batch_size % dp == 0 else None
            if batch_size not in step_fns:
                step_fns[batch_size] = adapters.ar_step_fn(model, params, batch_size)
            step_fn, init_state = step_fns[batch_size]
            p = np.broadcast_to(prompt, (batch_size, len(prompt))) if len(prompt) else None
            return sampling.autoregressive(
                step_fn,
                init_state,
                key,
                batch_size=batch_size,
                seq_len=seq_len,
                precision=s.precision,
                temperature=float(s.temperature),
                prompt=p,
                bos_id=vocab,
                batch_sharding=bs,
            )

        return run, seq_len, prompt

    # One adapter for all batches: its params are cast to the compute dtype once.
    denoise = adapters.denoise_fn(model, params)

    def run(key, batch_size):
        bs = sharding.batch_sharding(mesh, ndim=1) if batch_size % dp == 0 else None
        init = None
        if len(prompt):
            init = np.full((batch_size, seq_len), vocab, np.int32)
            init[:, : len(prompt)] = prompt
        common = dict(
            batch_size=batch_size,
            seq_len=seq_len,
            mask_id=vocab,
            schedule=schedule,
            precision=s.precision,
            init=init,
            temperature=float(s.temperature),
            batch_sharding=bs,
        )
        if method == "first_hitting":
            return sampling.first_hitting(denoise, key, tokens_per_step=int(s.tokens_per_step), **common)
        if method == "mdlm_ancestral":
            # MDLM's own procedure: its time grid and move chance t (no schedule), no temperature.
            for k in ("schedule", "temperature"):
                common.pop(k)
            return sampling.mdlm_ancestral(
                denoise,
                key,
                num_steps=int(s.num_steps),
                cache=bool(s.cache),
                uniform_bits=int(s.uniform_bits),
                **common,
            )
        return sampling.ancestral(
            denoise,
            key,
            num_steps=int(s.num_steps),
            cache=bool(s.cache),
            factorized=bool(s.factorized),
            **common,
        )

    return run, seq_len, prompt


def sample(config, workdir, *, num_print: int = 8, output_dir=None) -> list[dict]:
    """Samples from the latest checkpoint in `workdir`; writes and returns the JSONL records.

    The JSONL goes to `<output_dir or workdir>/samples/`; the first `num_print` samples are printed
    (the header says how many are shown when there are more).
    """
    check_sampling(config)
    s = config.sampling
    use_ema = bool(s.use_ema)
    params, ckpt_step, mesh, _ = runs.restore_params(config, workdir, use_ema=use_ema)
    run, seq_len, prompt = make_sampler(config, params, mesh)
    tok = tokenizers.get(config.data)
    root = rng.root_key(config.seed)
    device_kind = report.device_kind()

    records: list[dict] = []
    num_batches = math.ceil(s.num_samples / s.batch_size)
    stats = {}
    for b in range(num_batches):
        start = time.perf_counter()
        tokens, stats = run(rng.fold(root, "sample", b), int(s.batch_size))
        tokens = _gather(jax.block_until_ready(tokens))
        wall = time.perf_counter() - start
        for i, row in enumerate(tokens[: s.num_samples - len(records)]):
            records.append(
                {
                    "sample_index": len(records),
                    "batch_index": b,
                    "row": i,
                    "tokens": row.astype(int).tolist(),
                    "text": tok.decode(row),
                    "sampler": stats["method"],
                    "steps": int(stats["num_steps"]),
                    "tokens_per_step": int(stats.get("tokens_per_step", 1)),
                    "precision": s.precision,
                    "temperature": float(s.temperature),
                    "cache": stats.get("cache"),
                    "factorized": stats.get("factorized"),
                    "uniform_bits": stats.get("uniform_bits"),
                    "schedule": stats.get("schedule"),
                    "seq_len": seq_len,
                    "prompt": s.prompt,
                    "prompt_tokens": int(len(prompt)),
                    "seed": int(config.seed),
                    "nfe": int(stats["nfe"]),
                    "wall_time_s": wall,
                    "includes_compile": b == 0,
                    "batch_size": int(s.batch_size),
                    "checkpoint_step": ckpt_step,
                    "params": "ema" if use_ema else "raw",
                    "device_kind": device_kind,
                    "jax_version": jax.__version__,
                }
            )

    out_dir = os.path.join(os.fspath(output_dir or workdir), "samples")
    # A non-default uniform grid (mdlm_ancestral) is another policy: its own file.
    bits = f"_u{int(s.uniform_bits)}" if int(s.uniform_bits) else ""
    path = os.path.join(out_dir, f"{stats['method']}_{s.precision}{bits}_{int(stats['num_steps'])}.jsonl")
    if jax.process_index() == 0:
        os.makedirs(out_dir, exist_ok=True)
        with open(path, "w") as f:
            for r in records:
                f.write(json.dumps(r) + "\n")
        per_batch = [r["wall_time_s"] for r in records if r["row"] == 0]
        shown = min(len(records), num_print)
        which = f"showing all {shown}" if shown == len(records) else f"showing the first {shown}; all are"
        print(
            f"{len(records)} samples ({stats['method']}, {s.precision}, {records[0]['steps']} steps, "
            f"NFE {records[0]['nfe']}/batch, {sum(per_batch):.1f} s incl. compile) from checkpoint "
            f"step {ckpt_step} ({which} in {path})",
            flush=True,
        )
        for r in records[:shown]:
            print(f"--- sample {r['sample_index']}:\n{r['text']}", flush=True)
    return records
