"""Does the cached ancestral sampler buy its full saving? FHS and the ancestral variants, interleaved.

  python benchmarks/ancestral_cache.py                       # config.base()'s network, B=8, N=1024
  python benchmarks/ancestral_cache.py --config.model.num_layers=2 --config.model.emb_dim=128 \\
      --config.model.num_heads=4 --config.model.mlp_dim=352 --steps=256 --rounds=5   # quick, smaller net

Samplers (all float32 draws, the same key in every call):
  network            L dependent network calls in one compiled loop, nothing else: t_net, the time
                     of one call (each call's argmax at position i is fed back into the input)
  fhs                first-hitting, L network calls
  ancestral          cached ancestral (the current loop: one outer iteration per network call, the
                     steps that reuse its output in an inner loop)
  ancestral_cond     the cached loop as it was before: one loop over the N steps with the network
                     under `lax.cond` (`cond_loop` below; tests/test_sampling_ancestral.py checks
                     that the current loop draws bitwise its tokens)
  ancestral_uncached N network calls
Each is compiled and run once first; then --rounds rounds each time every sampler once, in an order
rotated every round (interleaved: a load change on a shared machine hits all of them alike). The
table gives the median and best seconds per sequence, NFE, and ms per network call (median time /
NFE). A cached run cannot cost the uncached run's time per call: it still draws at all N steps, so
its time per call includes the draws of the steps that made no call. The figure that says whether
the cache buys its full saving is the realised saving: with t_net from the `network` row and
T the median times, the draws cost D = T_uncached - N t_net (the same in both runs), a free cache
would take T_ideal = NFE_cached t_net + D, and realised = (T_uncached - T_cached) / (T_uncached - T_ideal)
(1.0: everything the skipped calls cost is saved; less: the cache's own overhead eats into it).

The structure of each compiled loop is printed too (what "profile one step" asks: is the cache a
conditional, a copy, a host sync?): XLA conditionals, copies of [B, L, V] buffers, host transfers
or callbacks, and the loop-invariant values hoisted out of the step loop.

(An interleaved timing helper shared by all benchmarks was planned as mdm_jax/timing.py; this script
carries its own simple rotated loop until that exists.)
"""

from __future__ import annotations

import functools
import importlib
import os
import re
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from mdm_jax.sampling.categorical import policy_dtype, rowwise_categorical  # noqa: E402
from mdm_jax.sampling.plumbing import row_keys, sampler_scope, step_keys  # noqa: E402

SAMPLERS = ("network", "fhs", "ancestral", "ancestral_cond", "ancestral_uncached")


def get_config():
    """The default shape: config.base() (lets config_flags load this file as --config)."""
    from mdm_jax import config as config_lib

    return config_lib.base()


@functools.partial(jax.jit, static_argnames=("denoise_fn", "mask_id", "n", "precision", "factorized"))
def cond_loop(key, init, coefs, *, denoise_fn, mask_id, n, precision, factorized):
    """The cached ancestral loop before its restructure: one fori_loop over the N steps with the
    network under lax.cond (a call when the previous step changed a token). Returns (x, nfe, changes).

    `coefs` = (t, log_mask, log_tok, thr, always) as `mdm_jax.sampling.ancestral` builds them.
    """
    ts, log_mask, log_tok, thr, always = coefs
    dtype = policy_dtype(precision)
    b, length = init.shape
    keys = row_keys(key, b)
    net = lambda x, i: denoise_fn(x, jnp.full((b,), ts[i], jnp.float32))  # noqa: E731
    out = jax.eval_shape(net, init, 0)

    def body(i, carry):
        x, logits, changed, nfe, changes = carry
        call = jnp.logical_or(i == 0, changed)
        logits = jax.lax.cond(call, lambda: net(x, i).astype(out.dtype), lambda: logits)
        keys_i = step_keys(keys, i)
        lg = logits.astype(dtype)
        if factorized:
            tok = rowwise_categorical(step_keys(keys_i, 0), lg, precision)
            bits = jax.vmap(lambda kk: jax.random.bits(kk, (length,), jnp.uint32))(step_keys(keys_i, 1))
            new = jnp.where(jnp.logical_or(bits < thr[i], always[i]), tok, mask_id)
        else:
            logp_tok = jax.nn.log_softmax(lg, axis=-1) + log_tok[i].astype(dtype)
            logp_mask = jnp.broadcast_to(log_mask[i].astype(dtype), lg.shape[:-1] + (1,))
            draw = rowwise_categorical(keys_i, jnp.concatenate([logp_tok, logp_mask], -1), precision)
            new = jnp.where(draw == lg.shape[-1], mask_id, draw)
        x_new = jnp.where(x == mask_id, new, x)
        changed = jnp.any(x_new != x)
        return x_new, logits, changed, nfe + call.astype(jnp.int32), changes + changed.astype(jnp.int32)

    carry = (init, jnp.zeros(out.shape, out.dtype), jnp.bool_(False), jnp.int32(0), jnp.int32(0))
    x, _, _, nfe, changes = jax.lax.fori_loop(0, n, body, carry)
    return x, nfe, changes


