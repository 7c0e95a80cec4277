"""The network's own arithmetic: each variant's logits against a float64 reference, and what the
difference does to samples drawn with fixed keys.

Variants (float32 weights throughout):
  matmul=<setting>   float32 compute under `jax.default_matmul_precision(setting)` ("default":
                     the setting in force; `environment.matmul_probe` says what each one does here)
  compute=bfloat16   bfloat16 activations and matmuls (owt_mdm_small's training setting)
  emulated=<format>  float32 compute with every matmul in an accelerator's arithmetic, computed
                     exactly by `emulate` on this backend: bfloat16 (a TPU's default),
                     bfloat16_3x (a TPU's "tensorfloat32"), tensorfloat32 (a recent GPU's default)
The reference is the same network in float64, always on the host CPU (x64 scoped to it), so
every backend's report measures against the same numbers.

Per variant: max |logit - reference| over the scored positions (an MDM's masked ones), the same
relative to the largest reference logit, top-1 agreement, and the effect on sampling: with the
same keys, the fraction of tokens identical to the reference network's samples (first-hitting
for an MDM, autoregressive for an ARM) and the mean unigram entropy of each sample. The draws use
the "float32" sampling policy everywhere, so only the network's arithmetic differs between the
runs (a V-way draw per token is well scaled, so its policy barely matters: notebook 03), and the
same draws run on TPUs, which have no native float64.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from mdm_jax import rng, sample_metrics, sampling, schedules
from mdm_jax.numerics import emulate as emulate_lib, environment, rows as R

__all__ = ["VARIANTS", "SAMPLING_PRECISION", "measure"]

# name -> (compute dtype, matmul setting, emulated format or None)
VARIANTS = {f"matmul={s}": ("float32", s, None) for s in environment.SETTINGS}
VARIANTS["compute=bfloat16"] = ("bfloat16", "default", None)
VARIANTS.update({f"emulated={f}": ("float32", "default", f) for f in emulate_lib.FORMATS})
SAMPLING_PRECISION = "float32"

# Tolerances of the rows (see rows.py). Logit errors: a factor of 4 either way is rounding noise
# (summation order differs between backends); below 1e-5 of the largest logit, float32 noise.
_ERR = dict(rel=0.75)
_REL_FLOOR = 1e-5


def _build(net, compute):
    """net.build(compute) as a `jax.tree_util.Partial`: its arrays (if it binds any) are traced
    arguments of the jitted forward and samplers, and `device_put` can move them."""
    fn = net.build(compute)
    return fn if isinstance(fn, jax.tree_util.Partial) else jax.tree_util.Partial(fn)


def _sample(fn, net, key):
    s = net.sample
    if net.kind == "mdm":
        tokens, _ = sampling.first_hitting(
            fn,
            key,
            batch_size=s["batch_size"],
            seq_len=s["seq_len"],
            mask_id=s["mask_id"],
            schedule=schedules.get(s["schedule"]),
            precision=SAMPLING_PRECISION,
        )
    else:
        tokens, _ = sampling.autoregressive_uncached(
            fn,
            key,
            batch_size=s["batch_size"],
            seq_len=s["seq_len"],
            precision=SAMPLING_PRECISION,
            bos_id=s["bos_id"],
        )
    return tokens


def _run(net, fns: dict, settings: dict, key):
    """{name: (logits float64 numpy, sample tokens)} for every fn, each traced under its matmul
    setting, all in one compiled program: a report is mostly compilation on a CPU, and one program
    compiles much faster than one per variant (measured: 10 s against 16 s for the quick network,
    53 s against 66 s for the full one)."""

    def all_variants(fns, inputs, key):
        out = {}
        for name, fn in fns.items():
            with environment.matmul_context(settings[name]):
                logits = fn(*inputs)
                if logits.dtype == jnp.bfloat16:
                    logits = logits.astype(jnp.float32)
                out[name] = (logits, _sample(fn, net, key))
        return out

    out = jax.jit(all_variants)(fns, net.inputs, key)
    return {name: (np.asarray(lg, np.float64), np.asarray(tok)) for name, (lg, tok) in out.items()}


def _mean_se(x) -> tuple[float, float]:
    x = np.asarray(x, np.float64)
    se = float(np.std(x, ddof=1) / math.sqrt(len(x))) if len(x) > 1 else 0.0
    return float(np.mean(x)), se


def _reference(net, key):
    """(logits, samples, logits dtype) of the float64 network, on the host CPU."""
    cpu = jax.devices("cpu")[0]
    with jax.enable_x64(True), jax.default_device(cpu):
        fn = jax.device_put(_build(net, "float64"), cpu)
        # A network may round its float64 logits to float32 on the way out (this package's
        # transformer does): relative 6e-8, far below any variant's error; the report says which.
        dtype = str(jax.eval_shape(fn, *net.inputs).dtype)
        logits, tokens = _run(net, {"float64": fn}, {"float64": "float32"}, key)["float64"]
        return logits, tokens, dtype


def _variants(net, key):
    fns, settings = {}, {}
    for name, (compute, setting, fmt) in VARIANTS.items():
        fn = _build(net, compute)
        fns[name] = fn if fmt is None else emulate_lib.emulate(fn, fmt)
        settings[name] = setting
    return _run(net, fns, settings, key)


def measure(net, log=print) -> dict:
    """Rows "model/<net>/..." for one `networks.Network`."""
    key = rng.fold(rng.root_key(0), f"numerics-sample/{net.name}")
    ref_logits, ref_tokens, ref_dtype = _reference(net, key)
    scored = np.asarray(net.scored, bool)
    ref = ref_logits[scored]  # [N, V]
    scale = float(np.max(np.abs(ref)))
    logp = ref - np.logaddexp.reduce(ref, axis=1, keepdims=True)
    p = f"model/{net.name}"
    out = {
        f"{p}/describe/{k}": R.exact(v)
        for k, v in net.describe.items()
        if k != "fixture" and isinstance(v, (str, bool, int))
    }
    ent, ent_se = _mean_se(sample_metrics.sequence_entropies(ref_tokens))
    out.update(
        {
            f"{p}/reference/logits_dtype": R.exact(ref_dtype),
            f"{p}/reference/max_abs_logit": R.number(scale, rel=1e-6),
            f"{p}/reference/predictive_entropy": R.number(-np.mean(np.sum(np.exp(logp) * logp, 1)), rel=1e-6),
            f"{p}/reference/sample_entropy": R.number(ent, se=ent_se),
            f"{p}/reference/sample_ids": R.ids(ref_tokens.ravel()),
        }
    )
    log(f"model  {net.name}: float64 reference on the CPU, max |logit| {scale:.2f}, sample entropy {ent:.3f}")
    for name, (logits, tokens) in _variants(net, key).items():
        err = np.max(np.abs(logits[scored] - ref))
        top1 = float(np.mean(np.argmax(logits[scored], 1) == np.argmax(ref, 1)))
        same, same_se = _mean_se(np.mean(tokens == ref_tokens, axis=1))
        ent, ent_se = _mean_se(sample_metrics.sequence_entropies(tokens))
        q = f"{p}/{name}"
        out.update(
            {
                f"{q}/max_abs_err": R.number(err, abs=_REL_FLOOR * scale, **_ERR),
                f"{q}/rel_err": R.number(err / scale, abs=_REL_FLOOR, **_ERR),
                f"{q}/top1": R.number(top1, se=math.sqrt(max(top1 * (1 - top1), 1e-12) / len(ref))),
                f"{q}/sample_identical": R.number(same, se=same_se),
                f"{q}/sample_entropy": R.number(ent, se=ent_se),
            }
        )
        if name == "matmul=default":
            out[f"{q}/sample_ids"] = R.ids(tokens.ravel())
        log(
            f"model  {net.name} {name:22s} max abs err {err:9.3g} (rel {err / scale:8.2g}), top-1 "
            f"{top1:.4f}, samples identical {same:.3f}, entropy {ent:.3f}"
        )
    return out
