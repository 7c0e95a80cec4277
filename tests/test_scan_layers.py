"""Scanned layers, rematerialisation and the scanned/unscanned parameter layouts.

The same parameters (converted between layouts) must give the same function and the same gradients;
remat policies change memory, never gradients; checkpoints restore across layouts. Tiny shapes: the
properties are structural.
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
import optax
import pytest

from conftest import ROOT, random_params
from mdm_jax import checkpoint, config as config_lib, runs, sharding, train
from mdm_jax.models import adapters, scan_layout
from mdm_jax.models.transformer import REMAT_POLICIES, Transformer

V, L, B = 13, 12, 3


def tiny(**kw) -> Transformer:
    args = dict(
        vocab_size=V, max_len=16, num_layers=3, num_heads=2, emb_dim=32, mlp_dim=48, time_conditioning=True
    )
    args.update(kw)
    return Transformer(**args)


def batch(seed=1):
    x = jax.random.randint(jax.random.key(seed), (B, L), 0, V + 1, jnp.int32)
    y = jax.random.randint(jax.random.key(seed + 1), (B, L), 0, V, jnp.int32)
    t = jax.random.uniform(jax.random.key(seed + 2), (B,), jnp.float32)
    return x, y, t


def loss_and_grads(model, params, x, y, t):
    def loss(p):
        logits = model.apply({"params": p}, x, t, deterministic=True)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    return jax.jit(jax.value_and_grad(loss))(params)


def assert_trees_close(a, b, rel=1e-4):
    """Leaf by leaf, to float32 tolerance: a different program (scan, recomputation) sums in
    another order, so each element may differ by ~1e-6 of its leaf's scale (measured: up to 2.5e-6
    absolute on leaves of scale 0.1); `rel` of the leaf's largest magnitude leaves a 4x margin."""
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b)):
        y = np.asarray(y)
        np.testing.assert_allclose(
            np.asarray(x), y, rtol=rel, atol=rel * float(np.abs(y).max()), err_msg=jax.tree_util.keystr(path)
        )


def test_scanned_layout_stacks_blocks_on_a_layers_axis():
    model = tiny(scan_layers=True)
    boxed = jax.eval_shape(
        model.init, jax.random.key(0), jnp.zeros((1, L), jnp.int32), jnp.zeros((1,), jnp.float32)
    )["params"]
    assert "blocks" in boxed and not any(k.startswith("block_") for k in boxed)
    specs = nn.get_partition_spec(boxed)
    assert tuple(specs["blocks"]["attn"]["qkv"]["kernel"]) == ("layers", "embed", None, "heads", "kv")
    assert nn.unbox(boxed)["blocks"]["mlp"]["wo"]["kernel"].shape == (3, 48, 32)
    # The layer axis is never sharded: every device holds its shard of every layer.
    assert ("layers", None) in sharding.LOGICAL_RULES
    # Converted unscanned params have exactly the scanned model's shapes and structure.
    converted = scan_layout.to_scanned(random_params(tiny()))
    assert jax.tree.map(lambda x: x.shape, converted) == jax.tree.map(lambda x: x.shape, nn.unbox(boxed))


def test_scanned_and_unscanned_give_the_same_loss_and_gradients():
    params = random_params(tiny())
    x, y, t = batch()
    loss, grads = loss_and_grads(tiny(), params, x, y, t)
    loss_s, grads_s = loss_and_grads(tiny(scan_layers=True), scan_layout.to_scanned(params), x, y, t)
    assert float(loss) > 0.5  # a live network: the comparison is not between two zeros
    np.testing.assert_allclose(float(loss_s), float(loss), rtol=1e-6)
    assert_trees_close(scan_layout.to_unscanned(grads_s), grads)
    assert max(float(jnp.abs(g).max()) for g in jax.tree.leaves(grads["block_1"])) > 1e-3


@pytest.mark.slow
def test_remat_policies_give_the_same_gradients():
    params = random_params(tiny(mlp_type="gelu", num_layers=2), seed=3)
    x, y, t = batch(5)
    ref_loss, ref = loss_and_grads(tiny(mlp_type="gelu", num_layers=2), params, x, y, t)
    for scan in (False, True):
        p = scan_layout.to_scanned(params) if scan else params
        for policy in set(REMAT_POLICIES) - {"none"}:
            model = tiny(mlp_type="gelu", num_layers=2, scan_layers=scan, remat=policy)
            loss, grads = loss_and_grads(model, p, x, y, t)
            np.testing.assert_allclose(float(loss), float(ref_loss), rtol=1e-6)
            assert_trees_close(scan_layout.to_unscanned(grads) if scan else grads, ref)