def cond_coefficients(schedule, n: int, precision: str):
    """`cond_loop`'s coefs, computed exactly as `mdm_jax.sampling.ancestral.ancestral` does."""
    ancestral_mod = importlib.import_module("mdm_jax.sampling.ancestral")
    t, log_mask, log_tok, p_unmask = ancestral_mod.step_coefficients(schedule, n)
    cdtype = np.float64 if precision == "float64" else np.float32
    return (
        t.astype(np.float32),
        log_mask.astype(cdtype),
        log_tok.astype(cdtype),
        np.minimum(np.round(p_unmask * 2.0**32), 2.0**32 - 1).astype(np.uint32),
        p_unmask >= 1.0,
    )


def samplers(config, batch: int, steps: int):
    """name -> (fn(key) -> (tokens, nfe), lowered loop for the structure report or None)."""
    from mdm_jax import models, sampling, schedules
    from mdm_jax.models import adapters

    model = models.build(config)
    length, vocab = int(config.data.seq_len), int(config.model.vocab_size)
    t0 = jnp.zeros((1,), jnp.float32) if model.time_conditioning else None
    init_params = jax.jit(lambda k: model.init(k, jnp.zeros((1, length), jnp.int32), t0)["params"])
    params = init_params(jax.random.key(0))
    # A live network (the real init's zero head predicts uniform tokens): small random weights.
    params = jax.tree.map(lambda p: p + 0.02 * jax.random.normal(jax.random.key(1), p.shape, p.dtype), params)
    denoise = adapters.denoise_fn(model, params)
    o = config.objective
    sched = schedules.get(o.schedule, k=o.schedule_k, eps=o.schedule_eps)
    common = dict(batch_size=batch, seq_len=length, mask_id=vocab, schedule=sched, precision="float32")
    init = jnp.full((batch, length), vocab, jnp.int32)
    coefs = jax.tree.map(jnp.asarray, cond_coefficients(sched, steps, "float32"))
    closure = lambda x, t: denoise(x, t)  # noqa: E731 - cond_loop takes the function as a static argument
    cond_static = dict(denoise_fn=closure, mask_id=vocab, n=steps, precision="float32", factorized=False)

    def cond_run(key):
        with sampler_scope("float32"):
            x, nfe, _ = cond_loop(key, init, coefs, **cond_static)
        return x, nfe

    def plain(fn):
        def run(key):
            tokens, stats = fn(key)
            return tokens, stats["nfe"]

        return run

    @jax.jit
    def network_calls(key):
        x = jax.random.randint(key, (batch, length), 0, vocab + 1, jnp.int32)
        t = jax.random.uniform(key, (batch,), jnp.float32)

        def body(i, x):  # call i's argmax at position i feeds call i + 1: no call can be skipped
            tok = jnp.argmax(jax.lax.dynamic_index_in_dim(denoise(x, t), i, axis=1, keepdims=False), -1)
            return jax.lax.dynamic_update_index_in_dim(x, tok.astype(jnp.int32), i, axis=1)

        return jax.lax.fori_loop(0, length, body, x), length

    anc = importlib.import_module("mdm_jax.sampling.ancestral")
    fn_static, fn_leaves = importlib.import_module("mdm_jax.sampling.fn_args").split(denoise)
    lower_anc = lambda cache: anc._ancestral.lower(  # noqa: E731
        jax.random.key(0),
        init,
        jnp.float32(1.0),
        coefs,
        fn_leaves,
        denoise_fn=fn_static,
        batch_size=batch,
        seq_len=length,
        mask_id=vocab,
        num_steps=steps,
        precision="float32",
        cache=cache,
        factorized=False,
        batch_sharding=None,
    )
    return {
        "network": (network_calls, None),
        "fhs": (plain(lambda k: sampling.first_hitting(denoise, k, **common)), None),
        "ancestral": (
            plain(lambda k: sampling.ancestral(denoise, k, num_steps=steps, cache=True, **common)),
            lambda: lower_anc(True),
        ),
        "ancestral_cond": (
            cond_run,
            lambda: cond_loop.lower(jax.random.key(0), init, coefs, **cond_static),
        ),
        "ancestral_uncached": (
            plain(lambda k: sampling.ancestral(denoise, k, num_steps=steps, cache=False, **common)),
            lambda: lower_anc(False),
        ),
    }


