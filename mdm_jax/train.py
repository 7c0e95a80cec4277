"""The train state, the jitted train/eval steps and the training loop.

Steps are pure functions compiled with `jax.jit` and explicit shardings:
  train_step(state, batch, key) -> (state, metrics)   state donated, batch sharded over (data, fsdp)
  eval_step(params, batch, key) -> metrics
The caller passes the step's key: `rng.fold(root, "train", step)` with `root` the key stored in the
state (so a resumed run replays the same draws); the eval loop uses `rng.fold(root, "eval", 0, i)`
for its i-th batch at every evaluation, so successive evals compare checkpoints on the same
t/mask draws (common random numbers: less noise in the curve).

Parameters, optimizer moments and EMA carry the model's logical axis names; they are initialised
directly sharded (`jax.eval_shape` of the init -> `sharding.logical_shardings` -> `jax.jit(init,
out_shardings=...)`), never materialised on one device first.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from jax.sharding import NamedSharding, PartitionSpec as P

from mdm_jax import models, objectives, profiling, report, rng, sharding
from mdm_jax.models import scan_layout

LR_SCHEDULES = ("cosine", "constant")


class TrainState(struct.PyTreeNode):
    step: jax.Array          # int32 scalar: number of updates applied
    params: Any
    opt_state: Any
    ema_params: Any          # EMA of params: what eval and sampling use
    key: jax.Array           # uint32 key data of the root key (checkpointed with the state)

    def root_key(self) -> jax.Array:
        """The root key as a typed key, a copy: the state's buffers are donated to the next step."""
        return jax.random.wrap_key_data(jnp.array(self.key, copy=True))


# ----------------------------------------------------------------------------- config checks

def check_config(config, mesh=None) -> None:
    """Early, actionable errors for the objective/optimizer/batch fields (data: pipeline.validate)."""
    objectives.check_kind(config.objective.kind)
    if config.objective.kind != "arm":
        objectives.schedule_of(config.objective)
        if not 0.0 <= config.objective.t_min < 1.0:
            raise ValueError(f"objective.t_min={config.objective.t_min} must be in [0, 1)")
    t = config.train
    if t.lr_schedule not in LR_SCHEDULES:
        raise ValueError(f"unknown train.lr_schedule {t.lr_schedule!r}: choose one of "
                         f"{', '.join(LR_SCHEDULES)}")
    if t.grad_accum_steps < 1:
        raise ValueError(f"train.grad_accum_steps={t.grad_accum_steps} must be >= 1")
    profiling.check_profile_steps(t.profile_steps)
    models.build(config)  # bad model options (model.remat, model.attention) fail here, before any data
    if config.data.seq_len > config.model.max_len:
        raise ValueError(f"data.seq_len={config.data.seq_len} exceeds model.max_len={config.model.max_len}; "
                         "lower --config.data.seq_len or raise --config.model.max_len")
    if mesh is not None:
        dp = sharding.data_parallel_size(mesh)
        unit = dp * t.grad_accum_steps
        if t.batch_size % unit:
            raise ValueError(
                f"train.batch_size={t.batch_size} is not divisible by the data-parallel size "
                f"(mesh.data*mesh.fsdp = {dp}) times train.grad_accum_steps ({t.grad_accum_steps}) = "
                f"{unit}: every device needs whole sequences in every micro-batch; set "
                f"--config.train.batch_size to a multiple of {unit} or change --config.mesh.*")
    if t.batch_size % jax.process_count():
        raise ValueError(f"train.batch_size={t.batch_size} must be a multiple of the process count "
                         f"({jax.process_count()})")


# ----------------------------------------------------------------------------- optimizer

def learning_rate_schedule(tc) -> optax.Schedule:
    """Linear warm-up from 0 to train.lr, then cosine decay to lr * min_lr_ratio, or constant."""
    warmup = int(tc.warmup_steps)
    if tc.lr_schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(
            0.0, tc.lr, warmup, max(int(tc.num_steps), warmup + 1), end_value=tc.lr * tc.min_lr_ratio)
    if tc.lr_schedule == "constant":
        if warmup == 0:
            return optax.constant_schedule(tc.lr)
        return optax.join_schedules(
            [optax.linear_schedule(0.0, tc.lr, warmup), optax.constant_schedule(tc.lr)], [warmup])
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
    parts.append(optax.adamw(learning_rate_schedule(tc), b1=tc.b1, b2=tc.b2,
                             weight_decay=tc.weight_decay, mask=weight_decay_mask))
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
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                          ema_params=params, key=jax.random.key_data(root))
    return init


