"""The backbone and its adapters: causality, KV cache, time conditioning, SUBS output, sharding, x64.

Tiny shapes throughout (a few layers of width 32): the properties are structural, not size-dependent.
Parameters are perturbed away from init where init would hide a bug (adaLN-Zero gates and the
zero-initialised head make a fresh network output all zeros).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import ROOT, load_config, random_params
from mdm_jax import config as config_lib, models
from mdm_jax.models import adapters
from mdm_jax.models.transformer import Transformer, padded_vocab

V, L, B = 13, 12, 3


def tiny(**kw) -> Transformer:
    args = dict(vocab_size=V, max_len=16, num_layers=2, num_heads=2, emb_dim=32, mlp_dim=48)
    args.update(kw)
    return Transformer(**args)


def tokens_of(seed: int, shape=(B, L), high=V + 1):
    return jax.random.randint(jax.random.key(seed), shape, 0, high, jnp.int32)


def test_kv_cached_decode_equals_full_causal_forward():
    model = tiny(causal=True)
    params = random_params(model)
    inputs = tokens_of(1).at[:, 0].set(V)  # bos = mask id, as in the ARM objective
    full = jax.jit(adapters.ar_logits_fn(model, params))(inputs)
    step_fn, state = adapters.ar_step_fn(model, params, B)
    step_fn = jax.jit(step_fn)
    cached = []
    for pos in range(L):
        logits, state = step_fn(state, inputs[:, pos], pos)
        cached.append(logits)
    np.testing.assert_allclose(np.stack(cached, axis=1), full, atol=2e-5, rtol=1e-4)
    # Positions are authoritative: re-feeding position 3 onto the filled cache reproduces its logits
    # (keys/values beyond 3 are masked out).
    again, _ = step_fn(state, inputs[:, 3], 3)
    np.testing.assert_allclose(again, full[:, 3], atol=2e-5, rtol=1e-4)


def test_ar_adapters_reject_bidirectional_model():
    model = tiny(causal=False)
    with pytest.raises(ValueError, match="causal"):
        adapters.ar_step_fn(model, random_params(model), B)


def _position_sensitivity(model, params, i):
    """Max |change| of outputs at positions <= i and > i when only tokens after i change."""
    a = tokens_of(2)
    b = a.at[:, i + 1 :].set((a[:, i + 1 :] + 1) % V)
    t = jnp.full((B,), 0.5, jnp.float32) if model.time_conditioning else None
    apply = jax.jit(lambda x: model.apply({"params": params}, x, t))
    fa, fb = apply(a), apply(b)
    diff = jnp.abs(fa - fb)
    return float(diff[:, : i + 1].max()), float(diff[:, i + 1 :].max())


def test_causal_output_ignores_future_tokens_bidirectional_does_not():
    causal = tiny(causal=True, mlp_type="gelu")
    before, after = _position_sensitivity(causal, random_params(causal), i=5)
    assert before == 0.0 and after > 1e-3
    bidir = tiny(causal=False, time_conditioning=True)
    before, after = _position_sensitivity(bidir, random_params(bidir), i=5)
    assert before > 1e-3 and after > 1e-3


def test_time_conditioning_only_when_enabled():
    x = tokens_of(3)
    t1, t2 = jnp.full((B,), 0.2, jnp.float32), jnp.full((B,), 0.9, jnp.float32)

    timed = tiny(time_conditioning=True)
    # The real init (jitted; the rbg PRNG compiles ~2x faster than threefry and the draws' values
    # do not matter here, only which parameters start at zero).
    fresh = jax.jit(lambda k: nn.unbox(timed.init(k, x, t1))["params"])(jax.random.key(0, impl="unsafe_rbg"))
    # adaLN-Zero: zero modulation at init, so a fresh network cannot depend on t at all.
    for name in ["final_adaln"] + [f"block_{i}" for i in range(2)]:
        mod = fresh[name]["adaln"] if name.startswith("block") else fresh[name]
        assert not np.any(mod["kernel"]) and not np.any(mod["bias"])
    apply = jax.jit(lambda p, t: timed.apply({"params": p}, x, t))
    np.testing.assert_array_equal(apply(fresh, t1), apply(fresh, t2))
    trained = random_params(timed)
    assert float(jnp.abs(apply(trained, t1) - apply(trained, t2)).max()) > 1e-3
    with pytest.raises(ValueError, match="needs t"):
        timed.apply({"params": trained}, x, None)

    free = tiny(time_conditioning=False)
    params = random_params(free)
    fn = jax.jit(adapters.denoise_fn(free, params))
    np.testing.assert_array_equal(fn(x, t1), fn(x, t2))
    np.testing.assert_array_equal(fn(x, t1), jax.jit(lambda x: free.apply({"params": params}, x))(x))


def test_output_has_v_logits_never_the_mask():
    model = tiny(time_conditioning=True)
    params = random_params(model)
    x = jnp.full((B, L), V, jnp.int32)  # all masked: the mask id V is a valid input
    logits = jax.jit(adapters.denoise_fn(model, params))(x, jnp.ones((B,), jnp.float32))
    assert logits.shape == (B, L, V) and logits.dtype == jnp.float32
    # V + 1 rows used (ids 0..V), stored padded to a multiple of 128 for tensor-parallel splits.
    assert params["embed"]["embedding"].shape == (padded_vocab(V + 1), 32) == (128, 32)
    assert params["head"]["kernel"].shape == (32, 128)
    assert bool(jnp.all(jnp.isfinite(logits)))
    # A full variables dict is accepted as well as the bare params collection.
    same = jax.jit(adapters.denoise_fn(model, {"params": params}))(x, jnp.ones((B,), jnp.float32))
    np.testing.assert_array_equal(logits, same)


def _param_count(config) -> int:
    model = models.build(config)
    t = jnp.zeros((1,), jnp.float32)
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 8), jnp.int32), t)["params"]
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nn.unbox(shapes)))


def test_param_count_of_owt_mdm_small_shape():
    """MDLM's small DiT has ~169M parameters (untied input/output embeddings of the GPT-2 vocabulary,
    12 x 768 blocks with GELU 3072, adaLN from a 128-d time embedding). Ours: 169.7M, of which
    0.07M are the unused padding of the two vocabulary tables to 50,304."""
    config = load_config("configs/owt_mdm_small.py")
    n = _param_count(config)
    d, layers = 768, 12
    embeddings = 50304 * d + d * 50304  # V + 1 = 50,258 rows and V = 50,257 columns, each padded to 128k
    block = 4 * d * d + 2 * d * 3072 + 128 * 6 * d + 6 * d
    time = 128 * 128 * 2 + 2 * 128 + 128 * 2 * d + 2 * d
    assert n == embeddings + layers * block + time
    assert 165e6 < n < 175e6
    config.model.time_conditioning = False  # adaLN off: plain RMSNorm scales instead
    assert _param_count(config) == embeddings + layers * (4 * d * d + 2 * d * 3072 + 2 * d) + d


def test_build_follows_config():
    config = config_lib.base()
    config.model.update(vocab_size=V, num_layers=1, emb_dim=32, num_heads=2, mlp_dim=48)
    mdm = models.build(config)
    assert not mdm.causal and mdm.time_conditioning
    config.objective.kind = "arm"
    arm = models.build(config)
    assert arm.causal and not arm.time_conditioning  # the ARM never sees t
    config.dtype.compute = "float8"
    with pytest.raises(ValueError, match="dtype.compute"):
        models.build(config)


def _float64_ops(closed_jaxpr) -> list[str]:
    """Equations (recursively, through jit/scan bodies) that produce a float64 value."""
    found = []

    def walk(jaxpr):
        for eqn in jaxpr.eqns:
            if any(getattr(v.aval, "dtype", None) == jnp.float64 for v in eqn.outvars):
                found.append(str(eqn))
            for p in eqn.params.values():
                for sub in p if isinstance(p, (list, tuple)) else [p]:
                    inner = getattr(sub, "jaxpr", sub)
                    if hasattr(inner, "eqns"):
                        walk(inner)

    walk(closed_jaxpr.jaxpr)
    return found


def test_x64_safe():
    """Under jax.enable_x64 (the float64 sampling policy) the network still computes in float32."""
    x = tokens_of(4)
    mdm, arm = tiny(time_conditioning=True), tiny(causal=True)
    mdm_params, arm_params = random_params(mdm), random_params(arm)
    with jax.enable_x64(True):
        t64 = jnp.full((B,), 0.5, jnp.float64)  # samplers in float64 may hand over float64 times
        jp = jax.make_jaxpr(adapters.denoise_fn(mdm, mdm_params))(x, t64)
        assert jp.out_avals[0].dtype == jnp.float32 and _float64_ops(jp) == []
        assert "f64" in str(jp)  # the search can see a float64 (the input t): it is not vacuous
        step_fn, state = adapters.ar_step_fn(arm, arm_params, B)
        jp = jax.make_jaxpr(step_fn)(state, x[:, 0], jnp.asarray(3))  # pos int64 under x64
        assert jp.out_avals[0].dtype == jnp.float32 and _float64_ops(jp) == []
        jp = jax.make_jaxpr(adapters.ar_logits_fn(arm, arm_params))(x)
        assert _float64_ops(jp) == []
        logits64 = jax.jit(adapters.denoise_fn(mdm, mdm_params))(x, t64)
    logits32 = jax.jit(adapters.denoise_fn(mdm, mdm_params))(x, jnp.full((B,), 0.5, jnp.float32))
    np.testing.assert_allclose(logits64, logits32, atol=1e-6)


SHARDED_SCRIPT = textwrap.dedent("""
    import os
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    import flax.linen as nn, jax, jax.numpy as jnp, numpy as np
    from jax.sharding import NamedSharding, PartitionSpec as P
    from mdm_jax import config as config_lib, models, sharding
    assert jax.device_count() == 8
    config = config_lib.base()
    config.model.update(vocab_size=15, max_len=16, num_layers=2, emb_dim=32, num_heads=4, mlp_dim=48)
    config.mesh.update(data=2, fsdp=2, tensor=2)
    mesh = sharding.make_mesh(config.mesh)
    model = models.build(config)
    B, L = 8, 16
    x = jax.random.randint(jax.random.key(0), (B, L), 0, 16, jnp.int32)
    t = jax.random.uniform(jax.random.key(1), (B,), jnp.float32)
    boxed = jax.eval_shape(model.init, jax.random.key(2), x, t)
    shardings = sharding.logical_shardings(boxed, mesh)["params"]
    gen = np.random.default_rng(0)
    params = jax.tree.map(lambda s: jnp.asarray(0.2 * gen.standard_normal(s.shape), jnp.float32),
                          nn.unbox(boxed)["params"])

    # Every parameter resolves to a sharding over the named mesh axes; the big ones are split.
    specs = {jax.tree_util.keystr(k): s.spec for k, s in jax.tree_util.tree_leaves_with_path(shardings)}
    assert specs["['block_0']['attn']['qkv']['kernel']"] == P("fsdp", None, "tensor", None), specs
    assert specs["['block_0']['mlp']['wo']['kernel']"] == P("tensor", "fsdp"), specs
    assert specs["['head']['kernel']"] == P("fsdp", "tensor"), specs
    assert specs["['embed']['embedding']"] == P("tensor", "fsdp"), specs

    def forward(p, x, t):
        with jax.sharding.use_abstract_mesh(mesh.abstract_mesh), sharding.rules_context():
            return model.apply({"params": p}, x, t)

    sharded_params = jax.device_put(params, shardings)
    assert sharded_params["block_0"]["mlp"]["wi"]["kernel"].addressable_shards[0].data.shape == (16, 2, 24)
    batch = sharding.batch_sharding(mesh)
    f = jax.jit(forward, in_shardings=(shardings, batch, sharding.batch_sharding(mesh, 1)),
                out_shardings=NamedSharding(mesh, P(sharding.BATCH_AXES, None, None)))
    out = f(sharded_params, jax.device_put(x, batch), jax.device_put(t, sharding.batch_sharding(mesh, 1)))
    ref = jax.jit(lambda p, x, t: model.apply({"params": p}, x, t))(
        jax.device_put(params, jax.devices()[0]), x, t)
    err = float(np.abs(np.asarray(out) - np.asarray(ref)).max())
    assert err < 1e-4, err
    assert float(np.abs(np.asarray(ref)).max()) > 0.1
    print("OK", err)