def structure(lowered, batch, length, vocab) -> dict:
    """Facts about a compiled sampler loop that decide what a step without a network call costs."""
    hlo = lowered.compile().as_text()
    logits = rf"f32\[{batch},{length},{vocab}\]"
    return {
        "conditionals": len(re.findall(r" conditional\(", hlo)),
        "logits_copies": len(re.findall(rf"= {logits}\S* copy\(", hlo)),
        "host_transfers": len(
            re.findall(r" (?:send|recv|outfeed|infeed)\(|custom_call_target=\"xla_python", hlo)
        ),
        "while_loops": len(re.findall(r" while\(", hlo)),
    }


def main(argv):
    del argv
    from absl import flags

    f = flags.FLAGS
    config = f.config
    names = SAMPLERS if f.samplers == "all" else tuple(f.samplers.split(","))
    batch, steps, vocab, length = f.batch, f.steps, int(config.model.vocab_size), int(config.data.seq_len)
    runs = samplers(config, batch, steps)
    m = config.model
    print(
        f"network: {m.num_layers} layers x {m.emb_dim}, {m.num_heads} heads, {m.mlp_type} {m.mlp_dim}, "
        f"V={vocab}, L={length}, B={batch}, time_conditioning={m.time_conditioning}; N={steps}; "
        f"{jax.devices()[0].device_kind}",
        flush=True,
    )
    for name in names:
        lower = runs[name][1]
        if lower is not None and f.structure:
            with sampler_scope("float32"):
                print(f"  compiled loop of {name}: {structure(lower(), batch, length, vocab)}", flush=True)
    key = jax.random.key(f.seed)
    for name in names:  # compile + one run each
        jax.block_until_ready(runs[name][0](key)[0])
    times = {n: [] for n in names}
    nfe, loads = {}, []
    for r in range(f.rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        loads.append(os.getloadavg()[0])
        for name in order:
            start = time.perf_counter()
            tokens, calls = runs[name][0](key)
            jax.block_until_ready(tokens)
            times[name].append(time.perf_counter() - start)
            nfe[name] = int(calls)
        print(
            f"  round {r + 1}: "
            + ", ".join(f"{n} {times[n][-1]:.2f}s" for n in names)
            + f" (load {loads[-1]:.1f})",
            flush=True,
        )
    loads.append(os.getloadavg()[0])
    print(f"\n1-minute load average during the rounds: {min(loads):.1f} - {max(loads):.1f}\n")
    print("| sampler | median s/sequence | best s/sequence | NFE | median ms per network call |")
    print("|---|---|---|---|---|")
    for name in names:
        med = statistics.median(times[name])
        print(
            f"| {name} | {med / batch:.3f} | {min(times[name]) / batch:.3f} | {nfe[name]} | "
            f"{1e3 * med / nfe[name]:.1f} |"
        )
    med = {n: statistics.median(times[n]) for n in names}
    if {"network", "ancestral_uncached"} <= set(names):
        t_net = med["network"] / nfe["network"]
        draws = med["ancestral_uncached"] - steps * t_net
        print(
            f"\nt_net {1e3 * t_net:.1f} ms per call; draws D = {draws:.2f} s per run "
            f"({1e3 * draws / steps:.1f} ms per step)"
        )
        for name in ("ancestral", "ancestral_cond"):
            if name in names:
                ideal = nfe[name] * t_net + draws
                skipped = med["ancestral_uncached"] - ideal
                realised = (med["ancestral_uncached"] - med[name]) / skipped if skipped > 0 else float("nan")
                print(
                    f"{name}: {med[name]:.2f} s per run, a free cache {ideal:.2f} s; realised saving "
                    f"{realised:.2f} of the {skipped:.2f} s the {steps - nfe[name]} skipped calls cost"
                )


if __name__ == "__main__":
    from absl import app, flags
    from ml_collections import config_flags

    config_flags.DEFINE_config_file(
        "config",
        os.path.abspath(__file__),
        "Config file (configs/*.py); default config.base().",
        lock_config=True,
    )
    flags.DEFINE_integer("batch", 8, "Sequences per call.")
    flags.DEFINE_integer("steps", 1024, "Ancestral steps N.")
    flags.DEFINE_integer("rounds", 3, "Interleaved rounds (each times every sampler once).")
    flags.DEFINE_integer("seed", 0, "Key of every call.")
    flags.DEFINE_string("samplers", "all", f"Comma list from {', '.join(SAMPLERS)}, or all.")
    flags.DEFINE_bool("structure", True, "Print the structure of each compiled loop.")
    app.run(main)
