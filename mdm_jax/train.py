"""The train state and the jitted train/eval steps (the loop around them: `mdm_jax.loop`).

Steps are pure functions compiled with `jax.jit` and explicit shardings:
  train_step(state, batch, key) -> (state, metrics)   state donated, batch sharded over (data, fsdp)
  eval_step(params, batch, key) -> metrics
The caller passes the step's key: `rng.fold(root, "train", step)` with `root = rng.root_key(seed)`,
the one root key of a run (see `mdm_jax/rng.py`), so a resumed run replays the same draws; the
state carries the root key's data and a resume under another seed is refused. `eval_metrics` uses
`rng.fold(root, "eval", d, i)` for draw d of its i-th batch at every evaluation, so successive
evals compare checkpoints on the same t/mask draws (common random numbers: less noise in the curve).
A train step whose loss, gradients or update are not finite is not applied (the step counter still
advances); its metrics carry the flags of `mdm_jax.guards` (FLAG_KEYS), read by the loop.

Parameters, optimizer moments and EMA carry the model's logical axis names; they are initialised
directly sharded (`jax.eval_shape` of the init -> `sharding.logical_shardings` -> `jax.jit(init,
out_shardings=...)`), never materialised on one device first.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from jax.sharding import NamedSharding, PartitionSpec as P

from mdm_jax import errors, guards, models, objectives, profiling, rng, sharding
from mdm_jax.interop import init_from
from mdm_jax.models import scan_layout

LR_SCHEDULES = ("cosine", "constant")


class TrainState(struct.PyTreeNode):
    step: jax.Array  # int32 scalar: number of updates applied
    params: Any
    opt_state: Any
    ema_params: Any  # EMA of params: what eval and sampling use
    key: jax.Array  # uint32 key data of rng.root_key(config.seed): the checkpoint records
    # which run it belongs to (`check_root_key`); draws use rng.root_key


# ----------------------------------------------------------------------------- config checks


def check_config(config, mesh=None) -> None:
    """Early, actionable errors for the objective/optimizer/batch fields (data: pipeline.validate)."""
    models.family_of(config)  # also checks objective.kind
    m = config.model
    if m.num_heads < 1 or m.emb_dim % m.num_heads:
        raise errors.ConfigError(
            f"model.emb_dim={m.emb_dim} must be a multiple of model.num_heads="
            f"{m.num_heads} (every head gets emb_dim / num_heads dimensions)"
        )
    if not 0.0 <= m.dropout < 1.0:
        raise errors.ConfigError(f"model.dropout={m.dropout} must be in [0, 1)")
    if objectives.of(config).uses_schedule:
        objectives.schedule_of(config.objective)
        if not 0.0 <= config.objective.t_min < 1.0:
            raise ValueError(f"objective.t_min={config.objective.t_min} must be in [0, 1)")
    t = config.train
    if t.lr_schedule not in LR_SCHEDULES:
        raise ValueError(
            f"unknown train.lr_schedule {t.lr_schedule!r}: choose one of {', '.join(LR_SCHEDULES)}"
        )
    if t.grad_accum_steps < 1:
        raise ValueError(f"train.grad_accum_steps={t.grad_accum_steps} must be >= 1")
    profiling.check_profile_steps(t.profile_steps)
    models.build(config)  # bad model options (model.remat, model.attention) fail here, before any data
    if config.data.seq_len > config.model.max_len:
        raise ValueError(
            f"data.seq_len={config.data.seq_len} exceeds model.max_len={config.model.max_len}; "
            "lower --config.data.seq_len or raise --config.model.max_len"
        )
    if mesh is not None:
        dp = sharding.data_parallel_size(mesh)
        unit = dp * t.grad_accum_steps
        if t.batch_size % unit:
            raise ValueError(
                f"train.batch_size={t.batch_size} is not divisible by the data-parallel size "
                f"(mesh.data*mesh.fsdp = {dp}) times train.grad_accum_steps ({t.grad_accum_steps}) = "
                f"{unit}: every device needs whole sequences in every micro-batch; set "
                f"--config.train.batch_size to a multiple of {unit} or change --config.mesh.*"
            )
    if t.batch_size % jax.process_count():
        raise ValueError(
            f"train.batch_size={t.batch_size} must be a multiple of the process count ({jax.process_count()})"
        )
    check_loop_fields(t)


def check_loop_fields(t) -> None:
    """The train.* fields of the loop and the optimizer: errors that would otherwise come after
    compiling (a ZeroDivisionError at the first log) or never (keep_checkpoints=0 saved nothing)."""
    for name, what in (
        ("log_every", "steps between train-metric logs"),
        ("eval_every", "steps between evaluations"),
        ("checkpoint_every", "steps between checkpoints"),
        ("keep_checkpoints", "checkpoints kept (the newest ones)"),
        ("eval_batches", "validation batches per evaluation"),
        ("batch_size", "sequences per step, all devices"),
    ):
        if int(t[name]) < 1:
            raise errors.ConfigError(f"train.{name}={t[name]} must be >= 1 ({what})")
    if int(t.num_steps) < 0:
        raise errors.ConfigError(f"train.num_steps={t.num_steps} must be >= 0 (0 only evaluates)")
    if not (math.isfinite(t.lr) and t.lr >= 0):
        raise errors.ConfigError(f"train.lr={t.lr} must be a finite number >= 0")
    for name in ("warmup_steps", "grad_clip", "weight_decay", "min_lr_ratio"):
        if not t[name] >= 0:
            raise errors.ConfigError(f"train.{name}={t[name]} must be >= 0")
    for name in ("b1", "b2"):
        if not 0.0 <= t[name] < 1.0:
            raise errors.ConfigError(f"train.{name}={t[name]} must be in [0, 1) (an Adam moment decay)")
    if not 0.0 <= t.ema_decay <= 1.0:
        raise errors.ConfigError(f"train.ema_decay={t.ema_decay} must be in [0, 1]")
    guards.check_config(t)


# ----------------------------------------------------------------------------- optimizer


def learning_rate_schedule(tc) -> optax.Schedule:
    """Linear warm-up from 0 to train.lr, then cosine decay to lr * min_lr_ratio, or constant."""
    warmup = int(tc.warmup_steps)
    if tc.lr_schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(
            0.0, tc.lr, warmup, max(int(tc.num_steps), warmup + 1), end_value=tc.lr * tc.min_lr_ratio
        )
    if tc.lr_schedule == "constant":
        if warmup == 0:
            return optax.constant_schedule(tc.lr)
        return optax.join_schedules(
            [optax.linear_schedule(0.0, tc.lr, warmup), optax.constant_schedule(tc.lr)], [warmup]
        )
    raise ValueError(f"unknown train.lr_schedule {tc.lr_schedule!r}: choose one of {', '.join(LR_SCHEDULES)}")


def weight_decay_mask(params):
    """Decay matrices only: norms' scales, biases (1-D) and the token embedding are exempt, the
    usual AdamW practice (decaying them shrinks normalisation gains and rare tokens' rows)."""

    def decays(path, x):
        names = {str(getattr(k, "key", getattr(k, "name", ""))) for k in path}
        return scan_layout.per_layer_ndim(path, x) >= 2 and "embedding" not in names

    return jax.tree_util.tree_map_with_path(decays, params)


def make_optimizer(config) -> optax.GradientTransformation:
    tc = config.train
    parts = [optax.clip_by_global_norm(tc.grad_clip)] if tc.grad_clip > 0 else []
    parts.append(
        optax.adamw(
            learning_rate_schedule(tc),
            b1=tc.b1,
            b2=tc.b2,
            weight_decay=tc.weight_decay,
            mask=weight_decay_mask,
        )
    )
    return optax.chain(*parts)


def ema_decay_at(decay: float, step) -> jax.Array:
    """min(decay, (1 + step) / (10 + step)): the EMA follows the params early in training instead
    of staying near the random init (matters for short runs with decay 0.999+)."""
    step = jnp.asarray(step, jnp.float32)
    return jnp.minimum(decay, (1.0 + step) / (10.0 + step))


# ----------------------------------------------------------------------------- state


def _init_fn(config, model, tx):
    """root key -> TrainState with logically boxed params / moments / EMA (for eval_shape + jit)."""

    def init(root):
        tokens = jnp.zeros((1, config.data.seq_len), jnp.int32)
        t = jnp.zeros((1,), jnp.float32) if objectives.uses_time(config) else None
        params = model.init(rng.fold(root, "params"), tokens, t)["params"]
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            opt_state=tx.init(params),
            ema_params=params,
            key=jax.random.key_data(root),
        )

    return init


