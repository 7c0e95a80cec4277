"""Attention kernel selection (`model.attention`) and the Pallas Splash kernel in interpret mode.

What a CPU can check: the selection logic for every backend (the GPU path down to cuDNN's own
refusal on a machine without cuDNN, the TPU path through an abstract trace of the real kernel),
the recorded choice in run metadata, and the Splash kernel's wiring (layout, scaling, causal and
full masks, gradients, the model end to end) in Pallas interpret mode against XLA's attention.
What it cannot: the compiled TPU kernel's speed and its Mosaic lowering (benchmarks/RESULTS.md).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import ROOT
from mdm_jax import config as config_lib, models, report
from mdm_jax.models import attention
from mdm_jax.models.transformer import Transformer


def choose(requested, backend, dtype=jnp.bfloat16, seq_len=1024, causal=False):
    return attention.select(
        requested, backend=backend, dtype=dtype, seq_len=seq_len, num_heads=4, head_dim=64, causal=causal
    )


def test_auto_picks_each_backends_kernel_or_says_why_not():
    cpu = choose("auto", "cpu", jnp.float32)
    assert (cpu.implementation, cpu.fallback) == ("xla", False) and "cpu" in cpu.reason
    tpu = choose("auto", "tpu", seq_len=8192, causal=True)
    assert (tpu.implementation, tpu.fallback) == ("splash", False)
    odd = choose("auto", "tpu", seq_len=1000)
    assert (odd.implementation, odd.fallback) == ("xla", True) and "multiple of 128" in odd.reason
    f32_gpu = choose("auto", "gpu", jnp.float32)
    assert (f32_gpu.implementation, f32_gpu.fallback) == ("xla", False) and "bf16" in f32_gpu.reason
    # bf16 on a GPU asks for cuDNN; this machine has none, so the probe's refusal becomes a recorded
    # fallback (on a GPU with cuDNN the same call resolves to "cudnn").
    gpu = choose("auto", "gpu")
    assert gpu.implementation in ("cudnn", "xla")
    if jax.default_backend() != "gpu":
        assert gpu.fallback and gpu.reason.startswith("cudnn unavailable")
    assert choose("xla", "tpu").implementation == "xla"


def test_explicit_kernels_that_cannot_run_fail_naming_the_field():
    with pytest.raises(ValueError, match=r"model.attention='cudnn'.*GPU"):
        choose("cudnn", "cpu")
    with pytest.raises(ValueError, match=r"model.attention='cudnn'.*bf16"):
        choose("cudnn", "gpu", jnp.float32)
    with pytest.raises(ValueError, match=r"model.attention='splash'.*TPU"):
        choose("splash", "cpu")
    with pytest.raises(ValueError, match=r"model.attention='splash'.*multiple of 128"):
        choose("splash", "tpu", seq_len=200)
    with pytest.raises(ValueError, match="unknown model.attention='flash'"):
        choose("flash", "cpu")
    assert choose("splash_interpret", "cpu", seq_len=256).implementation == "splash_interpret"


def test_choice_is_built_into_the_model_and_recorded_in_metadata():
    c = config_lib.base()
    assert c.model.attention == "auto"
    assert models.build(c).attention == models.attention_choice(c).implementation
    meta = report.metadata(c)
    assert meta["attention"] == models.attention_choice(c).as_dict()
    assert set(meta["attention"]) == {"requested", "implementation", "reason", "fallback"}
    c.model.attention = "cudnn"
    if jax.default_backend() != "gpu":
        with pytest.raises(ValueError, match="model.attention"):
            models.build(c)


@pytest.mark.slow
@pytest.mark.parametrize("causal", [False, True])
def test_splash_kernel_in_interpret_mode_matches_xla(causal):
    b, length, heads, head_dim = 2, 128, 2, 32
    shape = (b, length, heads, head_dim)
    q, k, v = (jax.random.normal(jax.random.key(i), shape, jnp.float32) for i in range(3))
    w = jax.random.normal(jax.random.key(9), (b, length, heads, head_dim), jnp.float32)

    def loss(impl):
        return lambda q, k, v: jnp.sum(w * attention.attend(q, k, v, implementation=impl, is_causal=causal))

    out = jax.jit(
        lambda q, k, v: attention.attend(q, k, v, implementation="splash_interpret", is_causal=causal)
    )(q, k, v)
    ref = attention.attend(q, k, v, implementation="xla", is_causal=causal)
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), atol=2e-5)
    grads = jax.jit(jax.grad(loss("splash_interpret"), argnums=(0, 1, 2)))(q, k, v)
    refs = jax.grad(loss("xla"), argnums=(0, 1, 2))(q, k, v)
    for g, r in zip(grads, refs):
        # The kernel accumulates blockwise in another order: float32 rounding, relative 1e-5.
        np.testing.assert_allclose(np.asarray(g), np.asarray(r), atol=1e-4 * float(jnp.abs(r).max()))


def test_the_model_runs_the_selected_kernel():
    kw = dict(vocab_size=13, max_len=128, num_layers=2, num_heads=2, emb_dim=32, mlp_dim=48, causal=True)
    x = jnp.zeros((2, 128), jnp.int32)

    def kernels(impl, scan):
        model = Transformer(**kw, attention=impl, scan_layers=scan)
        params = jax.eval_shape(model.init, jax.random.key(0), x)["params"]
        return str(jax.make_jaxpr(lambda p: model.apply({"params": p}, x))(params)).count("pallas_call")

    assert kernels("xla", False) == 0
    assert kernels("splash_interpret", False) >= 1 and kernels("splash_interpret", True) >= 1


SHARDED_SCRIPT = textwrap.dedent("""
    import os
    os.environ["XLA_FLAGS"] = ("--xla_force_host_platform_device_count=8 "
                               "--xla_backend_optimization_level=0")
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import NamedSharding, PartitionSpec as P
    from mdm_jax import config as config_lib, models, sharding
    from mdm_jax.models import attention
    assert jax.device_count() == 8
    c = config_lib.base()
    c.mesh.update(data=2, fsdp=2, tensor=2)
    mesh = sharding.make_mesh(c.mesh)

    # The kernel under a mesh runs per device in a shard_map (batch over data x fsdp, heads over
    # tensor) and gives XLA's attention and gradients.
    b, length, heads, head_dim = 4, 128, 4, 16
    q, k, v = (jax.random.normal(jax.random.key(i), (b, length, heads, head_dim)) for i in range(3))
    spec = NamedSharding(mesh, P(sharding.BATCH_AXES, None, "tensor", None))

    def attend(impl):
        def f(q, k, v):
            with jax.sharding.use_abstract_mesh(mesh.abstract_mesh), sharding.rules_context():
                return jnp.sum(jnp.sin(attention.attend(q, k, v, implementation=impl, is_causal=True)))
        return f

    loss, grads = jax.jit(jax.value_and_grad(attend("splash_interpret"), argnums=(0, 1, 2)),
                          in_shardings=(spec,) * 3)(q, k, v)
    ref_loss, refs = jax.value_and_grad(attend("xla"), argnums=(0, 1, 2))(q, k, v)
    assert abs(float(loss) - float(ref_loss)) < 1e-4 * abs(float(ref_loss)) + 1e-4, (loss, ref_loss)
    for g, r in zip(grads, refs):
        np.testing.assert_allclose(np.asarray(g), np.asarray(r), atol=1e-4 * float(jnp.abs(r).max()))

    # The whole network, sharded, with the kernel: the logits of XLA's attention on one device.
    c.model.update(vocab_size=15, max_len=128, num_layers=2, emb_dim=32, num_heads=4, mlp_dim=48,
                   attention="splash_interpret", scan_layers=True)
    c.data.seq_len = 128
    model, ref_model = models.build(c), models.build(c).clone(attention="xla")
    x = jax.random.randint(jax.random.key(0), (8, 128), 0, 16, jnp.int32)
    t = jax.random.uniform(jax.random.key(1), (8,), jnp.float32)
    boxed = jax.eval_shape(model.init, jax.random.key(2), x, t)
    shardings = sharding.logical_shardings(boxed, mesh)["params"]
    gen = np.random.default_rng(0)
    params = jax.tree.map(lambda s: jnp.asarray(0.2 * gen.standard_normal(s.shape), jnp.float32),
                          jax.tree.map(lambda b: b.value if hasattr(b, "value") else b, boxed["params"],
                                       is_leaf=lambda b: hasattr(b, "value")))

    def forward(p, x, t):
        with jax.sharding.use_abstract_mesh(mesh.abstract_mesh), sharding.rules_context():
            return model.apply({"params": p}, x, t)

    rows = sharding.batch_sharding(mesh)
    f = jax.jit(forward, in_shardings=(shardings, rows, sharding.batch_sharding(mesh, 1)))
    out = f(jax.device_put(params, shardings), x, t)
    ref = jax.jit(lambda p, x, t: ref_model.apply({"params": p}, x, t))(params, x, t)
    assert float(jnp.abs(ref).max()) > 0.1
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), atol=1e-4)
    print("OK")
""")


@pytest.mark.slow
def test_splash_kernel_sharded_over_eight_devices_matches_xla():
    """8 fake CPU devices as data=2 x fsdp=2 x tensor=2 (a fresh process: XLA_FLAGS before import)."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["JAX_PLATFORMS"] = "cpu"
    proc = subprocess.run(
        [sys.executable, "-c", SHARDED_SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-3000:]
