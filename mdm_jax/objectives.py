"""Training objectives: the continuous-time NELBO, the time-agnostic discrete NELBO and the ARM loss.

All three are written as one recipe, so that the train step, gradient accumulation and evaluation
share a single code path:

1. `corrupt(x0, key, ...)` draws the randomness of the estimator for the whole (global) batch and
   returns a `Corrupted` batch: network inputs, targets, and a per-token weight w[b, l].
2. The network maps inputs (and, if time-conditioned, t) to logits; the cross-entropy CE[b, l] is
   computed in float32 (optax).
3. The per-sequence loss is sum_l w[b, l] CE[b, l]; the reported loss is its mean over sequences
   divided by L (nats per token). For the MDM objectives this is an unbiased estimate of the NELBO
   per token, for the ARM the exact NLL per token.

Weights per objective (docs/paper.md sections 1-2):
- continuous: t ~ U[t_min, 1], each token masked with prob 1 - alpha(t),
  w = (1 - t_min) * (-alpha'(t) / (1 - alpha(t))) on masked positions. The (1 - t_min) factor makes
  it an unbiased estimate of the integral over [t_min, 1] (t's density there is 1 / (1 - t_min)).
- discrete (Prop. 3.1): n ~ U{1..L}, exactly n positions masked uniformly, w = L / n on them
  (L times the mean CE over the masked positions). A time-conditioned network gets t = n / L, the
  mask ratio: the posterior of t given n is Beta(L-n+1, n)-concentrated around it (Prop. 3.2).
- arm: inputs [BOS, x_0 .. x_{L-2}] with BOS = the mask id V, targets x_0 .. x_{L-1}, w = 1, so every
  token is predicted and bits/token compare directly with the MDM bound.

Low-discrepancy draws use ONE uniform u for the whole global batch: t_i = t_min + (1 - t_min)(u + i)/B
and n_i = ceil(L (u + i) / B). Inside `jax.jit` the batch is one global sharded array, so the draw is
exact and independent of the number of devices.

Key streams (below the caller's key): "t" (t or n), "mask" (which positions), "dropout".
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mdm_jax import rng, schedules
from mdm_jax.sampling.autoregressive import shift_right

LN2 = math.log(2.0)


class Corrupted(NamedTuple):
    """A batch after the estimator's random draws (all arrays [B, L] unless noted)."""

    inputs: jax.Array  # int32 network input (masked tokens = V; for the ARM, shifted)
    targets: jax.Array  # int32 tokens to predict
    weights: jax.Array  # float32 per-token weight of the cross-entropy
    scored: jax.Array  # bool: positions that contribute to the loss
    t: jax.Array | None  # float32[B] time for a time-conditioned net (None for the ARM)


def schedule_of(objective) -> schedules.Schedule:
    """The masking schedule named by `objective.schedule` (ValueError naming the field if unknown)."""
    return schedules.get(objective.schedule, k=objective.schedule_k, eps=objective.schedule_eps)


def uniforms(key: jax.Array, batch_size: int, low_discrepancy: bool) -> jax.Array:
    """u[B] in [0, 1): iid, or stratified (u + i) / B with a single shared u (one per bin)."""
    if low_discrepancy:
        u = jax.random.uniform(key, ())
        return (u + jnp.arange(batch_size, dtype=jnp.float32)) / batch_size
    return jax.random.uniform(key, (batch_size,))


def sample_times(key, batch_size: int, t_min: float, low_discrepancy: bool) -> jax.Array:
    """t[B] ~ U[t_min, 1] (stratified when low_discrepancy)."""
    return t_min + (1.0 - t_min) * uniforms(key, batch_size, low_discrepancy)


def sample_num_masked(key, batch_size: int, seq_len: int, low_discrepancy: bool) -> jax.Array:
    """n[B] ~ U{1..L} as ceil(L u) (u = 0, probability ~2^-23, is clipped to 1)."""
    u = uniforms(key, batch_size, low_discrepancy)
    return jnp.clip(jnp.ceil(seq_len * u), 1, seq_len).astype(jnp.int32)