def _boxed_init(config, mesh):
    """(init fn, its logically boxed abstract output, the resulting state shardings)."""
    init = _init_fn(config, models.build(config), make_optimizer(config))
    boxed = jax.eval_shape(init, rng.root_key(config.seed))
    return init, boxed, sharding.logical_shardings(boxed, mesh)


def abstract_train_state(config, mesh):
    """(abstract state of ShapeDtypeStructs carrying shardings, state_shardings): restore targets."""
    _, boxed, shardings = _boxed_init(config, mesh)
    abstract = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), nn.unbox(boxed), shardings
    )
    return abstract, shardings


def create_train_state(config, mesh):
    """Fresh (state, state_shardings), initialised from rng.fold(root, "params") into its shardings."""
    init, _, shardings = _boxed_init(config, mesh)
    state = jax.jit(lambda k: nn.unbox(init(k)), out_shardings=shardings)(rng.root_key(config.seed))
    if init_from.source(config) is not None:
        # Loaded weights replace params and EMA (a distinct copy: the state is donated); Adam's fresh
        # moments do not depend on the params.
        params = init_from.load_params(config, mesh, state.params, shardings.params)
        ema = jax.jit(lambda p: jax.tree.map(jnp.copy, p), out_shardings=shardings.params)(params)
        state = state.replace(params=params, ema_params=ema)
    return state, shardings


