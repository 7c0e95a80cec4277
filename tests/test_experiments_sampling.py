"""End-to-end runs of the experiments precision_sweep and sampler_speed at CI size (`:tiny`).

precision_sweep uses the exact i.i.d. reference model (mdm_jax/experiments/reference_models.py),
whose exact entropy and gen PPL are known, so the checks are statistical with stated tolerances
(z-scores over the samples of one fixed-seed run). bfloat16 carries the "(V+1)-way ancestral
loses entropy" assertion: a measurable float32 effect needs ~2^24 category draws per affected
token (see precision_sweep.py), far beyond a CI budget; for float32-pytorch the test checks the
grid law's prediction of the effect and that the measurement agrees with it.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, load_config
from mdm_jax import experiments, schedules
from mdm_jax.reference import head_tail as refm
from mdm_jax.sampling.ancestral import step_coefficients


def _config(name, variant):
    return load_config(f"configs/experiments/{name}.py", variant)


def _z(a, b):
    return (a["entropy"] - b["entropy"]) / math.hypot(a["entropy_se"], b["entropy_se"])


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("precision_sweep"))
    out = experiments.run(_config("precision_sweep", "tiny"), workdir)
    return workdir, out


@pytest.mark.slow
def test_precision_sweep_writes_its_report(sweep):
    workdir, out = sweep
    for f in (
        "precision_sweep.json",
        "precision_sweep_sweep.csv",
        "precision_sweep_one_step.csv",
        "summary.md",
        "entropy_vs_steps.png",
        "genppl_vs_steps.png",
        "genppl_vs_entropy.png",
        "one_step_prediction.png",
    ):
        assert os.path.getsize(os.path.join(workdir, f)) > 0, f
    with open(os.path.join(workdir, "precision_sweep.json")) as fh:
        data = json.load(fh)
    assert data["metadata"]["jax_version"] and data["metadata"]["device_kind"]
    assert len(out["findings"]) == 4 and all(plot for plot, _ in out["findings"])
    # 3 precisions x (2 ancestral variants x 2 N + 2 first-hitting variants).
    assert len(data["tables"]["sweep"]) == 3 * (2 * 2 + 2)
    assert len(data["tables"]["one_step"]) == 3 * 2
    summary = open(os.path.join(workdir, "summary.md")).read()
    assert "## Findings" in summary and "bfloat16" in summary
    assert all(sentence in summary for _, sentence in out["findings"])


@pytest.mark.slow
def test_precision_sweep_report_mode_redraws_from_the_json(sweep, tmp_path):
    """`--mode=report` in a fresh process, on a copy of the results alone: same summary.md, all plots."""
    import shutil

    workdir, _ = sweep
    copy = tmp_path / "copy"
    copy.mkdir()
    for f in ("precision_sweep.json", "summary.md"):
        shutil.copy(os.path.join(workdir, f), copy / f)
    r = subprocess.run(
        [sys.executable, "-m", "mdm_jax.main", "--mode=report", f"--workdir={copy}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert (copy / "summary.md").read_text() == open(os.path.join(workdir, "summary.md")).read()
    for f in (
        "entropy_vs_steps.png",
        "genppl_vs_steps.png",
        "genppl_vs_entropy.png",
        "one_step_prediction.png",
    ):
        assert os.path.getsize(copy / f) > 1000, f


def _rows(out):
    return {(r["sampler"], r["precision"], r["num_steps"]): r for r in out["rows"]}


@pytest.mark.slow
def test_low_precision_ancestral_loses_entropy_and_fhs_stays_put(sweep):
    _, out = sweep
    rows = _rows(out)
    n = 256
    bf, f64 = rows[("ancestral", "bfloat16", n)], rows[("ancestral", "float64", n)]
    # A capped Gumbel (bfloat16: cap 4.85) starves the tail tokens: > 8 standard errors below.
    assert _z(f64, bf) > 8.0, (bf, f64)
    assert bf["gen_ppl"] < 0.5 * f64["gen_ppl"]
    assert bf["tail_fraction"] < 0.5 * f64["tail_fraction"]
    # Factorized ancestral does not move with N, whatever the precision (|z| < 4).
    for p in ("bfloat16", "float32-pytorch", "float64"):
        assert abs(_z(rows[("factorized", p, 16)], rows[("factorized", p, n)])) < 4.0, p


@pytest.mark.slow
def test_float64_samplers_match_the_exact_model(sweep):
    _, out = sweep
    truth = out["results"]["exact"]
    for r in out["rows"]:
        if r["precision"] != "float64":
            continue
        z = (r["entropy"] - truth["entropy"]) / math.hypot(r["entropy_se"], truth["entropy_se"])
        assert abs(z) < 4.0, (r, truth)


@pytest.mark.slow
def test_float32_pytorch_effect_follows_the_grid_law(sweep):
    _, out = sweep
    rows = _rows(out)
    lo, hi = rows[("ancestral", "float32-pytorch", 16)], rows[("ancestral", "float32-pytorch", 256)]
    f64 = rows[("ancestral", "float64", 256)]
    # The law predicts a loss that grows with N and that float64 does not have...
    assert hi["pred_tail_grid"] < lo["pred_tail_grid"] < f64["pred_tail_grid"]
    assert hi["pred_entropy_grid"] < f64["pred_entropy_grid"]
    # ...and the measured entropy agrees with the prediction (4 standard errors).
    for r in (lo, hi):
        assert abs(r["entropy"] - r["pred_entropy_grid"]) < 4.0 * r["entropy_se"], r


def test_ancestral_token_law_is_exact_without_distortion_and_matches_large_n_limit():
    ref = refm.HeadTailReference(64, head=2, tail_mass=0.5, seed=1)
    _, _, _, p = step_coefficients(schedules.get("linear"), 1000)
    assert np.allclose(refm.ancestral_token_law(ref.probs, p, "true", "float64"), ref.probs)
    q64 = refm.ancestral_token_law(ref.probs, p, "grid", "float64")
    assert np.allclose(q64, ref.probs, atol=1e-6)
    # float32 at V N = 64e3 << 2^24: the tail token probabilities 0.008/k are far above 2^-23,
    # so the law stays within 1% of the truth; bfloat16 (2^-7 grid) starves the tail.
    q32 = refm.ancestral_token_law(ref.probs, p, "grid", "float32")
    assert abs(1 - q32[ref.head_ids].sum() - 0.5) < 0.005
    qbf = refm.ancestral_token_law(ref.probs, p, "prop52", "bfloat16")
    assert 1 - qbf[ref.head_ids].sum() < 0.1
    # Entropy estimate of an i.i.d. law: a uniform law over 2 tokens, L = 2 -> E[H] = log(2)/2.
    h, se = refm.expected_sequence_entropy(np.array([0.5, 0.5]), 2, num=40000, seed=0)
    assert abs(h - math.log(2) / 2) < 4 * se


def _token_law_per_token(mu, p_unmask, law, prec, num_points=16):
    """ancestral_token_law written token by token ([N, V] arrays): the grouped version must equal it."""
    body = p_unmask[:-1]
    grid_p = np.unique(np.geomspace(body.min(), body.max(), num_points))
    ratios = np.asarray(
        [refm._law(np.concatenate([q * mu, [1.0 - q]]), law, prec)[:-1] / (q * mu) for q in grid_p]
    )
    r = np.stack([np.interp(np.log(body), np.log(grid_p), ratios[:, v]) for v in range(len(mu))], axis=1)
    step = body[:, None] * mu[None, :] * r
    stay = np.clip(1.0 - step.sum(axis=1), 0.0, 1.0)
    alive = np.concatenate([[1.0], np.cumprod(stay)[:-1]])
    q = (alive[:, None] * step).sum(axis=0) + np.prod(stay) * refm._law(mu, law, prec)
    return q / q.sum()


@pytest.mark.parametrize("prec", ["float32", "float32-pytorch"])
def test_ancestral_token_law_grouping_equals_per_token_computation(prec):
    # Grouping tokens of equal probability must not change the law: a head + tail law (5 groups)
    # and a law whose 300 probabilities are all distinct (300 groups), at a V N where float32 bites.
    _, _, _, p = step_coefficients(schedules.get("linear"), 4096)
    ref = refm.HeadTailReference(3000, head=4, tail_mass=0.5, seed=2)
    g = np.random.default_rng(0)
    distinct = g.dirichlet(np.full(300, 0.3))
    for mu in (ref.probs, distinct):
        fast = refm.ancestral_token_law(mu, p, "grid", prec, num_points=16)
        slow = _token_law_per_token(mu, p, "grid", prec)
        assert np.allclose(fast, slow, rtol=1e-10, atol=1e-15)
        assert not np.allclose(fast, mu, rtol=1e-3)  # the float32 distortion is really there


@pytest.mark.slow
def test_sampler_speed_tiny(tmp_path):
    workdir = str(tmp_path)
    config = _config("sampler_speed", "tiny")
    out = experiments.run(config, workdir)
    for f in (
        "sampler_speed.json",
        "sampler_speed_mdm.csv",
        "sampler_speed_cost_model.csv",
        "sampler_speed_arm.csv",
        "summary.md",
        "time_vs_steps.png",
        "speedup_vs_steps.png",
        "arm_cache_vs_length.png",
    ):
        assert os.path.getsize(os.path.join(workdir, f)) > 0, f
    rows = out["rows"]
    b, seq_len = config.sampling.batch_size, 8
    # Timings differ between machines and runs; the work each sampler did does not: network calls
    # (first-hitting: exactly L; cached ancestral: the first step's, then one after each step that
    # changed a token, so at most min(N, B L + 1)) and categories drawn.
    assert {(r["vocab"], r["sampler"], r["num_steps"]) for r in rows} == {
        (256, "first_hitting", seq_len),
        (4096, "first_hitting", seq_len),
        *((256, "ancestral", n) for n in (8, 64, 512)),
        *((4096, "ancestral", n) for n in (8, 64)),
    }
    for r in rows:
        assert r["seconds_per_sequence"] > 0
        if r["sampler"] == "first_hitting":
            assert r["nfe"] == seq_len and r["draws"] == b * seq_len * r["vocab"]
        else:
            assert 1 <= r["nfe"] <= min(r["num_steps"], b * seq_len + 1)
            assert r["draws"] == r["num_steps"] * b * seq_len * (r["vocab"] + 1)
    for fit in out["fits"].values():
        assert (
            fit["t_net_s"] >= 0
            and fit["t_cat_s_per_draw"] >= 0
            and fit["t_net_s"] + fit["t_cat_s_per_draw"] > 0
        )
    # The fitted cost model (non-negative t_net, t_cat) predicts more time, hence a larger speed-up,
    # for every further step count: expected network calls and draws both grow with N.
    for v in (256, 4096):
        preds = sorted((p for p in out["predictions"] if p["vocab"] == v), key=lambda p: p["num_steps"])
        assert [p["num_steps"] for p in preds] == ([8, 64, 512, 1000] if v == 256 else [8, 64, 1000])
        assert [p["measured"] for p in preds][-1] is False
        speedups = [p["model_speedup"] for p in preds]
        assert all(a < b for a, b in zip(speedups, speedups[1:])), speedups
    assert [a["seq_len"] for a in out["arm"]] == [16, 64]
    assert all(a["cached_s_per_sequence"] > 0 and a["uncached_s_per_sequence"] > 0 for a in out["arm"])
    # Redrawn from the JSON alone (`--mode=report`): the same summary.
    summary = open(os.path.join(workdir, "summary.md")).read()
    os.remove(os.path.join(workdir, "summary.md"))
    drawn = experiments.report(workdir)
    assert open(drawn["summary"]).read() == summary
    assert drawn["findings"] == out["findings"]
