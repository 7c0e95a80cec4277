"""`python -m mdm_jax.numerics report` and `compare` end to end: two quick reports made here with
different settings differ in exactly the rows those settings should change; and this CPU still
reproduces the committed CPU report's fixed-key token ids."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import ROOT
from mdm_jax import rng
from mdm_jax.numerics import arithmetic, compare, draws, environment, rows as R

METRICS = ("max_abs_err", "rel_err", "top1", "sample_identical", "sample_entropy")


def _start(tmp_path, name, **env):
    """A quick report made by the command in a fresh process (the settings come from its environment)."""
    # XLA at -O0: a quick report is almost all compilation, and the test is about which rows change
    # between settings, not about this CPU's speed (the flag is recorded in both reports alike).
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_backend_optimization_level=0", **env)
    cmd = [
        sys.executable,
        "-m",
        "mdm_jax.numerics",
        "report",
        "--size=quick",
        f"--out={tmp_path / name}.json",
        "--fixtures=",
    ]
    return subprocess.Popen(
        cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def _finish(proc, tmp_path, name):
    out, _ = proc.communicate()
    assert proc.returncode == 0, out
    return R.load(str(tmp_path / f"{name}.json"))


@pytest.mark.slow
def test_two_reports_differ_in_exactly_the_rows_their_settings_change(tmp_path):
    # The two reports run side by side (one per core).
    procs = {
        "a": _start(tmp_path, "a"),
        "b": _start(tmp_path, "b", JAX_ENABLE_X64="1", JAX_DEFAULT_MATMUL_PRECISION="highest"),
    }
    a, b = (_finish(procs[n], tmp_path, n) for n in ("a", "b"))
    ra, rb = a["rows"], b["rows"]
    assert ra["env/x64"]["value"] is False and rb["env/x64"]["value"] is True
    assert (ra["env/default_matmul_precision"]["value"], rb["env/default_matmul_precision"]["value"]) == (
        "unset",
        "highest",
    )

    # Every section is there: every policy's draws, every variant's model rows.
    for p in draws.POLICIES:
        assert {f"cap/{p}/max", f"tail/{p}/measured", f"tokens/{p}/categorical_zipf"} <= set(ra)
    for v in arithmetic.VARIANTS:
        assert {f"model/owt_mdm_small/{v}/{m}" for m in METRICS} <= set(ra), v
    assert ra["model/present"]["value"] == "owt_mdm_small"

    # The expected differences: the two settings themselves, and the default-precision model rows
    # only if the default's measured arithmetic changed (it does on a TPU or GPU; XLA:CPU ignores
    # the setting, which the probe shows).
    expected = {"env/x64", "env/default_matmul_precision"}
    if ra["matmul/native/default"]["value"] != rb["matmul/native/default"]["value"]:
        expected |= {"matmul/native/default"} | {
            f"model/owt_mdm_small/{v}/{m}" for m in METRICS for v in ("matmul=default", "compute=bfloat16")
        }
    lines = compare.compare_reports([a, b])
    assert {ln.name for ln in lines if ln.differs} == expected
    assert len(lines) == len(ra) == len(rb)

    # The model's arithmetic is visible on any backend: the emulated one-pass bfloat16 matmul and
    # bfloat16 compute move the logits by far more than float32 rounding, the three-pass one lies
    # between, and each native setting's error matches the arithmetic the probe found for it.
    err = {v: ra[f"model/owt_mdm_small/{v}/rel_err"]["value"] for v in arithmetic.VARIANTS}
    assert err["matmul=float32"] < 1e-5
    assert err["emulated=bfloat16"] > 100 * err["matmul=float32"]
    assert err["compute=bfloat16"] > 100 * err["matmul=float32"]
    assert err["emulated=bfloat16"] > err["emulated=tensorfloat32"] > err["emulated=bfloat16_3x"]
    assert err["emulated=bfloat16_3x"] > err["matmul=float32"]
    for setting in environment.SETTINGS:
        found = ra[f"matmul/native/{setting}"]["value"]
        native = err[f"matmul={setting}"]
        like = err["matmul=float32"] if found == "float32" else err[f"emulated={found}"]
        assert like / 4 <= native <= like * 4, (setting, found, native, like)

    # The command prints the same table, marks the two rows and exits 0 (a report, not a gate).
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "mdm_jax.numerics",
            "compare",
            str(tmp_path / "a.json"),
            str(tmp_path / "b.json"),
            "--differences",
        ],
        check=True,
        cwd=tmp_path,
        capture_output=True,
        text=True,
    ).stdout
    assert "| env/x64 | equal | False | True * |" in out
    assert f"{len(expected)} differ from {tmp_path / 'a.json'} beyond their tolerance" in out


@pytest.mark.slow
def test_this_cpu_reproduces_the_committed_reports_token_ids():
    # docs/numerics/cpu_report.json is what every other backend's report is compared with: the
    # current sampling code must still produce its fixed-key token ids on this CPU, every policy (a
    # changed uniform grid or noise formula changes most of them; at most one id may flip on a
    # near-tie, as another x86-64 CPU's vectorised log may round one last bit differently).
    committed = R.load(os.path.join(ROOT, "docs", "numerics", "cpu_report.json"))["rows"]
    size = draws.FULL
    for i, p in enumerate(draws.POLICIES):
        ids = draws.same_tokens(
            rng.fold(rng.root_key(0), "same", i), p, size["zipf_rows"], size["fhs_batch"], size["fhs_len"]
        )
        for kind, values in ids.items():
            want = committed[f"tokens/{p}/{kind}"]["value"]
            assert len(values) == len(want) and sum(a != b for a, b in zip(values, want)) <= 1, (p, kind)
