"""Training throughput, measured interleaved with a matmul reference: step time, tokens/s, MFU.

  python benchmarks/train_throughput.py                                   # config.base()'s model
  python benchmarks/train_throughput.py --slots=8 --json=/tmp/train_throughput.json
  python benchmarks/train_throughput.py --config=configs/owt_mdm_small.py --config.train.batch_size=32
  python benchmarks/train_throughput.py --config.model.num_layers=2 --slots=2 --train_only

Without --config the network is `mdm_jax.config.base()`'s (6 layers, width 512, 8 heads, SwiGLU
1376, L=256, V=256, batch 16, float32: the CPU target shape; this file's get_config() returns it).

What is timed (each compiled and called once first), in every slot, back to back in this order:
  matmul       the reference: [n, n] @ [n, n] in the compute dtype accumulating in float32
               (--matmul_n: 2048 on a CPU, 8192 on accelerators, where a 2048^3 matmul is far too
               small to load the device: on an H200 it reaches 193 TFLOP/s of the 989 peak)
  train        `mdm_jax.train.make_train_step` exactly as training runs it: the diffusion
               objective (t or n draws, masking, weights), forward+backward, clip, AdamW, EMA
  plain        the same network, optimizer and EMA with the objective replaced by plain
               cross-entropy on every position of the clean input: train/plain - 1 is the
               overhead of the objective (target <= 10%)
  fwdbwd, fwd  value_and_grad of that plain loss alone; the loss alone (skipped by --train_only)
Each is called until --min_seconds have passed in the slot (the slot's figure is the median of
those calls), so the reference covers a window like the step's and both see the same load.
`mdm_jax.timing` runs the slots, records the 1-minute load and other processes' CPU use of each,
flags the slots above --max_load and summarises the kept ones (medians, best call, spread).
Ratios (model FLOP rate / matmul rate, the objective's overhead) are per slot, then summarised.

Model FLOPs per token (PaLM appendix B convention, forward + backward = 3 x forward):
  6 * N_matmul + 12 * n_layers * L * d
N_matmul counts the weights every token is multiplied by: attention qkv/out, MLP, the output
head (d x V); not the input embedding (a gather) nor adaLN/time-MLP weights (applied once per
sequence, not per token). The attention term is QK^T and PV over all L keys (what XLA computes,
also for causal models). No rematerialisation is used, so model FLOPs = hardware FLOPs.
MFU = model FLOP/s of the MEDIAN train step / the device's published dense peak for the compute
dtype (`mdm_jax.timing.PEAK_FLOPS`; float32 compute uses the peak of the matmul arithmetic in
force, e.g. TF32 on NVIDIA GPUs); the best step's MFU is printed beside it. Unknown device: no MFU.
"""

from __future__ import annotations

import os
import sys
import time

# Run from a checkout without installation: the repository root holds the mdm_jax package.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from mdm_jax import (  # noqa: E402
    config as config_lib,  # noqa: E402
    models,
    objectives,
    rng,
    sharding,
    timing,
    train,
)
from mdm_jax.models import scan_layout  # noqa: E402

STEPS = ("train", "plain", "fwdbwd", "fwd")
LABELS = {
    "matmul": "matmul reference",
    "train": "train step (diffusion objective)",
    "plain": "plain step (CE, same net+optimizer)",
    "fwdbwd": "fwd+bwd only (plain CE)",
    "fwd": "forward only",
}


def get_config():
    """The default benchmark shape: config.base() (lets config_flags load this file as --config)."""
    return config_lib.base()


def model_flops_per_token(config, params) -> tuple[float, int]:
    """(training FLOPs per token, N_matmul): the formula in the module docstring."""
    m = config.model
    n_matmul = 0
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        names = [getattr(p, "key", "") for p in path]
        # block_<i>, or the stacked "blocks" of model.scan_layers (whose norm scales are [layers, d])
        if (
            scan_layout.per_layer_ndim(path, leaf) >= 2
            and names[0].startswith("block")
            and "adaln" not in names
        ):
            n_matmul += leaf.size
    n_matmul += m.emb_dim * m.vocab_size  # the head's real columns (padding columns are sliced off)
    attention = 12 * m.num_layers * config.data.seq_len * m.emb_dim
    return 6.0 * n_matmul + attention, n_matmul