def test_remat_really_recomputes():
    # `full` keeps only block inputs: the compiled backward recomputes the forward, so it holds
    # more dot products than the plain backward (a structural check, independent of the CPU).
    params = scan_layout.to_scanned(random_params(tiny()))
    x, y, t = batch()

    def dots(remat):
        model = tiny(scan_layers=True, remat=remat)
        f = jax.grad(lambda p: model.apply({"params": p}, x, t).sum())
        return str(jax.make_jaxpr(f)(params)).count("dot_general")

    assert dots("full") > dots("none")
    with pytest.raises(ValueError, match="model.remat"):
        tiny(remat="sometimes").init(jax.random.key(0), x, t)


def test_kv_cached_decode_under_scan_equals_the_full_forward():
    model = tiny(causal=True, time_conditioning=False, scan_layers=True)
    params = scan_layout.to_scanned(random_params(tiny(causal=True, time_conditioning=False)))
    tokens = jax.random.randint(jax.random.key(2), (B, L), 0, V, jnp.int32)
    full = adapters.ar_logits_fn(model, params)(tokens)
    step_fn, state = adapters.ar_step_fn(model, params, B)
    assert state["blocks"]["attn"]["key"].shape[0] == 3  # one cache per layer, stacked
    step = jax.jit(step_fn)
    for i in range(L):
        logits, state = step(state, tokens[:, i], i)
        np.testing.assert_allclose(np.asarray(logits), np.asarray(full[:, i]), rtol=1e-4, atol=1e-5)


def test_layout_conversion_round_trips_every_tree_kind():
    params = random_params(tiny())
    scanned = scan_layout.to_scanned(params)
    assert scan_layout.layout_of(params) == "unscanned" and scan_layout.layout_of(scanned) == "scanned"
    back = scan_layout.to_unscanned(scanned)
    assert jax.tree.structure(back) == jax.tree.structure(params)
    for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert scan_layout.to_scanned(scanned) is not scanned  # idempotent, a new tree
    assert jax.tree.structure(scan_layout.to_scanned(scanned)) == jax.tree.structure(scanned)
    # Optimizer states (optax namedtuples holding params-shaped trees) convert leaf for leaf.
    opt = optax.adamw(1e-3).init(params)
    opt_s = scan_layout.to_scanned(opt)
    assert jax.tree.structure(opt_s) == jax.tree.structure(optax.adamw(1e-3).init(scanned))
    # Abstract leaves keep their dtype; a NamedSharding gains / loses a leading unsharded axis.
    mesh = jax.sharding.Mesh(np.asarray(jax.devices()[:1]).reshape(1, 1, 1), sharding.AXES)
    spec = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("fsdp", "tensor"))
    abstract = {
        "block_0": {"w": jax.ShapeDtypeStruct((4, 6), jnp.bfloat16, sharding=spec)},
        "block_1": {"w": jax.ShapeDtypeStruct((4, 6), jnp.bfloat16, sharding=spec)},
    }
    s = scan_layout.to_scanned(abstract)["blocks"]["w"]
    assert s.shape == (2, 4, 6) and s.dtype == jnp.bfloat16
    assert tuple(s.sharding.spec) == (None, "fsdp", "tensor")
    u = scan_layout.to_unscanned({"blocks": {"w": s}})["block_1"]["w"]
    assert u.shape == (4, 6) and tuple(u.sharding.spec) == ("fsdp", "tensor")


def test_per_layer_rules_ignore_the_layers_axis():
    # Weight decay and the adapters' dtype cast look at a leaf's per-layer rank: a scanned norm
    # scale [layers, d] is a vector (no decay, stays float32), a scanned kernel a matrix.
    params = random_params(tiny(time_conditioning=False))
    mask = train.weight_decay_mask(params)
    mask_s = train.weight_decay_mask(scan_layout.to_scanned(params))
    per_block = {
        jax.tree_util.keystr(p).replace("['block_0']", "['blocks']"): v
        for p, v in jax.tree_util.tree_leaves_with_path(mask)
        if "block_1" not in jax.tree_util.keystr(p) and "block_2" not in jax.tree_util.keystr(p)
    }
    assert {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_leaves_with_path(mask_s)} == per_block
    assert mask_s["blocks"]["attn_norm"]["scale"] is False and mask_s["blocks"]["mlp"]["wo"]["kernel"] is True
    model = tiny(time_conditioning=False, scan_layers=True, dtype=jnp.bfloat16)
    held = adapters.denoise_fn(model, scan_layout.to_scanned(params)).args[0]["params"]["blocks"]
    assert held["attn_norm"]["scale"].dtype == jnp.float32
    assert held["attn"]["qkv"]["kernel"].dtype == jnp.bfloat16


def tiny_config(scan: bool, layers: int = 2):
    c = config_lib.base()
    c.model.update(
        vocab_size=32,
        max_len=16,
        num_layers=layers,
        num_heads=2,
        emb_dim=32,
        mlp_dim=64,
        time_emb_dim=16,
        scan_layers=scan,
    )
    c.data.seq_len = 16
    c.train.batch_size = 4
    return c