def _boxed_init(config, mesh):
    """(init fn, its logically boxed abstract output, the resulting state shardings)."""
    init = _init_fn(config, models.build(config), make_optimizer(config))
    boxed = jax.eval_shape(init, rng.root_key(config.seed))
    return init, boxed, sharding.logical_shardings(boxed, mesh)


def abstract_train_state(config, mesh):
    """(abstract state of ShapeDtypeStructs carrying shardings, state_shardings): restore targets."""
    _, boxed, shardings = _boxed_init(config, mesh)
    abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                            nn.unbox(boxed), shardings)
    return abstract, shardings


def create_train_state(config, mesh):
    """Fresh (state, state_shardings), initialised from rng.fold(root, "params") into its shardings."""
    init, _, shardings = _boxed_init(config, mesh)
    state = jax.jit(lambda k: nn.unbox(init(k)), out_shardings=shardings)(rng.root_key(config.seed))
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
                (loss, grads), _ = body((jnp.zeros((), jnp.float32), zeros),
                                        (jax.tree.map(lambda x: x[0], micro), 0))
            else:
                (loss, grads), _ = jax.lax.scan(body, (jnp.zeros((), jnp.float32), zeros),
                                                (micro, jnp.arange(accum)))
            grads = jax.tree.map(lambda g, p: g.astype(p.dtype), grads, state.params)

            updates, opt_state = tx.update(grads, state.opt_state, state.params)
            params = optax.apply_updates(state.params, updates)
            ema = optax.incremental_update(
                params, state.ema_params, 1.0 - ema_decay_at(config.train.ema_decay, state.step))
            metrics = {"loss": loss, **objectives.summarize(loss, c),
                       "grad_norm": optax.tree.norm(grads), "lr": lr_fn(state.step)}
            new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                                      ema_params=ema)
            return new_state, metrics

    rep = sharding.replicated(mesh)
    return jax.jit(train_step, in_shardings=(state_shardings, sharding.batch_sharding(mesh), rep),
                   out_shardings=(state_shardings, rep), donate_argnums=0)


def make_eval_step(config, mesh, params_shardings):
    """eval_step(params, batch, key) -> metrics: deterministic network (no dropout); MDMs get the
    NELBO with low-discrepancy t (or n), the ARM its exact NLL. Pass EMA params for the usual eval."""
    check_config(config, mesh)
    model = models.build(config)

    def eval_step(params, batch, key):
        with _in_mesh_context(mesh):
            loss, aux = objectives.loss_fn(model.apply, params, batch, key, config, train=False,
                                           low_discrepancy=True)
            return {"loss": loss, **aux}

    rep = sharding.replicated(mesh)
    return jax.jit(eval_step, in_shardings=(params_shardings, sharding.batch_sharding(mesh), rep),
                   out_shardings=rep)


def evaluate(eval_step, params, batches, root, mesh) -> dict:
    """Mean metrics over equal-size eval batches (host numpy arrays), keys fold(root, "eval", 0, i)."""
    totals: dict = {}
    for i, local in enumerate(batches):
        m = eval_step(params, sharding.global_batch(local, mesh), rng.fold(root, "eval", 0, i))
        for k, v in m.items():
            totals[k] = totals.get(k, 0.0) + v
    means = {k: float(v) / len(batches) for k, v in jax.device_get(totals).items()}
    means.update(_derived(means["nelbo"]))
    return means


def _derived(nelbo: float) -> dict:
    """bits/token and the perplexity bound of a MEAN nelbo (not the mean of per-batch values)."""
    return {"bits_per_token": nelbo / objectives.LN2, "ppl_bound": float(np.exp(nelbo))}


def format_eval(step: int, m: dict, kind: str) -> str:
    name = "nll" if kind == "arm" else "nelbo"
    ppl = "ppl" if kind == "arm" else "ppl bound"
    return (f"eval step {step}: {name} {m['nelbo']:.4g} nats/token = {m['bits_per_token']:.4g} "
            f"bits/token ({ppl} {m['ppl_bound']:.4g})")


# ----------------------------------------------------------------------------- the loop

