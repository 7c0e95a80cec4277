"""Training throughput: step time, tokens/s, model FLOP/s vs this device's own matmul rate, MFU.

  python benchmarks/train_throughput.py                                   # config.base()'s model
  python benchmarks/train_throughput.py --config=configs/owt_mdm_small.py --config.train.batch_size=64
  python benchmarks/train_throughput.py --config.model.num_layers=2 --steps=3

Without --config the network is `mdm_jax.config.base()`'s (6 layers, width 512, 8 heads, SwiGLU
1376, L=256, V=256, batch 16: the issue's CPU target shape; this file's get_config() returns it).

What is timed (each compiled first; best and median of --steps calls, each blocked on):
  train step   `mdm_jax.train.make_train_step` exactly as training runs it: the diffusion objective
               (t or n draws, masking, weights), forward+backward, clip, AdamW, EMA.
  plain step   the same network, optimizer and EMA, with the diffusion objective replaced by plain
               cross-entropy on every position of the clean input: train/plain - 1 is the
               overhead of the objective (target <= 10%).
  fwd+bwd      value_and_grad of that plain loss alone; forward: the loss alone.
  matmul       f32 [2048,2048] @ [2048,2048] (2 * 2048^3 FLOP), and bf16 on accelerators.

Model FLOPs per token (PaLM appendix B convention, forward + backward = 3 x forward):
  6 * N_matmul + 12 * n_layers * L * d
N_matmul counts the weights every token is multiplied by: attention qkv/out, MLP, the output
head (d x V); not the input embedding (a gather) nor adaLN/time-MLP weights (applied once per
sequence, not per token). The attention term is QK^T and PV over all L keys (what XLA computes,
also for causal models). No rematerialisation is used, so model FLOPs = hardware FLOPs.
MFU = model FLOP/s / the device's published dense peak for the compute dtype (table below).

The machine may be shared: the 1-minute load average is printed next to the figures; compare
runs at similar load, take the best of several.
"""

from __future__ import annotations

import os
import statistics
import sys
import time

# Published dense peak FLOP/s by device kind substring and compute dtype (no sparsity).
PEAK_FLOPS = {
    # NVIDIA datasheets: SXM parts, dense tensor-core bf16/fp16; tf32 for float32 matmuls.
    "H200": {"bfloat16": 989e12, "float16": 989e12, "float32": 494.5e12},
    "H100": {"bfloat16": 989e12, "float16": 989e12, "float32": 494.5e12},
    "A100": {"bfloat16": 312e12, "float16": 312e12, "float32": 156e12},
    # Google Cloud TPU system architecture pages, per chip, bf16.
    "TPU v4": {"bfloat16": 275e12},
    "TPU v5 lite": {"bfloat16": 197e12},  # v5e reports device_kind "TPU v5 lite"
    "TPU v5e": {"bfloat16": 197e12},
    "TPU v5p": {"bfloat16": 459e12},
    "TPU v5": {"bfloat16": 459e12},       # v5p reports "TPU v5"
}


def get_config():
    """The default benchmark shape: config.base() (lets config_flags load this file as --config)."""
    from mdm_jax import config as config_lib
    return config_lib.base()


def peak_flops(device_kind: str, dtype: str):
    for kind, peaks in PEAK_FLOPS.items():  # first match: more specific names come first
        if kind.lower() in device_kind.lower():
            return peaks.get(dtype)
    return None


def model_flops_per_token(config, params) -> tuple[float, int]:
    """(training FLOPs per token, N_matmul): the formula in the module docstring."""
    import jax

    from mdm_jax.models import scan_layout
    m = config.model
    n_matmul = 0
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        names = [getattr(p, "key", "") for p in path]
        # block_<i>, or the stacked "blocks" of model.scan_layers (whose norm scales are [layers, d])
        if (scan_layout.per_layer_ndim(path, leaf) >= 2 and names[0].startswith("block")
                and "adaln" not in names):
            n_matmul += leaf.size
    n_matmul += m.emb_dim * m.vocab_size  # the head's real columns (padding columns are sliced off)
    attention = 12 * m.num_layers * config.data.seq_len * m.emb_dim
    return 6.0 * n_matmul + attention, n_matmul