@contextlib.contextmanager
def _in_mesh_context(mesh):
    """Entered while tracing a step: Flax's logical activation constraints resolve only with rules
    AND a mesh in context (`jax.set_mesh` is not allowed inside jit; the abstract mesh is)."""
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh), sharding.rules_context():
        yield


# ----------------------------------------------------------------------------- steps


def make_train_step(config, mesh, state_shardings):
    """The jitted train step; see the module docstring for its contract.

    The estimator's draws (t or n, masks) are made once for the whole global batch, then the
    gradient is accumulated over `train.grad_accum_steps` micro-batches with `lax.scan`, so accum
    changes memory, not the estimate (dropout keys are per micro-batch: fold(key, "dropout", i)).
    Micro-batch i takes rows i, i + A, i + 2A, ...: each device keeps its own rows, no resharding.
    """
    check_config(config, mesh)
    model = models.build(config)
    tx = make_optimizer(config)
    lr_fn = learning_rate_schedule(config.train)
    accum = int(config.train.grad_accum_steps)
    vocab = config.model.vocab_size
    micro_sharding = NamedSharding(mesh, P(None, sharding.BATCH_AXES))

    def micro_loss(params, mc, dropout_key, normalizer):
        logits_fn = objectives.logits_fn_of(model.apply, params, config, train=True, dropout_key=dropout_key)
        return jnp.sum(objectives.sequence_losses(logits_fn(mc.inputs, mc.t), mc)) / normalizer

    grad_fn = jax.value_and_grad(micro_loss)

    def train_step(state: TrainState, batch, key):
        with _in_mesh_context(mesh):
            b, length = batch.shape
            c = objectives.corrupt(batch, key, config.objective, vocab_size=vocab)

            def split(x):  # [B, ...] -> [A, B/A, ...], row r -> micro-batch r % A
                x = x.reshape(b // accum, accum, *x.shape[1:]).swapaxes(0, 1)
                return jax.lax.with_sharding_constraint(x, micro_sharding)

            micro = jax.tree.map(split, c)

            def body(carry, xs):
                mc, i = xs
                loss, g = grad_fn(state.params, mc, rng.fold(key, "dropout", i), b * length)
                acc_loss, acc_g = carry
                return (acc_loss + loss, jax.tree.map(lambda a, x: a + x.astype(jnp.float32), acc_g, g)), None

            zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), state.params)
            if accum == 1:  # no loop: XLA compiles and fuses one straight-line graph
                (loss, grads), _ = body(
                    (jnp.zeros((), jnp.float32), zeros), (jax.tree.map(lambda x: x[0], micro), 0)
                )
            else:
                (loss, grads), _ = jax.lax.scan(
                    body, (jnp.zeros((), jnp.float32), zeros), (micro, jnp.arange(accum))
                )
            grads = jax.tree.map(lambda g, p: g.astype(p.dtype), grads, state.params)

            updates, opt_state = tx.update(grads, state.opt_state, state.params)
            params = optax.apply_updates(state.params, updates)
            ema = optax.incremental_update(
                params, state.ema_params, 1.0 - ema_decay_at(config.train.ema_decay, state.step)
            )
            grad_norm = optax.tree.norm(grads)
            # A non-finite step is not applied (see mdm_jax.guards); the step counter still
            # advances, so the data position and the keys stay those of an uninterrupted run.
            healthy, flags = guards.step_health(loss, grad_norm, grads, params)
            params, opt_state, ema = guards.keep_if_healthy(
                healthy, (params, opt_state, ema), (state.params, state.opt_state, state.ema_params)
            )
            metrics = {
                "loss": loss,
                **objectives.summarize(loss, c),
                "grad_norm": grad_norm,
                "lr": lr_fn(state.step),
                **flags,
            }
            new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state, ema_params=ema)
            return new_state, metrics

    rep = sharding.replicated(mesh)
    return jax.jit(
        train_step,
        in_shardings=(state_shardings, sharding.batch_sharding(mesh), rep),
        out_shardings=(state_shardings, rep),
        donate_argnums=0,
    )


