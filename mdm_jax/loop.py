"""The training loop: `train_and_evaluate(config, workdir)`, the function behind `--mode=train`.

Around the jitted steps of `mdm_jax.train` it runs the data iterator, logging (metrics.jsonl,
TensorBoard, a progress bar on a terminal), periodic evaluation of the EMA parameters and
checkpoints, and the safeguards that make a workdir a record failed runs cannot damage:
the run lock and the config record (`mdm_jax.workdir`), non-finite steps (`mdm_jax.guards`),
preemption (`mdm_jax.preemption`), unreadable checkpoints and failed saves (`mdm_jax.checkpoint`).
"""

from __future__ import annotations

import contextlib
import os
import sys
import time

import jax
import numpy as np
from jax.experimental import multihost_utils
from tqdm import tqdm

from mdm_jax import (
    checkpoint,
    guards,
    metrics,
    objectives,
    preemption,
    profiling,
    report,
    rng,
    sharding,
    train,
    workdir as workdir_lib,
)
from mdm_jax.data import pipeline
from mdm_jax.interop import init_from

# ----------------------------------------------------------------------------- the loop


def train_and_evaluate(config, workdir) -> dict:
    """Trains config.train.num_steps steps in `workdir`, resuming from its latest checkpoint.

    Logs train metrics every log_every steps (metrics.jsonl + TensorBoard), evaluates the EMA params
    every eval_every steps and at the end, checkpoints every checkpoint_every steps and at the end.
    The workdir is locked for the run (`mdm_jax.workdir`); `config.json` is written once the
    restore succeeded. Non-finite steps follow `train.nonfinite` (`mdm_jax.guards`); SIGTERM or
    SIGINT save and stop (`mdm_jax.preemption`). Returns the final metrics:
    {"step", "train/<name>", "eval/<name>"}.
    """
    tc = config.train
    mesh = sharding.make_mesh(config.mesh)
    train.check_config(config, mesh)
    pipeline.validate(config)
    lead = jax.process_index() == 0
    lock = workdir_lib.RunLock(workdir, enabled=lead)
    lock.acquire()  # before anything is written to the workdir
    ckpt = None
    try:
        ckpt = checkpoint.Checkpointer(workdir, keep=tc.keep_checkpoints)
        if ckpt.latest_step() is None:
            init_from.check(config)  # a fresh run from loaded weights: fail before data and compilation
        it = pipeline.make_iterator(config, split="train")
        eval_data = pipeline.eval_batches(config, tc.eval_batches, split="validation")
        if ckpt.latest_step() is not None:
            abstract, shardings = train.abstract_train_state(config, mesh)
            state, data_state = ckpt.restore(
                abstract, fallback=bool(tc.checkpoint_fallback), check_finite=True
            )
            _set_aside(ckpt, lead)
            train.check_root_key(state, config, workdir)
            it.set_state(data_state)
            if lead:
                print(f"resumed from {ckpt.directory} at step {int(state.step)}", flush=True)
        else:
            state, shardings = train.create_train_state(config, mesh)
        if lead:
            workdir_lib.record_config(config, workdir, start_step=int(state.step))
        result = _loop(config, state, shardings, mesh, it, eval_data, ckpt, workdir, lead)
        ckpt.close()  # raises checkpoint.SaveFailed if the last asynchronous save failed
    except BaseException:
        if ckpt is not None:
            with contextlib.suppress(Exception):  # the original error is the one to report
                ckpt.close()
        raise
    finally:
        lock.release()
    if tc.plot and lead:
        result["loss_curve"] = str(metrics.plot_loss_curve(workdir))
    return result


def _set_aside(ckpt, lead) -> None:
    """Moves the steps a restore fell back from out of the way, so they can be saved again."""
    for bad in ckpt.skipped:
        if lead:
            print(f"warning: moved unreadable checkpoint step {bad} to {ckpt.set_aside(bad)}", flush=True)
    if ckpt.skipped and jax.process_count() > 1:
        multihost_utils.sync_global_devices("checkpoint_set_aside")
        ckpt._manager.reload()