def train_and_evaluate(config, workdir) -> dict:
    """Trains config.train.num_steps steps in `workdir`, resuming from its latest checkpoint.

    Logs train metrics every log_every steps (metrics.jsonl + TensorBoard), evaluates the EMA params
    every eval_every steps and at the end, checkpoints every checkpoint_every steps and at the end.
    Returns the final metrics: {"step", "train/<name>", "eval/<name>"}.
    """
    from mdm_jax import checkpoint, metrics
    from mdm_jax.data import pipeline

    tc = config.train
    mesh = sharding.make_mesh(config.mesh)
    check_config(config, mesh)
    pipeline.validate(config)
    lead = jax.process_index() == 0

    ckpt = checkpoint.Checkpointer(workdir, keep=tc.keep_checkpoints)
    it = pipeline.make_iterator(config, split="train")
    eval_data = pipeline.eval_batches(config, tc.eval_batches, split="validation")
    if ckpt.latest_step() is not None:
        abstract, shardings = abstract_train_state(config, mesh)
        state, data_state = ckpt.restore(abstract)
        it.set_state(data_state)
        if lead:
            print(f"resumed from {ckpt.directory} at step {int(state.step)}", flush=True)
    else:
        state, shardings = create_train_state(config, mesh)

    train_step = make_train_step(config, mesh, shardings)
    eval_step = make_eval_step(config, mesh, shardings.params)
    root = state.root_key()
    writer = metrics.MetricsWriter(workdir)
    if lead:  # what this run resolved (attention kernel, devices, versions) next to its metrics
        report.write_json(os.path.join(workdir, "run_metadata.json"), report.metadata(config))
    profiler = profiling.StepProfiler(workdir, tc.profile_steps)
    step = int(state.step)
    tokens_per_step = tc.batch_size * config.data.seq_len
    final: dict = {"step": step}

    def run_eval(step):
        m = evaluate(eval_step, state.ema_params, eval_data, root, mesh)
        writer.write(step, m, prefix="eval")
        if lead:
            print(format_eval(step, m, config.objective.kind), flush=True)
        final.update({f"eval/{k}": v for k, v in m.items()})

    bar = None
    if lead and sys.stderr.isatty():
        from tqdm import tqdm
        bar = tqdm(total=tc.num_steps, initial=step, desc="train", dynamic_ncols=True)
    # tokens/s counts only training: the clock restarts after the first step of this process
    # (compilation) and after every eval / checkpoint; each log point syncs with the device.
    pending, timed_steps, t0, shown = [], 0, None, step
    try:
        while step < tc.num_steps:
            batch = sharding.global_batch(next(it), mesh)
            with profiler.step(step):
                state, m = train_step(state, batch, rng.fold(root, "train", step))
            step += 1
            profiler.step_done(step, m)
            pending.append(m)
            if t0 is None:
                jax.block_until_ready(m)
                t0 = time.perf_counter()
            else:
                timed_steps += 1
            if step % tc.log_every == 0 or step == tc.num_steps:
                # One device->host transfer per log interval keeps the host from stalling dispatch.
                host = jax.device_get(pending)
                logged = {k: float(np.mean([h[k] for h in host])) for k in host[-1]}
                logged.update(_derived(logged["nelbo"]))
                if timed_steps:
                    logged["tokens_per_s"] = timed_steps * tokens_per_step / (time.perf_counter() - t0)
                writer.write(step, logged, prefix="train")
                final.update({f"train/{k}": v for k, v in logged.items()})
                speed = f"{logged['tokens_per_s']:.0f}" if timed_steps else "-"
                if bar is not None:
                    bar.set_postfix(loss=f"{logged['loss']:.4f}", tok_s=speed)
                    bar.update(step - shown)
                elif lead:
                    print(f"step {step}/{tc.num_steps}: loss {logged['loss']:.4f} ({speed} tokens/s)",
                          flush=True)
                pending, timed_steps, t0, shown = [], 0, time.perf_counter(), step
            if step % tc.eval_every == 0 and step != tc.num_steps:
                run_eval(step)
                timed_steps, t0 = 0, time.perf_counter()
            if step % tc.checkpoint_every == 0 or step == tc.num_steps:
                ckpt.save(step, state, it.get_state(), force=step == tc.num_steps)
                timed_steps, t0 = 0, time.perf_counter()
        run_eval(step)  # the final eval (also when restarted on a finished workdir)
    finally:
        profiler.close()
        if bar is not None:
            bar.close()
        ckpt.close()
        writer.close()
    if tc.plot and lead:
        final["loss_curve"] = str(metrics.plot_loss_curve(workdir))
    final["step"] = step
    return final