""")


@pytest.mark.slow
def test_sharded_forward_matches_single_device():
    """8 fake CPU devices as data=2 x fsdp=2 x tensor=2 (a fresh process: XLA_FLAGS before import)."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["JAX_PLATFORMS"] = "cpu"
    proc = subprocess.run(
        [sys.executable, "-c", SHARDED_SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-3000:]


@pytest.mark.slow
def test_samplers_take_adapter_params_as_traced_arguments():
    # Adapters return Partials: new params of the same model reuse the compiled sampler (sampling
    # during training must not recompile, and params must not be baked in as constants), yet the
    # new params are really used: each result equals a plain closure's over the same params.
    import importlib

    from mdm_jax import sampling, schedules

    # The modules (the package re-exports functions of the same names).
    fhs_mod = importlib.import_module("mdm_jax.sampling.first_hitting")
    ar_mod = importlib.import_module("mdm_jax.sampling.autoregressive")

    model = tiny(time_conditioning=True)
    p1, p2 = random_params(model, 1), random_params(model, 2)
    kw = dict(batch_size=B, seq_len=L, mask_id=V, schedule=schedules.get("linear"), precision="float32")
    key = jax.random.key(3)
    before = fhs_mod._fhs._cache_size()
    out1, _ = sampling.first_hitting(adapters.denoise_fn(model, p1), key, **kw)
    out2, _ = sampling.first_hitting(adapters.denoise_fn(tiny(time_conditioning=True), p2), key, **kw)
    assert fhs_mod._fhs._cache_size() == before + 1
    for p, out in ((p1, out1), (p2, out2)):
        closure = lambda x, t, p=p: model.apply({"params": p}, x, t, deterministic=True)  # noqa: E731
        ref, _ = sampling.first_hitting(closure, key, **kw)
        np.testing.assert_array_equal(np.asarray(out), np.asarray(ref))
    assert not np.array_equal(np.asarray(out1), np.asarray(out2))

    arm = tiny(causal=True)
    a1, a2 = random_params(arm, 4), random_params(arm, 5)
    before = ar_mod._ar_cached._cache_size()
    toks = []
    for p in (a1, a2):
        step_fn, state = adapters.ar_step_fn(arm, p, B)
        toks.append(
            np.asarray(
                sampling.autoregressive(
                    step_fn, state, key, batch_size=B, seq_len=L, bos_id=V, precision="float32"
                )[0]
            )
        )
        full, _ = sampling.autoregressive_uncached(
            adapters.ar_logits_fn(arm, p), key, batch_size=B, seq_len=L, bos_id=V, precision="float32"
        )
        np.testing.assert_array_equal(toks[-1], np.asarray(full))
    assert ar_mod._ar_cached._cache_size() == before + 1
    assert not np.array_equal(toks[0], toks[1])


def test_adapters_cast_weight_matrices_once_without_changing_outputs():
    # A bf16 network: the adapters hold its matrices in bf16 (so a sampler loop does not re-cast
    # the float32 weights on every call) and give bitwise the outputs of apply on the float32 params.
    model = tiny(time_conditioning=True, dtype=jnp.bfloat16, mlp_type="glu")
    params = random_params(model, 6)
    fn = adapters.denoise_fn(model, params)
    held = jax.tree.leaves(fn.args[0]["params"])
    assert {str(x.dtype) for x in held if x.ndim >= 2} == {"bfloat16"}
    assert {str(x.dtype) for x in held if x.ndim < 2} == {"float32"}
    x, t = tokens_of(7), jnp.linspace(0.1, 0.9, B, dtype=jnp.float32)
    # Both jitted: XLA's bf16 fusion differs between eager and compiled code, not between the two.
    want = jax.jit(lambda p, x, t: model.apply({"params": p}, x, t, deterministic=True))(params, x, t)
    np.testing.assert_array_equal(np.asarray(jax.jit(fn)(x, t)), np.asarray(want))
    arm = tiny(causal=True, dtype=jnp.bfloat16)
    ap = random_params(arm, 8)
    np.testing.assert_array_equal(
        np.asarray(jax.jit(adapters.ar_logits_fn(arm, ap))(x)),
        np.asarray(jax.jit(lambda p, x: arm.apply({"params": p}, x, None, deterministic=True))(ap, x)),
    )
