"""mdm_jax.precision: caps, Prop. 5.2, the grid law, and the paper's worked numbers."""

import dataclasses
import itertools
import math

import numpy as np
import pytest
from scipy import integrate

from mdm_jax import precision as P


@pytest.mark.parametrize(
    "name,table",
    [
        ("float32-pytorch", 16.64),
        ("float32", 15.94),
        ("float16", 6.93),
        ("bfloat16", 4.85),
        ("float64", 36.04),
        ("float32-high", 31.88),
    ],
)
def test_caps_match_paper_table(name, table):
    # PyTorch's cap is 16.634 with the 1e-10 shift of MDLM's arithmetic (24 ln 2 = 16.636 without).
    assert abs(P.gumbel_cap(name) - table) < 0.01


def test_unknown_precision_lists_choices():
    with pytest.raises(ValueError, match="float32-pytorch"):
        P.policy_grid("float8")


def _truncated_gumbel_law(probs, cap):
    """P(i wins) with Gumbels truncated at `cap` and renormalised, by quadrature."""
    logits = np.log(probs)
    z = math.exp(-math.exp(-cap))  # normaliser F(cap)

    def cdf(x):
        return np.where(x >= cap, 1.0, np.exp(-np.exp(-np.minimum(x, cap))) / z)

    out = []
    for i in range(len(probs)):

        def f(g, i=i):
            dens = math.exp(-g - math.exp(-g)) / z
            others = np.prod([cdf(g + logits[i] - logits[k]) for k in range(len(probs)) if k != i])
            return dens * others

        out.append(integrate.quad(f, -10, cap, limit=400, epsabs=1e-12, epsrel=1e-9)[0])
    return np.array(out)


def test_prop52_is_the_truncated_gumbel_law():
    probs = np.array([0.6, 0.25, 0.1, 0.04, 0.01])
    for cap in (1.0, 2.5):
        np.testing.assert_allclose(
            P.prop52_law(probs, cap), _truncated_gumbel_law(probs, cap), rtol=1e-6, atol=1e-10
        )
    np.testing.assert_allclose(P.prop52_law(probs, 60.0), probs, rtol=1e-9)
    assert P.prop52_law(probs, 1.0)[0] > probs[0]  # large probabilities are amplified


def test_grid_law_matches_brute_force_on_a_coarse_grid():
    # A 2^-5 grid (32 uniforms) is enumerable: all 32^3 triples, real arithmetic, argmin E/p.
    for shift in (0.0, 1e-10):
        grid = dataclasses.replace(
            P.policy_grid("float32-pytorch" if shift else "float32"),
            d=2.0**-5,
            num_points=32,
            u_max=1 - 2.0**-5,
        )
        probs = np.array([0.9, 0.07, 0.03])
        e = grid.race_variable(np.arange(1, 33))
        wins = np.zeros(3)
        for js in itertools.product(range(32), repeat=3):
            ratios = [e[j] / p for j, p in zip(js, probs)]
            wins[int(np.argmin(ratios))] += 1
        np.testing.assert_allclose(P.grid_law(probs, grid), wins / 32**3, rtol=1e-9, atol=1e-12)


def test_measured_here_ratios():
    # 16 tokens of 1.5e-7 against "stay masked" (JAX float32): grid 0.655, Prop. 5.2 0.45.
    probs = np.array([1.5e-7] * 16 + [1 - 16 * 1.5e-7])
    grid = P.grid_law(probs, "float32")[:16].sum() / (16 * 1.5e-7)
    prop = P.prop52_law(probs, P.gumbel_cap("float32"))[:16].sum() / (16 * 1.5e-7)
    assert abs(grid - 0.655) < 0.002 and abs(prop - 0.45) < 0.005
    # MDLM's arithmetic, 16 tokens of 6e-8, 1.6e8 draws: true 153.6, grid 89.7, Prop. 5.2 56.9.
    probs = np.array([6e-8] * 16 + [1 - 16 * 6e-8])
    grid = P.grid_law(probs, "float32-pytorch")[:16].sum() * 1.6e8
    prop = P.prop52_law(probs, P.gumbel_cap("float32-pytorch"))[:16].sum() * 1.6e8
    assert abs(grid - 89.7) < 0.3 and abs(prop - 56.9) < 0.3
    # The paper's own formula, d e^-a / (1 - e^-a), a = (1 - pi) d / pi, per token.
    d, p = 2.0**-23, 1.5e-7
    a = (1 - 16 * p) * d / p
    assert (
        abs(
            P.grid_law(np.array([1.5e-7] * 16 + [1 - 16 * 1.5e-7]), "float32")[0]
            / (d * math.exp(-a) / (1 - math.exp(-a)))
            - 1
        )
        < 1e-3
    )


def test_mean_field_agrees_with_exact_sum_and_high_precision_is_exact():
    probs = np.array([1.5e-7] * 16 + [3e-6] * 4 + [1 - 16 * 1.5e-7 - 12e-6])
    exact = P.grid_law(probs, "float32")
    mf = P._mean_field(P.policy_grid("float32"), probs)
    np.testing.assert_allclose(mf[:20], exact[:20], rtol=1e-4)
    assert abs(exact.sum() - 1) < 1e-12
    for name in ("float64", "float32-high"):
        np.testing.assert_allclose(P.grid_law(probs, name), probs, rtol=1e-5)


def test_zipf_example_of_the_paper():
    # V = 50257, Zipf of entropy 7.57 nats, one step at t = 0.5 of a linear schedule:
    # Prop. 5.2 with PyTorch's cap gives unmask 0.70x / entropy 5.72 (N = 1024),
    # 0.50x / 4.34 (N = 10,000); the grid law is milder; float64 is exact.
    mu = P.zipf_with_entropy(50257, 7.57)
    assert abs(P.entropy(mu) - 7.57) < 1e-6
    s = P.original_step_stats(mu, 1024, 0.5, "linear", "float32-pytorch")
    assert abs(s["unmask_ratio_prop52"] - 0.70) < 0.005 and abs(s["entropy_prop52"] - 5.72) < 0.01
    assert s["unmask_ratio_prop52"] < s["unmask_ratio_grid"] < 1
    assert s["entropy_prop52"] < s["entropy_grid"] < s["entropy_true"]
    s = P.original_step_stats(mu, 10000, 0.5, "linear", "float32-pytorch")
    assert abs(s["unmask_ratio_prop52"] - 0.50) < 0.005 and abs(s["entropy_prop52"] - 4.34) < 0.01
    s = P.original_step_stats(mu, 10000, 0.5, "linear", "float64")
    assert abs(s["unmask_ratio_grid"] - 1) < 1e-6 and abs(s["entropy_grid"] - 7.57) < 1e-4
