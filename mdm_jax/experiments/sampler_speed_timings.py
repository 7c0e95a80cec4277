"""The timed cells of experiment sampler_speed: untrained MDM / ARM networks of the configured
shape, and the best wall time of each sampler on them (first-hitting and cached ancestral at
each N; the ARM with and without its KV cache at each L), as table rows.

Every cell is compiled (and warmed up) by one untimed run, then timed `experiment.repeats` times
with fresh keys (`mdm_jax.timing.best_time`). `mdm_jax.experiments.sampler_speed` fits its cost
model to these rows and reports them.
"""

from __future__ import annotations

import copy

import jax
import jax.numpy as jnp

from mdm_jax import models, objectives, rng, sampling, timing
from mdm_jax.models import adapters


def _model_config(config, vocab: int, max_len: int, arm: bool):
    c = copy.deepcopy(config)
    with c.unlocked():
        c.model.vocab_size = int(vocab)
        c.model.max_len = int(max_len)
        c.model.dropout = 0.0
        if arm:
            c.objective.kind = "arm"
    return c


def _init(config, seq_len: int, key):
    """Untrained parameters (timing does not depend on their values)."""
    model = models.build(config)
    tokens = jnp.zeros((1, seq_len), jnp.int32)
    t = jnp.zeros((1,), jnp.float32) if model.time_conditioning else None
    params = jax.jit(lambda k: model.init(k, tokens, t, deterministic=True))(key)["params"]
    return model, params


def mdm_seq_len(config) -> int:
    """The MDM's L: sampling.seq_len, or data.seq_len when that is 0."""
    return int(config.sampling.seq_len) or int(config.data.seq_len)


def mdm_timings(config, root, vocab: int, steps, log):
    """Rows of vocabulary `vocab`: first-hitting, then cached ancestral at each N of `steps` (NFE,
    categories drawn, best seconds per batch and per sequence)."""
    b, L = int(config.sampling.batch_size), mdm_seq_len(config)
    cfg = _model_config(config, vocab, L, arm=False)
    model, params = _init(cfg, L, rng.fold(root, "params_mdm", vocab))
    denoise = adapters.denoise_fn(model, params)
    sched = objectives.schedule_of(cfg.objective)
    prec = str(config.sampling.precision)
    repeats = int(config.experiment.repeats)
    rows = []

    def keys(tag, n):
        return [rng.fold(root, "sampler_speed", vocab, tag, n, r) for r in range(repeats + 1)]

    sec, (_, st) = timing.best_time(
        lambda k: sampling.first_hitting(
            denoise, k, batch_size=b, seq_len=L, mask_id=vocab, schedule=sched, precision=prec
        ),
        keys(0, 0),
    )
    rows.append(
        {
            "vocab": vocab,
            "sampler": "first_hitting",
            "num_steps": L,
            "nfe": st["nfe"],
            "draws": b * L * vocab,
            "seconds_per_batch": sec,
            "seconds_per_sequence": sec / b,
        }
    )
    log(f"sampler_speed: V={vocab} first_hitting NFE={st['nfe']}: {sec / b:.4f} s/sequence")
    for n in steps:
        sec, (_, st) = timing.best_time(
            lambda k: sampling.ancestral(
                denoise,
                k,
                batch_size=b,
                seq_len=L,
                mask_id=vocab,
                schedule=sched,
                num_steps=int(n),
                precision=prec,
                cache=True,
            ),
            keys(1, n),
        )
        rows.append(
            {
                "vocab": vocab,
                "sampler": "ancestral",
                "num_steps": int(n),
                "nfe": st["nfe"],
                "draws": int(n) * b * L * (vocab + 1),
                "seconds_per_batch": sec,
                "seconds_per_sequence": sec / b,
            }
        )
        log(f"sampler_speed: V={vocab} ancestral N={n} NFE={st['nfe']}: {sec / b:.4f} s/sequence")
    return rows


def arm_timings(config, lengths, root, log):
    """Rows of the ARM at each L of `lengths`: best seconds per sequence with and without the KV
    cache, and their ratio."""
    exp = config.experiment
    b, vocab = int(config.sampling.batch_size), int(exp.arm_vocab)
    prec = str(config.sampling.precision)
    cfg = _model_config(config, vocab, max(lengths), arm=True)
    _, params = _init(cfg, max(lengths), rng.fold(root, "params_arm"))
    rows = []
    for L in lengths:
        # The cache holds max_len positions: size it to L so each length pays only for itself.
        model = models.build(_model_config(config, vocab, L, arm=True))
        step_fn, state = adapters.ar_step_fn(model, params, b)
        logits_fn = adapters.ar_logits_fn(model, params)
        keys = [rng.fold(root, "sampler_speed_arm", L, r) for r in range(int(exp.repeats) + 1)]
        cached, _ = timing.best_time(
            lambda k: sampling.autoregressive(
                step_fn, state, k, batch_size=b, seq_len=L, precision=prec, bos_id=vocab
            ),
            keys,
        )
        uncached, _ = timing.best_time(
            lambda k: sampling.autoregressive_uncached(
                logits_fn, k, batch_size=b, seq_len=L, precision=prec, bos_id=vocab
            ),
            keys,
        )
        rows.append(
            {
                "seq_len": L,
                "cached_s_per_sequence": cached / b,
                "uncached_s_per_sequence": uncached / b,
                "uncached_over_cached": uncached / cached,
            }
        )
        log(
            f"sampler_speed: ARM L={L}: cached {cached / b:.4f} s, uncached {uncached / b:.4f} s per sequence"
        )
    return rows
