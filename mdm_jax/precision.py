"""Analysis of finite-precision categorical sampling (docs/paper.md section 4), in float64 numpy.

A Gumbel-max draw argmax_i (log p_i + g_i), g = -log E, E = -log u, is the exponential race
argmin_i E_i / p_i. A float uniform lives on a grid, so E has a smallest positive value E_min
(u just below 1) and g a cap M = -log E_min. Two laws of the resulting draw:

* `prop52_law(probs, cap)`: the paper's Prop. 5.2, which assumes the Gumbel is *truncated* at M
  and renormalised.
* `grid_law(probs, precision)`: the law of the actual draw, where the uniform is one of K grid
  points of equal probability. The Gumbel mass beyond the cap is not removed but *censored*
  onto the top grid points; Prop. 5.2 overstates the distortion (docs/paper.md "Measured here").

Every policy is described by its grid seen from u = 1: grid point j = 1..K (probability 1/K each)
has distance v_j = j d from 1 and race variable E_j = E(v_j):
  float32 / float64 / bfloat16 / float16 (JAX low mode): u = k 2^-nmant, u = 0 -> tiny; E = -log u.
  float32-high: the small end of x = high + 2^-23 low is a grid of spacing 2^-46, E = -log1p(-x)
      (the bulk's float32 rounding and the 2^-46-probability point x = tiny are ignored).
  float32-pytorch: u = k 2^-24 and E = 1e-10 - log(u + 1e-10) with u + 1e-10 rounded to float32.

Exactness of `grid_law`:
  bfloat16, float16 (K <= 1024): exact. Every category's score log p + g is enumerated over all K
      uniforms with JAX's own dtype arithmetic (the same ops as `jax.random.gumbel`), and ties go
      to the first index as in `argmax`; only XLA op-fusion differences could change a rounding.
  float32, float32-pytorch (few distinct probabilities): exact over the grid of uniforms, with
      real arithmetic after the uniform (the float32 rounding of g and of log p + g, relative
      2^-24, and exact ties between equal probabilities, probability O(d^2), are ignored).
      P(i) = (1/K) sum_j prod_{k != i} P(E_k > E_j p_k / p_i), summed until terms vanish.
  float64, float32-high: the same sum; a category whose sum would need more than 2^25 terms has
      p > 2^25 d / 40, where the grid changes its probability by less than d/p ~ 1e-6: it gets a
      share of the remaining mass in proportion to p.
  Many distinct probabilities (> 64 groups, e.g. a GPT-2 vocabulary): "mean field": the
      competitors of category i act as one continuous race of rate 1 - p_i (their own grid is
      ignored), while i's own grid is exact: P(i) = (1/K) sum_j exp(-(1 - p_i) E_j / p_i), the
      "Measured here" formula. The error is of the order of the censored competitor mass.
  The largest category, when it is alone at that probability, gets 1 - sum(others).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from scipy.optimize import brentq

from mdm_jax import schedules
from mdm_jax.sampling import PRECISIONS

__all__ = [
    "PolicyGrid",
    "policy_grid",
    "gumbel_cap",
    "prop52_law",
    "grid_law",
    "original_step_stats",
    "entropy",
    "zipf_with_entropy",
    "PRECISIONS",
]

_MAX_TERMS = 2**25  # longest exact grid sum per group (a full float32-pytorch grid is 2^24)
_MAX_GROUPS = 64  # more distinct probabilities than this -> mean-field grid law
_MAX_ENUM = 4096  # bfloat16/float16 exact enumeration up to this many categories
_TAIL = 1e-18  # grid sums stop when a term falls below this fraction of the sum


@dataclasses.dataclass(frozen=True)
class PolicyGrid:
    """The uniform grid of a policy seen from u = 1 (see the module docstring)."""

    precision: str
    dtype: str
    d: float  # grid spacing next to u = 1 (probability of each grid point)
    num_points: int  # K = 1/d grid points
    u_max: float  # largest uniform (1 - d)
    e_shift: float  # 1e-10 for the PyTorch arithmetic, else 0
    tiny: float  # what u = 0 becomes (JAX: the dtype's smallest normal)

    def race_variable(self, j):
        """E_j for grid points j = 1..K (float64 array)."""
        j = np.asarray(j, np.float64)
        v = j * self.d
        if self.e_shift:
            u32 = (1.0 - v).astype(np.float32) + np.float32(self.e_shift)  # float32 rounding
            return self.e_shift - np.log(u32.astype(np.float64))
        with np.errstate(divide="ignore"):
            e = -np.log1p(-v)
        return np.where(j >= self.num_points, -math.log(self.tiny), e)

    def survival(self, e):
        """P(E > e) for this grid (e >= 0, float64 array)."""
        e = np.asarray(e, np.float64)
        y = -np.expm1(self.e_shift - e)  # E > e  <=>  v > y
        # Points j < K by their distance from 1; the last one (u = 0) by its finite E_K.
        below = np.minimum(np.floor(np.maximum(y, 0.0) / self.d), self.num_points - 1)
        last = self.race_variable(self.num_points)
        return np.clip(1.0 - below * self.d - (e >= last) * self.d, 0.0, 1.0)

    @property
    def cap(self) -> float:
        """M = -log(E_min): the largest Gumbel value the policy can produce (E_min at j = 1)."""
        return float(-np.log(self.race_variable(1)))


def policy_grid(precision: str) -> PolicyGrid:
    tiny32, tiny64 = float(np.finfo(np.float32).tiny), float(np.finfo(np.float64).tiny)
    table = {
        "float64": ("float64", 52, 0.0, tiny64),
        "float32": ("float32", 23, 0.0, tiny32),
        "float32-high": ("float32", 46, 0.0, tiny32),
        "bfloat16": ("bfloat16", 7, 0.0, 2.0**-126),
        "float16": ("float16", 10, 0.0, 2.0**-14),
        "float32-pytorch": ("float32", 24, 1e-10, 0.0),
    }
    if precision not in table:
        raise ValueError(f"unknown sampling precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    dtype, bits, shift, tiny = table[precision]
    d = 2.0**-bits
    return PolicyGrid(precision, dtype, d, 2**bits, 1.0 - d, shift, tiny or 1e-10)


def gumbel_cap(precision: str) -> float:
    """The cap M of a policy (15.94 for JAX float32, 16.63 for PyTorch's 24-bit float32, ...)."""
    return policy_grid(precision).cap


def entropy(p) -> float:
    p = np.asarray(p, np.float64)
    p = p[p > 0] / p.sum()
    return float(-(p * np.log(p)).sum())


def zipf_with_entropy(vocab: int, target: float) -> np.ndarray:
    """Zipf law p_k ~ k^-s over `vocab` tokens with entropy `target` nats (s found by bisection)."""
    logk = np.log(np.arange(1, vocab + 1, dtype=np.float64))

    def law(s):
        w = np.exp(-s * (logk - logk[0]))
        return w / w.sum()

    s = brentq(lambda s: entropy(law(s)) - target, 1e-6, 10.0, xtol=1e-12)
    return law(s)


# --- Prop. 5.2: truncated Gumbel -----------------------------------------------------------


def prop52_law(probs, cap: float) -> np.ndarray:
    """The law of Gumbel-max with noise truncated at `cap` (Prop. 5.2 of the paper).

    Sort pi ascending (pi_0 = 0), S_i = sum_{k>=i} pi_k, K categories:
    pi'_n = pi_n sum_{i<=n} beta(i), beta(i) = [exp((K+1-i - S_i/pi_i) e^-M)
                                                 - exp((K+1-i - S_i/pi_{i-1}) e^-M)] / S_i.
    Zero probabilities stay zero. Returned in the input order.
    """
    p = np.asarray(probs, np.float64)
    p = p / p.sum()
    order = np.argsort(p, kind="stable")
    ps = p[order]
    k = len(ps)
    i = np.arange(1, k + 1, dtype=np.float64)
    s = np.cumsum(ps[::-1])[::-1]  # S_i
    prev = np.concatenate([[0.0], ps[:-1]])  # pi_{i-1}
    em = math.exp(-cap)
    with np.errstate(divide="ignore", invalid="ignore"):
        a = (k + 1 - i - np.where(ps > 0, s / ps, np.inf)) * em
        b = (k + 1 - i - np.where(prev > 0, s / prev, np.inf)) * em
        # exp(a) - exp(b) = exp(a) (1 - exp(b - a)), accurate when a ~ b.
        beta = np.where(np.isfinite(a), np.exp(a) * -np.expm1(np.minimum(b - a, 0.0)), 0.0) / s
    beta = np.nan_to_num(beta)
    out = np.empty_like(p)
    out[order] = ps * np.cumsum(beta)
    return out


# --- grid law --------------------------------------------------------------------------------


def _grid_sum(grid: PolicyGrid, p_i, factors):
    """(1/K) sum_j prod_(p_k, c_k) survival(E_j p_k / p_i)^c_k, or None past _MAX_TERMS terms."""
    # The terms decay like exp(-E_j rate / p_i): skip sums that could not finish in time.
    rate = sum(c_k * p_k for p_k, c_k in factors)
    if rate > 0 and 45.0 * p_i / (rate * grid.d) > _MAX_TERMS:
        return None
    total, j0, chunk = 0.0, 1, 1024
    while j0 <= grid.num_points:
        j1 = min(grid.num_points, j0 + chunk - 1)
        if j1 > _MAX_TERMS:
            return None
        e = grid.race_variable(np.arange(j0, j1 + 1))
        log_term = np.zeros_like(e)
        for p_k, c_k in factors:
            with np.errstate(divide="ignore"):
                log_term += c_k * np.log(grid.survival(e * (p_k / p_i)))
        terms = np.exp(log_term)
        total += terms.sum()
        if terms[-1] <= _TAIL * total:
            break
        j0, chunk = j1 + 1, min(chunk * 4, 2**22)
    return total * grid.d


def _mean_field(grid: PolicyGrid, p) -> np.ndarray:
    """(1/K) sum_j exp(-(1 - p_i) E_j / p_i) for every p_i (vectorised)."""
    out = np.zeros_like(p)
    a = np.where(p > 0, (1.0 - p) / np.maximum(p, 1e-300), np.inf)
    shift = np.exp(-a * grid.e_shift) if grid.e_shift else 1.0
    ad = a * grid.d
    smooth = (ad < 0.05) & (p > 0)
    # Euler-Maclaurin for slowly varying (1 - v)^a: p - d/2 + a d^2/12 (+ O(a^3 d^4)).
    out = np.where(smooth, (1.0 / (a + 1.0) - grid.d / 2 + a * grid.d**2 / 12) * shift, out)
    steep = np.nonzero((~smooth) & (p > 0))[0]
    if steep.size:
        jmax = int(min(grid.num_points, math.ceil(45.0 / max(ad[steep].min(), 1e-300)) + 2))
        j = np.arange(1, jmax + 1)
        e = grid.race_variable(j)
        for s0 in range(0, steep.size, 2048):
            idx = steep[s0 : s0 + 2048]
            out[idx] = np.exp(-a[idx, None] * e[None, :]).sum(axis=1) * grid.d
    return out


def mean_field_weights(probs, precision) -> np.ndarray:
    """The fast, vectorised mean-field win weights that `grid_law` uses for large vocabularies.

    For each p_i: the grid sum (1/K) sum_j exp(-(1 - p_i) E_j / p_i), i.e. the probability that
    category i wins against a continuum of competitors of total mass 1 - p_i. Cheap enough to call
    once per sampler step in a sweep, where the exact `grid_law` series is too slow.
    """
    grid = precision if isinstance(precision, PolicyGrid) else policy_grid(precision)
    return _mean_field(grid, np.asarray(probs, dtype=np.float64))


def _enumerated_low_precision(probs, grid: PolicyGrid) -> np.ndarray:
    """Exact law for bfloat16/float16 by enumerating all K uniforms with JAX's dtype arithmetic."""
    dtype = jnp.dtype(grid.dtype)
    with np.errstate(divide="ignore"):
        logits32 = np.log(np.asarray(probs, np.float64)).astype(np.float32)
    u = jnp.maximum(
        jnp.arange(grid.num_points, dtype=jnp.float32).astype(dtype) * jnp.asarray(grid.d, dtype),
        jnp.asarray(jnp.finfo(dtype).tiny, dtype),
    )
    g = -jnp.log(-jnp.log(u))  # as jax.random.gumbel
    scores = np.asarray(
        (jnp.asarray(logits32).astype(dtype)[:, None] + g[None, :]).astype(jnp.float32), np.float64
    )  # [C, K], exact values
    c = len(probs)
    ordered = np.sort(scores, axis=1)
    out = np.zeros(c)
    for i in range(c):
        vals, counts = np.unique(scores[i], return_counts=True)
        log_w = np.log(counts / grid.num_points)
        for k in range(c):
            if k == i:
                continue
            side = "left" if k < i else "right"  # argmax: earlier index wins ties
            with np.errstate(divide="ignore"):
                log_w += np.log(np.searchsorted(ordered[k], vals, side=side) / grid.num_points)
        out[i] = np.exp(log_w).sum()
    return out


def grid_law(probs, precision) -> np.ndarray:
    """The law of a categorical draw of `probs` under `precision` (see the module docstring).

    `precision` is a policy name or a `PolicyGrid` (e.g. a coarser grid, for tests).
    """
    grid = precision if isinstance(precision, PolicyGrid) else policy_grid(precision)
    p = np.asarray(probs, np.float64)
    p = p / p.sum()
    if grid.dtype in ("bfloat16", "float16") and len(p) <= _MAX_ENUM:
        return _enumerated_low_precision(p, grid)
    groups, inverse, counts = np.unique(p, return_inverse=True, return_counts=True)
    win = np.full(len(groups), np.nan)  # per-member win probability of each group
    top = len(groups) - 1
    complement = counts[top] == 1 and groups[top] > 0
    win[groups == 0] = 0.0
    if len(groups) > _MAX_GROUPS:
        win = _mean_field(grid, groups)
        win[groups == 0] = 0.0
    else:
        for g, p_g in enumerate(groups):
            if p_g == 0 or (complement and g == top):
                continue
            factors = [
                (p_h, counts[h] - (h == g))
                for h, p_h in enumerate(groups)
                if p_h > 0 and counts[h] - (h == g) > 0
            ]
            s = _grid_sum(grid, p_g, factors)
            if s is not None:
                win[g] = s
    if complement:
        win[top] = np.nan
    rest = np.isnan(win)
    if rest.any():  # the largest probabilities share what is left, in proportion to p
        left = 1.0 - np.sum(np.where(rest, 0.0, win) * counts)
        win[rest] = left * groups[rest] / np.sum(groups[rest] * counts[rest])
    return win[inverse]


# --- one step of the original sampler --------------------------------------------------------


def original_step_stats(mu, num_steps: int, t: float, schedule, precision: str, *, grid_law_fn=None) -> dict:
    """Unmask probability and token entropy of one ancestral step t -> t - 1/N (true vs laws).

    The step's (V+1)-way law is [(alpha_s - alpha_t) mu, 1 - alpha_s] / (1 - alpha_t). Returns
    the unmask probability and the entropy (nats) of the unmasked token's law under the true
    law, Prop. 5.2 with the policy's cap, and the grid law, plus the ratios to the truth.
    `grid_law_fn(probs, precision)` replaces `grid_law` (e.g. a faster approximation of it).
    """
    grid_law_fn = grid_law if grid_law_fn is None else grid_law_fn
    sched = schedules.get(schedule) if isinstance(schedule, str) else schedule
    s = t - 1.0 / num_steps
    with jax.enable_x64(True):
        a_t = float(sched.alpha(jnp.asarray(t, jnp.float64)))
        a_s = float(sched.alpha(jnp.asarray(max(s, 0.0), jnp.float64)))
    mu = np.asarray(mu, np.float64)
    mu = mu / mu.sum()
    probs = np.concatenate([(a_s - a_t) / (1 - a_t) * mu, [(1 - a_s) / (1 - a_t)]])
    cap = gumbel_cap(precision)
    out = dict(
        precision=precision,
        cap=cap,
        num_steps=int(num_steps),
        t=float(t),
        unmask_true=float(1.0 - probs[-1]),
        entropy_true=entropy(mu),
    )
    for name, law in (("prop52", prop52_law(probs, cap)), ("grid", grid_law_fn(probs, precision))):
        out[f"unmask_{name}"] = float(law[:-1].sum())
        out[f"unmask_ratio_{name}"] = float(out[f"unmask_{name}"] / out["unmask_true"])
        out[f"entropy_{name}"] = entropy(law[:-1])
    return out