def corrupt_continuous(
    x0, key, schedule: schedules.Schedule, *, mask_id: int, t_min: float, low_discrepancy: bool
) -> Corrupted:
    b, length = x0.shape
    t = sample_times(rng.fold(key, "t"), b, t_min, low_discrepancy)
    masked = jax.random.uniform(rng.fold(key, "mask"), (b, length)) < schedule.mask_level(t)[:, None]
    w = ((1.0 - t_min) * schedule.weight(t)).astype(jnp.float32)
    return Corrupted(
        inputs=jnp.where(masked, mask_id, x0).astype(jnp.int32),
        targets=x0,
        weights=jnp.where(masked, w[:, None], 0.0),
        scored=masked,
        t=t,
    )


def mask_exactly(key, shape, n) -> jax.Array:
    """bool[B, L]: exactly n[b] (or n, an int) positions of each row, chosen uniformly.

    The positions of the n smallest of L iid uniforms. Ranks (double argsort) rather than a
    threshold, because float32 ties would mask more than n positions.
    """
    u = jax.random.uniform(key, shape)
    ranks = jnp.argsort(jnp.argsort(u, axis=-1), axis=-1)
    return ranks < jnp.reshape(jnp.asarray(n), (-1, 1))


def corrupt_discrete(x0, key, *, mask_id: int, low_discrepancy: bool) -> Corrupted:
    b, length = x0.shape
    n = sample_num_masked(rng.fold(key, "t"), b, length, low_discrepancy)
    masked = mask_exactly(rng.fold(key, "mask"), (b, length), n)
    w = (length / n).astype(jnp.float32)
    return Corrupted(
        inputs=jnp.where(masked, mask_id, x0).astype(jnp.int32),
        targets=x0,
        weights=jnp.where(masked, w[:, None], 0.0),
        scored=masked,
        t=(n / length).astype(jnp.float32),
    )


def corrupt_arm(x0, *, bos_id: int) -> Corrupted:
    return Corrupted(
        inputs=shift_right(x0, bos_id).astype(jnp.int32),
        targets=x0,
        weights=jnp.ones(x0.shape, jnp.float32),
        scored=jnp.ones(x0.shape, bool),
        t=None,
    )


# ----------------------------------------------------------------------------- the registry


@dataclasses.dataclass(frozen=True)
class Objective:
    """One training objective and every property the rest of the package asks of it.

    Code outside this module never compares `objective.kind` with a string: it asks the object
    (`objectives.of(config).causal`, `.metric`, ...), so a new objective is one entry in `OBJECTIVES`.
    Metric keys are the same for every objective (`likelihood_metrics`: nats_per_token,
    bits_per_token, perplexity); `.likelihood` and `.perplexity` say whether they are bounds.
    """

    name: str  # the value of config.objective.kind
    causal: bool  # the network sees only the past (ARM) instead of the whole masked sequence
    time_input: bool  # a time-conditioned network is given t (MDMs); the ARM never is
    uses_schedule: bool  # objective.schedule / t_min govern its masks and its samplers (MDMs)
    random_estimate: bool  # the eval estimate is random (Monte Carlo draws reduce its variance)
    metric: str  # short name of the per-token likelihood in logs: "nelbo" or "nll"
    likelihood: str  # what that number is: "NELBO bound" or "exact NLL"
    perplexity: str  # what exp(it) is: "ppl bound" or "ppl"
    sampling_methods: tuple  # the samplers that can draw from a model trained with this objective
    draw: Callable  # (x0, key, config.objective, mask_id, low_discrepancy) -> Corrupted


def _draw_continuous(x0, key, objective, mask_id, low_discrepancy):
    return corrupt_continuous(
        x0,
        key,
        schedule_of(objective),
        mask_id=mask_id,
        t_min=float(objective.t_min),
        low_discrepancy=low_discrepancy,
    )


def _draw_discrete(x0, key, objective, mask_id, low_discrepancy):
    del objective
    return corrupt_discrete(x0, key, mask_id=mask_id, low_discrepancy=low_discrepancy)


def _draw_arm(x0, key, objective, mask_id, low_discrepancy):
    del key, objective, low_discrepancy
    return corrupt_arm(x0, bos_id=mask_id)