def _measures(config, mesh, parts: bool):
    """name -> fn(call_index) of each timed step, and the model's figures."""
    b, length, vocab = config.train.batch_size, config.data.seq_len, config.model.vocab_size
    # Synthetic tokens: throughput does not depend on the text, and the data pipeline stays out.
    gen = np.random.default_rng(0)
    local = gen.integers(0, vocab, (b // jax.process_count(), length), dtype=np.int32)
    batch = sharding.global_batch(local, mesh)
    state, shardings = train.create_train_state(config, mesh)
    flops_token, n_matmul = model_flops_per_token(config, state.params)
    info = {
        "params": sum(x.size for x in jax.tree.leaves(state.params)),
        "n_matmul": n_matmul,
        "flops_per_token": flops_token,
        "tokens_per_step": b * length,
    }
    root = rng.root_key(config.seed)  # the run's root key (state.key holds its data)
    train_step = train.make_train_step(config, mesh, shardings)
    start = time.perf_counter()
    compiled = train_step.lower(state, batch, rng.fold(root, "train", 0)).compile()
    info["train_compile_s"] = time.perf_counter() - start
    holder = {"state": state}  # both steps donate the state: thread it through

    def one_train_step(i):
        holder["state"], metrics = compiled(holder["state"], batch, rng.fold(root, "train", i))
        return metrics

    measures = {"train": one_train_step}
    if not parts:
        return measures, info
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
        ema = optax.incremental_update(
            params, st.ema_params, 1.0 - train.ema_decay_at(config.train.ema_decay, st.step)
        )
        return st.replace(step=st.step + 1, params=params, opt_state=opt_state, ema_params=ema), loss

    bsh = sharding.batch_sharding(mesh)
    plain = jax.jit(
        plain_step, in_shardings=(shardings, bsh), out_shardings=(shardings, None), donate_argnums=0
    )
    grad = jax.jit(jax.value_and_grad(plain_loss), in_shardings=(shardings.params, bsh))
    fwd = jax.jit(plain_loss, in_shardings=(shardings.params, bsh))

    def one_plain_step(i):
        holder["state"], loss = plain(holder["state"], batch)
        return loss

    # fwd+bwd and forward read the params of the moment: the state is donated by the steps.
    measures.update(
        plain=one_plain_step,
        fwdbwd=lambda i: grad(holder["state"].params, batch),
        fwd=lambda i: fwd(holder["state"].params, batch),
    )
    return measures, info


def _progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def run(
    config,
    num_slots: int,
    min_seconds: float,
    max_load: float,
    matmul_n: int,
    parts: bool = True,
    log=_progress,
) -> dict:
    env = timing.environment(config)
    mesh = sharding.make_mesh(config.mesh)
    step_measures, info = _measures(config, mesh, parts)
    n = matmul_n or (2048 if jax.default_backend() == "cpu" else 8192)
    matmul, matmul_flops = timing.matmul_reference(n, jnp.dtype(config.dtype.compute))
    measures = {"matmul": matmul, **step_measures}
    step_flops = info["flops_per_token"] * info["tokens_per_step"]
    flops = {
        "matmul": matmul_flops,
        "train": step_flops,
        "plain": step_flops,
        "fwdbwd": step_flops,
        "fwd": step_flops / 3.0,
    }
    ratios = {
        "model FLOP rate / matmul rate": lambda s: (step_flops / s["train"]) / (matmul_flops / s["matmul"])
    }
    if parts:
        ratios["objective overhead train/plain - 1"] = lambda s: s["train"] / s["plain"] - 1.0
    slots = timing.run_slots(measures, num_slots, min_seconds, log=log)
    result = timing.summarize(slots, max_load, ratios)
    peak = timing.peak_flops(env["device_kind"], config.dtype.compute, env["f32_matmul"])
    derived = {}
    summary = result["summary"] or result["all_slots_load_affected"]
    for name, s in summary["measures"].items():
        derived[name] = {
            "median_flops_per_s": flops[name] / s["median"],
            "best_flops_per_s": flops[name] / s["best"],
        }
        if name in STEPS:
            derived[name].update(
                median_tokens_per_s=info["tokens_per_step"] / s["median"],
                best_tokens_per_s=info["tokens_per_step"] / s["best"],
            )
        if peak:
            derived[name].update(
                median_mfu=derived[name]["median_flops_per_s"] / peak[0],
                best_mfu=derived[name]["best_flops_per_s"] / peak[0],
            )
    m = config.model
    return {
        "benchmark": "train_throughput",
        "environment": env,
        "model": {
            "num_layers": m.num_layers,
            "emb_dim": m.emb_dim,
            "num_heads": m.num_heads,
            "mlp": f"{m.mlp_type} {m.mlp_dim}",
            "vocab_size": m.vocab_size,
            "seq_len": config.data.seq_len,
            "batch_size": config.train.batch_size,
            "objective": config.objective.kind,
            "time_conditioning": bool(m.time_conditioning),
            "compute_dtype": config.dtype.compute,
            **info,
        },
        "matmul_reference": {
            "n": n,
            "dtype": config.dtype.compute,
            "accumulation": "float32",
            "flops_per_call": matmul_flops,
        },
        "peak": {"flops_per_s": peak[0], "name": peak[1]} if peak else None,
        "method": {
            "slots": num_slots,
            "min_seconds_per_measure": min_seconds,
            "order_in_slot": list(measures),
        },
        "slots": slots,
        "result": result,
        "derived": derived,
        "derived_from_kept_slots": bool(result["kept"]),
    }


def _show(flops):
    def show(name, seconds):
        if name == "matmul":
            return f"{flops['matmul'] / seconds / 1e9:.1f} GFLOP/s"
        return f"{seconds:.4g} s"

    return show


def report(out: dict) -> str:
    env, m, res = out["environment"], out["model"], out["result"]
    mm = out["matmul_reference"]
    show = _show({"matmul": mm["flops_per_call"]})
    lines = [
        f"device: {env['device_kind']} x{env['num_devices']}; CPU {env['cpu_model']}, "
        f"{env['cpu_count']} cores; "
        f"jax {env['jax_version']}; default matmul precision {env['jax_default_matmul_precision']}: "
        f"float32 matmuls computed as {env['f32_matmul']} (rel. error {env['f32_matmul_rel_error']:.1e})",
        f"model: {m['num_layers']} layers, width {m['emb_dim']}, {m['num_heads']} heads, {m['mlp']}, "
        f"V={m['vocab_size']}, L={m['seq_len']}, batch {m['batch_size']}, objective {m['objective']}, "
        f"time_conditioning={m['time_conditioning']}, compute {m['compute_dtype']}",
        f"params {m['params'] / 1e6:.2f}M (N_matmul {m['n_matmul'] / 1e6:.2f}M); model FLOPs/token = "
        f"6*N_matmul + 12*layers*L*d = {m['flops_per_token'] / 1e6:.1f}M; per step "
        f"{m['flops_per_token'] * m['tokens_per_step'] / 1e9:.1f} GFLOP; train step compiled in "
        f"{m['train_compile_s']:.1f} s",
        f"reference: {mm['n']}^3 {mm['dtype']} matmul, float32 accumulation; method: "
        f"{out['method']['slots']} slots, order {', '.join(out['method']['order_in_slot'])}, each called "
        f"for >= {out['method']['min_seconds_per_measure']} s per slot",
        "",
        *[timing.format_slot(sl, show) for sl in out["slots"]],
        *timing.format_summary(res, show),
        "",
    ]
    quotable = out["derived_from_kept_slots"]
    tag = "" if quotable else "  [load-affected: no slot kept]"
    peak = out["peak"]
    d = out["derived"]
    lines.append("median (best) per measure" + tag + ":")
    for name, v in d.items():
        line = (
            f"  {LABELS[name]:38s} {v['median_flops_per_s'] / 1e9:10.1f} "
            f"({v['best_flops_per_s'] / 1e9:.1f}) GFLOP/s"
        )
        if "median_tokens_per_s" in v:
            line += f"  {v['median_tokens_per_s']:10.0f} ({v['best_tokens_per_s']:.0f}) tokens/s"
        if "median_mfu" in v:
            line += (
                f"  {'MFU' if name in STEPS else 'of peak'} {100 * v['median_mfu']:.1f}% "
                f"({100 * v['best_mfu']:.1f}%)"
            )
        lines.append(line)
    lines.append(
        f"peak for MFU: {peak['name']}"
        if peak
        else f"peak for MFU: none known for {env['device_kind']!r} with {m['compute_dtype']} compute "
        f"(float32 matmuls as {env['f32_matmul']}): no MFU; see mdm_jax.timing.PEAK_FLOPS"
    )
    return "\n".join(lines)


def main(argv):
    del argv
    from absl import flags

    f = flags.FLAGS
    config = f.config
    if config.train.batch_size % jax.device_count():
        raise SystemExit(
            f"--config.train.batch_size={config.train.batch_size} must be divisible by the "
            f"{jax.device_count()} devices"
        )
    if f.slots < 1 or f.min_seconds < 0:
        raise SystemExit(f"--slots={f.slots} must be >= 1 and --min_seconds={f.min_seconds} >= 0")
    config.data.seq_len = min(config.data.seq_len, config.model.max_len)
    max_load = f.max_load if f.max_load > 0 else timing.default_max_load()
    out = run(config, f.slots, f.min_seconds, max_load, f.matmul_n, parts=not f.train_only)
    print(report(out), flush=True)
    if f.json:
        timing.write_json(f.json, out)
        print(f"wrote {f.json}")


if __name__ == "__main__":
    # Flags are defined only when run as a script: config_flags loads this same file for
    # get_config() as another module, which must not define them twice.
    from absl import app, flags
    from ml_collections import config_flags

    config_flags.DEFINE_config_file(
        "config",
        os.path.abspath(__file__),
        "Config file (configs/*.py); default config.base().",
        lock_config=True,
    )
    flags.DEFINE_integer("slots", 7, "Slots; each times the reference and every step back to back.")
    flags.DEFINE_float("min_seconds", 2.0, "Each measure is called for at least this long per slot.")
    flags.DEFINE_float(
        "max_load",
        0.0,
        "Slots whose 1-minute load exceeds this are flagged and left out "
        "of the summary (<= 0: CPU cores + 0.5).",
    )
    flags.DEFINE_integer("matmul_n", 0, "Reference matmul size n (0: 2048 on CPU, 8192 on accelerators).")
    flags.DEFINE_bool("train_only", False, "Time only the reference and the real train step.")
    flags.DEFINE_string("json", "", "Also write everything (environment, slots, summary) to this JSON file.")
    app.run(main)
