"""Loaders place every parameter on a (data, fsdp, tensor) mesh with its logical sharding, and the
sharded networks compute the reference outputs.

The 8-device run is a subprocess with XLA_FLAGS=--xla_force_host_platform_device_count=8 (the flag
must be set before JAX starts); it prints JSON that the tests below check.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from conftest import ROOT

SCRIPT = textwrap.dedent("""
    import json, os
    import jax, jax.numpy as jnp, numpy as np
    from flax import traverse_util
    from ml_collections import ConfigDict
    from mdm_jax import interop, sharding
    assert jax.device_count() == 8
    fix = os.path.join("tests", "fixtures")
    out = {}
    mesh = sharding.make_mesh(ConfigDict(dict(data=2, fsdp=2, tensor=2)))
    with jax.default_matmul_precision("highest"):
        apply_fn, params, info = interop.load_gpt2(os.path.join(fix, "gpt2-tiny"), mesh=mesh)
        ref = np.load(os.path.join(fix, "gpt2-tiny", "reference.npz"))
        rows = [0, 1, 2, 0]   # the batch splits over data x fsdp = 4
        tokens = jax.device_put(ref["tokens"][rows], sharding.batch_sharding(mesh))
        logits = jax.jit(apply_fn)(params, tokens)
        out["gpt2_err"] = float(np.max(np.abs(np.asarray(logits) - ref["logits"][rows])))
        out["gpt2_specs"] = {"/".join(k): [str(s) for s in v.sharding.spec]
                             for k, v in traverse_util.flatten_dict(params).items()}
        out["gpt2_meshes"] = sorted({str(v.sharding.mesh.shape) for v in jax.tree.leaves(params)})
        wte = params["wte"]["embedding"]
        out["wte_shard"] = list(wte.addressable_shards[0].data.shape)

        denoise_fn, info = interop.load_mdlm(os.path.join(fix, "mdlm-tiny-tc"), mesh=mesh)
        ref = np.load(os.path.join(fix, "mdlm-tiny-tc", "reference.npz"))
        t = (-np.expm1(-ref["sigma"].astype(np.float64)) / (1 - 1e-3)).astype(np.float32)
        tokens = jax.device_put(ref["tokens"][rows], sharding.batch_sharding(mesh))
        lp = jax.jit(lambda f, x, t: f(x, t))(denoise_fn, tokens, t[rows])
        masked = ref["tokens"][rows] == info.mask_id
        want = ref["log_probs_subs"][rows][masked][:, :600]
        out["mdlm_err"] = float(np.max(np.abs(np.asarray(lp)[masked] - want)))
        leaves = jax.tree.leaves(denoise_fn)
        qkv = denoise_fn.args[0]["params"]["blocks_0"]["attn_qkv"]["kernel"]
        out["mdlm_qkv_spec"] = [str(s) for s in qkv.sharding.spec]
        out["mdlm_all_on_mesh"] = all(x.sharding.mesh.shape == mesh.shape for x in leaves)

    try:
        tensor8 = sharding.make_mesh(ConfigDict(dict(data=1, fsdp=1, tensor=8)))
        interop.load_gpt2(os.path.join(fix, "gpt2-tiny"), mesh=tensor8)
        out["tensor8"] = None
    except ValueError as e:
        out["tensor8"] = str(e)
    _, params, _ = interop.load_gpt2(os.path.join(fix, "gpt2-tiny"))   # default mesh: all devices on "data"
    out["default_replicated"] = all(v.sharding.is_fully_replicated for v in jax.tree.leaves(params))
    out["default_devices"] = len(jax.tree.leaves(params)[0].sharding.device_set)
    print("JSON" + json.dumps(out))
""")


@pytest.fixture(scope="module")
def result():
    env = dict(
        os.environ,
        XLA_FLAGS="--xla_force_host_platform_device_count=8",
        PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
    )
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("JSON"))
    return json.loads(line[4:])


def test_sharded_gpt2_matches_reference(result):
    assert result["gpt2_err"] <= 5e-5
    specs = result["gpt2_specs"]
    assert specs["wte/embedding"] == ["tensor", "fsdp"]  # vocab over tensor, embed over fsdp
    assert result["wte_shard"] == [256, 32]  # 512 x 64 split 2 x 2
    assert specs["h_0/c_attn/kernel"] == ["fsdp", "None", "tensor", "None"]  # [D, 3, heads, head_dim]
    assert specs["h_0/c_attn/bias"] == ["None", "tensor", "None"]
    assert specs["h_1/mlp_c_proj/kernel"] == ["tensor", "fsdp"]  # [mlp, D]
    assert specs["ln_f/scale"] == ["fsdp"]
    assert len(result["gpt2_meshes"]) == 1


def test_sharded_mdlm_matches_reference(result):
    assert result["mdlm_err"] <= 5e-5
    assert result["mdlm_qkv_spec"] == ["fsdp", "None", "tensor", "None"]
    assert result["mdlm_all_on_mesh"]


def test_indivisible_mesh_is_refused_naming_the_parameter(result):
    msg = result["tensor8"]
    assert msg is not None and "cannot be laid out on the mesh" in msg and "--config.mesh" in msg
    assert "dimension 4 is split over mesh axes tensor of total size 8" in msg  # 4 heads over 8


def test_default_mesh_replicates_over_all_devices(result):
    assert result["default_devices"] == 8
    assert result["default_replicated"]  # fsdp = tensor = 1: every device holds every parameter
