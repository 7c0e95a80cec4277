"""The same key gives the same tokens on 1 device and on 8 (batch split over a 'data' axis).

The 8-device run is a subprocess with XLA_FLAGS=--xla_force_host_platform_device_count=8 (the
flag must be set before JAX starts); this process is the 1-device run.
"""

import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mdm_jax import sampling, schedules
from mdm_jax.reference.joint import ReferenceJoint

B, V, L = 16, 3, 3

SCRIPT = textwrap.dedent("""
    import json, sys
    import jax, jax.numpy as jnp
    sys.path.insert(0, {tests!r})
    from mdm_jax.reference.joint import ReferenceJoint
    from mdm_jax import sampling, schedules
    assert jax.device_count() == 8, jax.devices()
    out = {{}}
    for kind in ("Auto", "Explicit"):
        mesh = jax.make_mesh((8,), ("data",), axis_types=(getattr(jax.sharding.AxisType, kind),))
        sh = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
        out[kind] = run(sh, only_fhs=kind == "Auto")   # all three on jax.make_mesh's default
    print(json.dumps(out))
""")


def run(sh, only_fhs=False):
    ref = ReferenceJoint(V, L, seed=2)
    lin = schedules.get("linear")
    common = dict(batch_size=B, seq_len=L, mask_id=V, schedule=lin, batch_sharding=sh)
    fhs, _ = sampling.first_hitting(ref.denoise_fn, jax.random.key(7), precision="float64", **common)
    if only_fhs:
        return dict(fhs=jnp.asarray(fhs).tolist())
    anc, st = sampling.ancestral(
        ref.denoise_fn, jax.random.key(8), num_steps=16, precision="float32", **common
    )
    state = ref.init_arm_state(B) if sh is None else jax.device_put(ref.init_arm_state(B), sh)
    ar, _ = sampling.autoregressive(
        ref.arm_step_fn,
        state,
        jax.random.key(9),
        batch_size=B,
        seq_len=L,
        precision="float32",
        batch_sharding=sh,
    )
    return dict(
        fhs=jnp.asarray(fhs).tolist(),
        anc=jnp.asarray(anc).tolist(),
        ar=jnp.asarray(ar).tolist(),
        anc_nfe=st["nfe"],
    )


@pytest.mark.slow
def test_same_tokens_on_one_and_eight_devices():
    here = os.path.dirname(os.path.abspath(__file__))
    src = (
        "import inspect\n"
        + textwrap.dedent(f"B, V, L = {B}, {V}, {L}\n")
        + _source_of_run()
        + SCRIPT.format(tests=here)
    )
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    root = os.path.dirname(here)
    env["PYTHONPATH"] = os.pathsep.join([root, env.get("PYTHONPATH", "")])
    out = subprocess.run(
        [sys.executable, "-c", src], env=env, capture_output=True, text=True, timeout=300, cwd=root
    )
    assert out.returncode == 0, out.stderr[-3000:]
    eight = json.loads(out.stdout.strip().splitlines()[-1])
    one = run(None)
    assert jax.device_count() == 1
    for kind in ("Auto", "Explicit"):
        for name in eight[kind]:
            np.testing.assert_array_equal(
                np.array(eight[kind][name]), np.array(one[name]), err_msg=f"{kind} mesh, {name}"
            )


def _source_of_run():
    import inspect

    return inspect.getsource(run)