def _loop(config, state, shardings, mesh, it, eval_data, ckpt, workdir, lead):
    tc = config.train
    train_step = train.make_train_step(config, mesh, shardings)
    eval_step = train.make_eval_step(config, mesh, shardings.params)
    root = rng.root_key(config.seed)  # the run's one root key (mdm_jax/rng.py)
    objective = objectives.of(config)
    writer = metrics.MetricsWriter(workdir)
    if lead:  # what this run resolved (attention kernel, devices, versions) next to its metrics
        report.write_json(os.path.join(workdir, "run_metadata.json"), report.metadata(config))
    profiler = profiling.StepProfiler(workdir, tc.profile_steps)
    step = int(state.step)
    tokens_per_step = tc.batch_size * config.data.seq_len
    final: dict = {"step": step}
    if step >= tc.num_steps and lead:
        print(
            f"note: nothing to train: the run is at step {step} and train.num_steps={tc.num_steps}"
            + (" (train.num_steps=0 evaluates the initial model)" if tc.num_steps == 0 else ""),
            flush=True,
        )
    bar = None
    if lead and sys.stderr.isatty():
        bar = tqdm(total=tc.num_steps, initial=step, desc="train", dynamic_ncols=True)

    def say(line: str) -> None:
        """A line for the user: through the progress bar (tqdm.write) so it is not drawn over."""
        if bar is not None:
            bar.write(line)
        elif lead:
            print(line, flush=True)

    def last_good():
        s = ckpt.latest_step()
        return None if s is None else (s, str(ckpt.directory / str(s)))

    monitor = guards.Monitor(tc, ["params/" + n for n in guards.leaf_names(state.params)], last_good)

    def run_eval(step):
        m = train.eval_metrics(eval_step, state.ema_params, eval_data, root, mesh)
        writer.write(step, m, prefix="eval")
        say(train.format_eval(step, m, objective))
        final.update({f"eval/{k}": v for k, v in m.items()})

    # tokens/s counts only training: the clock restarts after the first step of this process
    # (compilation) and after every eval / checkpoint; each log point syncs with the device.
    # Non-finite flags are read where the host syncs anyway: log points, checkpoints, evals.
    pending, checked, skipped, timed_steps, t0, shown = [], 0, 0, 0, None, step

    def check_health():
        nonlocal checked, skipped
        flags = jax.device_get([{k: m[k] for k in guards.FLAG_KEYS} for m in pending[checked:]])
        skipped += monitor.observe(flags, first_step=step - len(pending) + checked + 1)
        checked = len(pending)

    try:
        with preemption.Watcher(ckpt) as watcher:
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
                stop = watcher.should_stop(step)
                save = step % tc.checkpoint_every == 0 or step == tc.num_steps or stop
                evaluate_now = step % tc.eval_every == 0 and step != tc.num_steps and not stop
                if step % tc.log_every == 0 or step == tc.num_steps:
                    # One device->host transfer per log interval keeps the host from stalling dispatch.
                    check_health()
                    host = [h for h in jax.device_get(pending) if not int(h["nonfinite"])]  # not skipped ones
                    logged = {
                        k: float(np.mean([h[k] for h in host]))
                        for k in (host[-1] if host else {})
                        if k not in guards.FLAG_KEYS
                    }
                    if "nats_per_token" in logged:
                        logged.update(objectives.likelihood_metrics(logged["nats_per_token"]))
                    logged["skipped_steps"] = skipped
                    if timed_steps:
                        logged["tokens_per_s"] = timed_steps * tokens_per_step / (time.perf_counter() - t0)
                    writer.write(step, logged, prefix="train")
                    final.update({f"train/{k}": v for k, v in logged.items()})
                    speed = f"{logged['tokens_per_s']:.0f}" if timed_steps else "-"
                    loss = f"{logged['loss']:.4f}" if "loss" in logged else "skipped"
                    if bar is not None:
                        bar.set_postfix(loss=loss, tok_s=speed)
                        bar.update(step - shown)
                    elif lead:
                        print(f"step {step}/{tc.num_steps}: loss {loss} ({speed} tokens/s)", flush=True)
                    pending, checked, skipped, timed_steps, t0, shown = [], 0, 0, 0, time.perf_counter(), step
                elif save or evaluate_now:
                    check_health()
                if evaluate_now:
                    run_eval(step)
                    timed_steps, t0 = 0, time.perf_counter()
                if save:
                    ckpt.save(step, state, it.get_state(), force=step == tc.num_steps or stop)
                    timed_steps, t0 = 0, time.perf_counter()
                if stop:
                    ckpt.wait()  # synchronous: the job may be killed soon after
                    raise watcher.stopped(step, str(ckpt.directory / str(step)))
            run_eval(step)  # the final eval (also when restarted on a finished workdir)
    finally:
        profiler.close()
        if bar is not None:
            bar.close()
        writer.close()
    final["step"] = step
    return final