@pytest.mark.slow
@pytest.mark.parametrize("saved_scan", [False, True])
def test_checkpoint_restores_into_the_other_layout(tmp_path, saved_scan):
    c_saved, c_other = tiny_config(saved_scan), tiny_config(not saved_scan)
    mesh = sharding.make_mesh(c_saved.mesh)
    state, _ = train.create_train_state(c_saved, mesh)
    state = state.replace(
        opt_state=jax.tree.map(  # non-trivial moments
            lambda x: x + 0.5 if jnp.issubdtype(x.dtype, jnp.floating) else x, state.opt_state
        )
    )
    with checkpoint.Checkpointer(tmp_path, async_save=False) as ckpt:
        ckpt.save(3, state, {"pos": 7})
    convert = scan_layout.to_unscanned if saved_scan else scan_layout.to_scanned
    abstract, shardings = train.abstract_train_state(c_other, mesh)
    with checkpoint.Checkpointer(tmp_path, read_only=True) as ckpt:
        restored, data = ckpt.restore(abstract)
    assert data == {"pos": 7}
    want = convert(state)
    assert jax.tree.structure(restored) == jax.tree.structure(want)
    for got, exp, s in zip(jax.tree.leaves(restored), jax.tree.leaves(want), jax.tree.leaves(shardings)):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(exp))
        assert got.sharding.is_equivalent_to(s, got.ndim)
    # The read-only path of sampling and evaluation (runs.restore_params) converts too.
    params, step, _, _ = runs.restore_params(c_other, str(tmp_path))
    assert step == 3 and scan_layout.layout_of(params) == scan_layout.layout_of(abstract.params)
    # Another depth is still a clear shape error (in the checkpoint's layout), not a silent conversion.
    deeper = train.abstract_train_state(tiny_config(not saved_scan, layers=3), mesh)[0]
    with checkpoint.Checkpointer(tmp_path, read_only=True) as ckpt:
        with pytest.raises(ValueError, match=r"block_2/\S+: missing|shape \(2, .*config shape \(3, "):
            ckpt.restore(deeper)


SHARDED_SCRIPT = textwrap.dedent("""
    import os, sys
    os.environ["XLA_FLAGS"] = ("--xla_force_host_platform_device_count=8 "
                               "--xla_backend_optimization_level=0")
    import jax, numpy as np
    from mdm_jax import config as config_lib, rng, sharding, train
    from mdm_jax.models import scan_layout
    assert jax.device_count() == 8

    def config(scan, mesh=(1, 1, 1)):
        c = config_lib.base()
        c.model.update(vocab_size=32, max_len=16, num_layers=3, num_heads=4, emb_dim=32, mlp_dim=64,
                       time_emb_dim=16, scan_layers=scan, remat="dots" if scan else "none")
        c.data.seq_len = 16
        c.train.update(batch_size=16, lr=1e-2, lr_schedule="constant", warmup_steps=0)
        c.mesh.data, c.mesh.fsdp, c.mesh.tensor = mesh
        return c

    gen = np.random.default_rng(0)
    batches = gen.integers(0, 32, (2, 16, 16)).astype(np.int32)

    def run(c, devices, init=None):
        mesh = sharding.make_mesh(c.mesh, devices=devices)
        state, shardings = train.create_train_state(c, mesh)
        if init is not None:  # the same starting params in this run's layout and shardings
            state = jax.device_put(init, shardings)
        step = train.make_train_step(c, mesh, shardings)
        losses = []
        for i, b in enumerate(batches):
            state, m = step(state, sharding.global_batch(b, mesh), rng.fold(rng.root_key(c.seed), "train", i))
            losses.append(float(m["loss"]))
        return state, losses

    ref_state, _ = train.create_train_state(config(False), sharding.make_mesh(config(False).mesh,
                                                                              devices=jax.devices()[:1]))
    init = jax.device_get(ref_state)
    unscanned, ref_losses = run(config(False), jax.devices()[:1], init)
    one, losses_one = run(config(True), jax.devices()[:1], scan_layout.to_scanned(init))
    sharded, losses_8 = run(config(True, (2, 2, 2)), jax.devices(), scan_layout.to_scanned(init))
    spec = sharded.params["blocks"]["attn"]["qkv"]["kernel"].sharding.spec
    assert tuple(spec) == (None, "fsdp", None, "tensor", None), spec
    np.testing.assert_allclose(losses_one, ref_losses, rtol=1e-5)
    np.testing.assert_allclose(losses_8, losses_one, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(scan_layout.to_unscanned(jax.device_get(sharded.params))),
                    jax.tree.leaves(jax.device_get(unscanned.params))):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    print("OK", ref_losses, losses_8)
""")


@pytest.mark.slow
def test_sharded_scanned_step_matches_one_device_and_the_unscanned_step():
    """8 fake CPU devices as data=2 x fsdp=2 x tensor=2, scanned with remat, against one device
    scanned and one device unscanned, from the same params (a fresh process: XLA_FLAGS first)."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["JAX_PLATFORMS"] = "cpu"
    proc = subprocess.run(
        [sys.executable, "-c", SHARDED_SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-3000:]