def timed(fn, steps: int):
    """fn() -> a blocking call; returns (best, median) seconds of `steps` calls."""
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times), statistics.median(times)


def matmul_rate(dtype, steps: int, n: int = 2048) -> float:
    """Dense [n, n] @ [n, n] FLOP/s on the default device (best of `steps`)."""
    import jax
    import jax.numpy as jnp
    a = jax.random.normal(jax.random.key(0), (n, n), dtype)
    b = jax.random.normal(jax.random.key(1), (n, n), dtype)
    f = jax.jit(jnp.matmul)
    f(a, b).block_until_ready()
    best, _ = timed(lambda: f(a, b).block_until_ready(), steps)
    return 2.0 * n ** 3 / best


def run(config, steps: int, matmul_steps: int, parts: bool = True) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    from mdm_jax import models, objectives, rng, sharding, train

    mesh = sharding.make_mesh(config.mesh)
    b, length, vocab = config.train.batch_size, config.data.seq_len, config.model.vocab_size
    # Synthetic tokens: throughput does not depend on the text, and the data pipeline stays out.
    gen = np.random.default_rng(0)
    local = gen.integers(0, vocab, (b // jax.process_count(), length), dtype=np.int32)
    batch = sharding.global_batch(local, mesh)

    state, shardings = train.create_train_state(config, mesh)
    flops_token, n_matmul = model_flops_per_token(config, state.params)
    n_total = sum(x.size for x in jax.tree.leaves(state.params))
    root = jax.random.wrap_key_data(jnp.array(state.key, copy=True))  # state.key gets donated
    keys = [rng.fold(root, "train", i) for i in range(steps + 2)]
    out = {"device": jax.devices()[0].device_kind, "num_devices": jax.device_count(),
           "params": n_total, "n_matmul": n_matmul, "flops_per_token": flops_token,
           "tokens_per_step": b * length, "compute_dtype": config.dtype.compute}

    # --- the real train step (state is donated: thread it through)
    train_step = train.make_train_step(config, mesh, shardings)
    start = time.perf_counter()
    compiled = train_step.lower(state, batch, keys[0]).compile()
    out["compile_s"] = time.perf_counter() - start
    holder = {"state": state, "i": 0}

    def one_train_step():
        holder["state"], m = compiled(holder["state"], batch, keys[holder["i"]])
        holder["i"] += 1
        jax.block_until_ready(m)

    one_train_step()
    out["train_best_s"], out["train_median_s"] = timed(one_train_step, steps)

    if parts:
        model = models.build(config)
        tx = train.make_optimizer(config)
        t_const = jnp.full((b,), 0.5, jnp.float32) if objectives.uses_time(config) else None

        def plain_loss(params, tokens):
            with train._in_mesh_context(mesh):
                logits = model.apply({"params": params}, tokens, t_const, deterministic=True)
                return optax.softmax_cross_entropy_with_integer_labels(logits, tokens).mean()

        def plain_step(st, tokens):
            loss, grads = jax.value_and_grad(plain_loss)(st.params, tokens)
            updates, opt_state = tx.update(grads, st.opt_state, st.params)
            params = optax.apply_updates(st.params, updates)
            ema = optax.incremental_update(params, st.ema_params,
                                           1.0 - train.ema_decay_at(config.train.ema_decay, st.step))
            return st.replace(step=st.step + 1, params=params, opt_state=opt_state, ema_params=ema), loss

        bsh = sharding.batch_sharding(mesh)
        plain = jax.jit(plain_step, in_shardings=(shardings, bsh), out_shardings=(shardings, None),
                        donate_argnums=0)
        grad = jax.jit(jax.value_and_grad(plain_loss), in_shardings=(shardings.params, bsh))
        fwd = jax.jit(plain_loss, in_shardings=(shardings.params, bsh))

        def one_plain_step():
            holder["state"], loss = plain(holder["state"], batch)
            jax.block_until_ready(loss)

        one_plain_step()
        out["plain_best_s"], out["plain_median_s"] = timed(one_plain_step, steps)
        params = holder["state"].params
        jax.block_until_ready(grad(params, batch))
        out["fwdbwd_best_s"], _ = timed(lambda: jax.block_until_ready(grad(params, batch)), steps)
        fwd(params, batch).block_until_ready()
        out["fwd_best_s"], _ = timed(lambda: fwd(params, batch).block_until_ready(), steps)

    out["matmul_f32"] = matmul_rate(jnp.float32, matmul_steps)
    if jax.default_backend() != "cpu":
        out["matmul_bf16"] = matmul_rate(jnp.bfloat16, matmul_steps)
    out["load_avg_1m"] = os.getloadavg()[0]
    return out


def report(out: dict, config) -> str:
    tokens = out["tokens_per_step"]
    model_flops = out["flops_per_token"] * tokens
    ref_name = "bf16" if config.dtype.compute in ("bfloat16", "float16") and "matmul_bf16" in out else "f32"
    ref = out[f"matmul_{ref_name}"]
    m = config.model
    lines = [
        f"device: {out['device']} x{out['num_devices']}   (1-min load average {out['load_avg_1m']:.1f})",
        f"model: {m.num_layers} layers, width {m.emb_dim}, {m.num_heads} heads, {m.mlp_type} {m.mlp_dim}, "
        f"V={m.vocab_size}, L={config.data.seq_len}, batch {config.train.batch_size}, "
        f"objective {config.objective.kind}, time_conditioning={m.time_conditioning}, "
        f"compute {config.dtype.compute}",
        f"params {out['params'] / 1e6:.2f}M (N_matmul {out['n_matmul'] / 1e6:.2f}M); "
        f"model FLOPs/token = 6*N_matmul + 12*layers*L*d = {out['flops_per_token'] / 1e6:.1f}M; "
        f"per step {model_flops / 1e9:.1f} GFLOP",
        f"matmul 2048^3: f32 {out['matmul_f32'] / 1e9:.1f} GFLOP/s"
        + (f", bf16 {out['matmul_bf16'] / 1e9:.1f} GFLOP/s" if "matmul_bf16" in out else ""),
        f"compile (train step): {out['compile_s']:.1f} s",
    ]
    rows = [("train step (diffusion objective)", "train")]
    if "plain_best_s" in out:
        rows += [("plain step (CE, same net+optimizer)", "plain"), ("fwd+bwd only (plain CE)", "fwdbwd"),
                 ("forward only", "fwd")]
    for label, key in rows:
        best = out[f"{key}_best_s"]
        flops = model_flops / (3.0 if key == "fwd" else 1.0)
        rate = flops / best
        line = (f"{label:38s} {best:8.3f} s/step (median {out.get(f'{key}_median_s', best):.3f})  "
                f"{tokens / best:9.0f} tokens/s  {rate / 1e9:9.1f} GFLOP/s  "
                f"{100 * rate / ref:5.1f}% of {ref_name} matmul")
        peak = peak_flops(out["device"], config.dtype.compute)
        if peak:
            line += f"  MFU {100 * rate / peak:5.1f}%"
        lines.append(line)
    if "plain_best_s" in out:
        lines.append(f"diffusion objective overhead: train/plain - 1 = "
                     f"{100 * (out['train_best_s'] / out['plain_best_s'] - 1):+.1f}% (target <= 10%)")
    return "\n".join(lines)


def main(argv):
    del argv
    import jax
    from absl import flags
    config = flags.FLAGS.config
    if config.train.batch_size % jax.device_count():
        raise SystemExit(f"--config.train.batch_size={config.train.batch_size} must be divisible by the "
                         f"{jax.device_count()} devices")
    config.data.seq_len = min(config.data.seq_len, config.model.max_len)
    out = run(config, flags.FLAGS.steps, flags.FLAGS.matmul_steps, parts=not flags.FLAGS.train_only)
    print(report(out, config), flush=True)


if __name__ == "__main__":
    # Flags are defined only when run as a script: config_flags loads this same file for
    # get_config() as another module, which must not define them twice.
    from absl import app, flags
    from ml_collections import config_flags

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    config_flags.DEFINE_config_file("config", os.path.abspath(__file__),
                                    "Config file (configs/*.py); default config.base().", lock_config=True)
    flags.DEFINE_integer("steps", 5, "Timed calls of each step (best and median are reported).")
    flags.DEFINE_integer("matmul_steps", 10, "Timed 2048^3 matmuls (best is reported).")
    flags.DEFINE_bool("train_only", False, "Time only the real train step (skip plain/fwd+bwd/forward).")
    app.run(main)