_MDM = dict(
    causal=False,
    time_input=True,
    uses_schedule=True,
    random_estimate=True,
    metric="nelbo",
    likelihood="NELBO bound",
    perplexity="ppl bound",
    sampling_methods=("first_hitting", "ancestral", "mdlm_ancestral"),
)
OBJECTIVES = {
    o.name: o
    for o in (
        Objective(name="continuous", draw=_draw_continuous, **_MDM),
        Objective(name="discrete", draw=_draw_discrete, **_MDM),
        Objective(
            name="arm",
            causal=True,
            time_input=False,
            uses_schedule=False,
            random_estimate=False,
            metric="nll",
            likelihood="exact NLL",
            perplexity="ppl",
            sampling_methods=("autoregressive",),
            draw=_draw_arm,
        ),
    )
}
KINDS = tuple(OBJECTIVES)
SAMPLING_METHODS = tuple(dict.fromkeys(m for o in OBJECTIVES.values() for m in o.sampling_methods))


def get(kind: str) -> Objective:
    """The objective named `kind` (config field objective.kind), or an error listing the valid ones."""
    if kind not in OBJECTIVES:
        raise ValueError(
            f"unknown objective {kind!r} (config field objective.kind): choose one of {', '.join(OBJECTIVES)}"
        )
    return OBJECTIVES[kind]


def of(config) -> Objective:
    """The objective of a full config."""
    return get(config.objective.kind)


def causal() -> Objective:
    """The causal objective (the ARM): what an evaluator of generative perplexity is trained with."""
    (objective,) = [o for o in OBJECTIVES.values() if o.causal]
    return objective


def corrupt(x0, key, objective, *, vocab_size: int, low_discrepancy: bool | None = None) -> Corrupted:
    """The estimator's random draws for `objective` (a config.objective); mask/BOS id = vocab_size.

    `low_discrepancy=None` uses objective.low_discrepancy (evaluation forces True).
    """
    ld = bool(objective.low_discrepancy if low_discrepancy is None else low_discrepancy)
    return get(objective.kind).draw(x0, key, objective, vocab_size, ld)


def sequence_losses(logits: jax.Array, c: Corrupted) -> jax.Array:
    """Per-sequence loss sum_l w CE [B] (nats), CE in float32."""
    ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), c.targets)
    return jnp.sum(jnp.where(c.scored, c.weights * ce, 0.0), axis=-1)


def uses_time(config) -> bool:
    return bool(config.model.time_conditioning) and of(config).time_input


def logits_fn_of(
    apply_fn: Callable, params, config, *, train: bool, dropout_key: jax.Array | None = None
) -> Callable:
    """model.apply + params -> logits_fn(tokens, t); t is dropped for time-free networks."""
    time_input = uses_time(config)

    def logits_fn(tokens, t):
        rngs = {"dropout": dropout_key} if train and dropout_key is not None else {}
        return apply_fn(
            {"params": params}, tokens, t if time_input else None, deterministic=not train, rngs=rngs
        )

    return logits_fn


def likelihood_metrics(nats_per_token) -> dict:
    """nats/token, bits/token and perplexity of a per-token likelihood (NELBO or exact NLL).

    Apply it to a MEAN over batches: the mean of per-batch perplexities would be biased. A Python
    float gives Python floats, an array gives arrays (inside jit).
    """
    if isinstance(nats_per_token, float):
        with np.errstate(over="ignore"):  # a diverged run's perplexity is inf, not an error
            perplexity = float(np.exp(nats_per_token))
    else:
        perplexity = jnp.exp(nats_per_token)
    return {
        "nats_per_token": nats_per_token,
        "bits_per_token": nats_per_token / LN2,
        "perplexity": perplexity,
    }


def summarize(nll_per_token: jax.Array, c: Corrupted) -> dict:
    """Metrics of a NELBO/NLL estimate in nats/token."""
    return {**likelihood_metrics(nll_per_token), "masked_fraction": jnp.mean(c.scored.astype(jnp.float32))}


def loss_fn(
    apply_fn: Callable,
    params,
    batch: jax.Array,
    key: jax.Array,
    config,
    *,
    train: bool,
    low_discrepancy: bool | None = None,
):
    """(loss, aux) for one batch int32[B, L]: loss = NELBO (or ARM NLL) in nats/token.

    `apply_fn` is `model.apply` (called as apply_fn({'params': p}, tokens, t, deterministic, rngs)).
    """
    c = corrupt(
        batch, key, config.objective, vocab_size=config.model.vocab_size, low_discrepancy=low_discrepancy
    )
    logits_fn = logits_fn_of(apply_fn, params, config, train=train, dropout_key=rng.fold(key, "dropout"))
    per_seq = sequence_losses(logits_fn(c.inputs, c.t), c)
    loss = jnp.mean(per_seq) / batch.shape[1]
    return loss, summarize(loss, c)