def make_eval_step(config, mesh, params_shardings):
    """eval_step(params, batch, key) -> metrics: deterministic network (no dropout); MDMs get the
    NELBO with low-discrepancy t (or n), the ARM its exact NLL. Pass EMA params for the usual eval."""
    check_config(config, mesh)
    model = models.build(config)

    def eval_step(params, batch, key):
        with _in_mesh_context(mesh):
            loss, aux = objectives.loss_fn(
                model.apply, params, batch, key, config, train=False, low_discrepancy=True
            )
            return {"loss": loss, **aux}

    rep = sharding.replicated(mesh)
    return jax.jit(
        eval_step, in_shardings=(params_shardings, sharding.batch_sharding(mesh), rep), out_shardings=rep
    )


def eval_metrics(eval_step, params, batches, root, mesh, *, draws: int = 1) -> dict:
    """Mean eval metrics over equal-size batches (host numpy arrays) x `draws` estimator draws.

    Draw d of batch b uses the key rng.fold(root, "eval", d, b): independent of the device count,
    and the same at every evaluation of a run. Every (batch, draw) has the same number of tokens,
    so the mean of their means is the token-weighted mean; `nats_per_token_stderr` is the standard
    error over them, and bits/token and perplexity are derived from the mean (`likelihood_metrics`).
    """
    per = []
    for b, local in enumerate(batches):
        batch = sharding.global_batch(local, mesh)
        per += [eval_step(params, batch, rng.fold(root, "eval", d, b)) for d in range(draws)]
    host = jax.device_get(per)  # one transfer for all of them
    out = {k: float(np.mean([float(h[k]) for h in host])) for k in host[0]}
    nats = np.array([float(h["nats_per_token"]) for h in host])
    out["nats_per_token_stderr"] = float(nats.std(ddof=1) / np.sqrt(len(nats))) if len(nats) > 1 else 0.0
    out.update(objectives.likelihood_metrics(out["nats_per_token"]))
    return out


def format_eval(step: int, m: dict, objective: objectives.Objective) -> str:
    """The eval line, e.g. `eval step 600: nelbo 2.9 nats/token = 4.2 bits/token (ppl bound 18)`."""
    return (
        f"eval step {step}: {objective.metric} {m['nats_per_token']:.4g} nats/token = "
        f"{m['bits_per_token']:.4g} bits/token ({objective.perplexity} {m['perplexity']:.4g})"
    )


def check_root_key(state: TrainState, config, workdir) -> None:
    """A restored state must belong to this config's seed: resuming under another seed would mix
    two runs' random streams (train draws, data order)."""
    expected = np.asarray(jax.random.key_data(rng.root_key(config.seed)))
    if not np.array_equal(np.asarray(jax.device_get(state.key)), expected):
        raise errors.ConfigError(
            f"the checkpoint in {workdir} was trained with another config.seed than {config.seed}: "
            "resume with the seed it was trained with (see its config.json), or use a new --workdir"
        )
