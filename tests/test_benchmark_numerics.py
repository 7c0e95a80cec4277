"""benchmarks/numerics.py: the backend audit measures the caps it claims, and --compare works."""

import importlib.util
import json
import math
import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from conftest import ROOT
from mdm_jax import precision as precision_lib, rng

_spec = importlib.util.spec_from_file_location("bench_numerics",
                                              os.path.join(ROOT, "benchmarks", "numerics.py"))
numerics = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(numerics)


def test_noise_reaches_the_analytic_cap_at_the_grid_rate():
    # 2^22 draws: bfloat16 (2^-7 grid) and float16 (2^-10) sit on their top grid point at rate d;
    # the max equals the analytic cap rounded to the dtype. Binomial counts, 5 standard deviations.
    for i, (prec, dtype) in enumerate((("bfloat16", jnp.bfloat16), ("float16", jnp.float16))):
        mx, hits, n = numerics.noise_cap(rng.fold(rng.root_key(0), "cap", i), prec, 22)
        grid = precision_lib.policy_grid(prec)
        assert mx == float(jnp.asarray(grid.cap, dtype)), (prec, mx)
        expected = n * grid.d
        assert abs(hits - expected) < 5 * math.sqrt(expected), (prec, hits, expected)
    # float32 never exceeds its cap (15.94), and float64's max stays far below 36.04 (log 2^22 ~ 15).
    mx32, _, _ = numerics.noise_cap(rng.root_key(1), "float32", 22)
    assert mx32 <= precision_lib.gumbel_cap("float32") + 1e-5
    mx64, hits64, _ = numerics.noise_cap(rng.root_key(2), "float64", 22)
    assert 12 < mx64 < 30 and hits64 == 0


@pytest.mark.slow
def test_cli_matches_the_committed_cpu_file(tmp_path):
    # benchmarks/numerics_cpu.json is what accelerator runs compare against: this CPU must still
    # reproduce its fixed-key token ids exactly (same seed -> same samples), every policy.
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    cmd = [sys.executable, os.path.join(ROOT, "benchmarks", "numerics.py"), "--scale=-4",
           "--compare=benchmarks/numerics_cpu.json", f"--out={tmp_path / 'b.json'}"]
    out = subprocess.run(cmd, check=True, cwd=ROOT, env=env, capture_output=True, text=True).stdout
    b = json.load(open(tmp_path / "b.json"))
    assert set(b["compare"]) - {"against"} == set(numerics.POLICIES)
    # Nearly all, not all: another x86-64 CPU may round the float32 logits differently (FMA or
    # not), which flips the rare draw whose two best scores are closer than that rounding.
    for p in numerics.POLICIES:
        assert set(b["compare"][p]) == {"categorical_zipf", "fhs_reference"}, p
        assert min(b["compare"][p].values()) >= 0.99, (p, b["compare"][p])
        assert len(b["same"][p]["fhs_reference"]) == 8 * 64
    assert "identical token ids vs cpu" in out
    # The tail test is a (V+1)-way draw: float64 unmasks at about eps (2^8 rows: 0.26 expected hits,
    # so only the bound that bfloat16 and float16 never unmask a 2e-9 token is sharp).
    assert b["tail"]["bfloat16"]["unmasked"] == 0 and b["tail"]["float16"]["unmasked"] == 0
    assert np.isclose(b["tail"]["float32"]["grid"], 0.0150, atol=2e-3)
