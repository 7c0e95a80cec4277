"""An exact reference model for the precision experiments: i.i.d. tokens from a head + tail law.

Every position is an independent draw from `probs` over V tokens: a few "head" tokens hold
1 - tail_mass and the other V - head tokens share tail_mass equally. For this joint everything a
sampler needs is exact and cheap, so a finite-precision effect cannot hide behind model error:
  * the MDM denoiser: the conditional of a masked position given the others is `probs` itself
    (time-free, context-free);
  * the ARM (for generative perplexity): every conditional is `probs` too;
  * what a sampler *should* produce: i.i.d. `probs`; and what the ancestral sampler produces
    under a finite-precision law, position by position (`ancestral_token_law`), since positions
    do not interact.
The tail is what the paper's effect acts on: in an ancestral step with k steps left a tail token
has probability tail_mass / ((V - head) k) against the mask class, which float32 under-samples
once that falls near the 2^-24 grid of its uniforms (`mdm_jax.precision`).

`mdm_jax.reference.joint` holds the other reference: an enumerable joint with dependencies between
positions, for the samplers' own exactness tests.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

from mdm_jax import precision as precision_lib

__all__ = [
    "HeadTailReference",
    "ancestral_token_law",
    "fast_grid_law",
    "one_step_stats",
    "expected_sequence_entropy",
    "generative_perplexity_of_law",
]


class HeadTailReference:
    """i.i.d. tokens from `probs` (float64 [V]); mask id V. Methods are jittable closures.

    Build one object per run and reuse `denoise_fn` / `arm_logits_fn` (the same function objects),
    so the samplers' compile caches hit.
    """

    def __init__(self, vocab: int, head: int = 4, tail_mass: float = 0.5, seed: int = 0):
        if not 0 < head < vocab:
            raise ValueError(f"reference model: need 0 < head < vocab, got head={head}, vocab={vocab}")
        if not 0.0 <= tail_mass < 1.0:
            raise ValueError(f"reference model: tail_mass must be in [0, 1), got {tail_mass}")
        rng = np.random.default_rng(seed)
        self.V = int(vocab)
        # Head weights from a Dirichlet (distinct values), head tokens at random ids.
        head_p = rng.dirichlet(np.full(head, 2.0)) * (1.0 - tail_mass)
        probs = np.full(vocab, tail_mass / (vocab - head))
        self.head_ids = rng.choice(vocab, size=head, replace=False)
        probs[self.head_ids] = head_p
        self.probs = probs / probs.sum()
        self.tail_mass = float(tail_mass)
        self.head = int(head)
        self._logits = jnp.asarray(np.log(self.probs), jnp.float32)
        self.denoise_fn = self._denoise
        self.arm_logits_fn = self._arm_logits

    @property
    def bos_id(self) -> int:
        return self.V

    def _denoise(self, tokens, t):
        del t  # the exact denoiser of an i.i.d. joint is time- and context-free
        return jnp.broadcast_to(self._logits, tokens.shape + (self.V,))

    def _arm_logits(self, inputs):
        return jnp.broadcast_to(self._logits, inputs.shape + (self.V,))

    def sample(self, seed: int, num: int, length: int) -> np.ndarray:
        """Exact i.i.d. samples (numpy), the ground truth samplers are compared with."""
        g = np.random.default_rng(seed)
        return g.choice(self.V, size=(num, length), p=self.probs).astype(np.int32)

    def describe(self) -> dict:
        return {
            "vocab": self.V,
            "head": self.head,
            "tail_mass": self.tail_mass,
            "tail_token_prob": float(self.tail_mass / (self.V - self.head)),
            "entropy": precision_lib.entropy(self.probs),
        }


FAST_GRID = ("float64", "float32", "float32-high", "float32-pytorch")


def fast_grid_law(probs, prec: str) -> np.ndarray:
    """The grid law of `prec`, fast: mean field for the 32/64-bit policies, exact otherwise.

    `precision.grid_law` sums the exact grid series for every group of equal probabilities,
    which takes tens of seconds per call for a float32 grid of 2^23 points; its mean-field form
    (the category's own grid exact, its competitors a continuous race: docs/paper.md "Measured
    here") agrees with it to ~1e-5 relative here and is vectorised. bfloat16/float16 grids are
    so coarse that the competitors' grid matters: those use the exact (enumerated) law.
    """
    p = np.asarray(probs, np.float64)
    p = p / p.sum()
    if prec not in FAST_GRID:
        return precision_lib.grid_law(p, prec)
    # The exact grid_law series is too slow per step of a sweep: use its vectorised mean-field law.
    w = precision_lib.mean_field_weights(p, prec)
    top = int(np.argmax(p))
    w[top] = max(0.0, 1.0 - (w.sum() - w[top]))  # the largest category takes the rest, as grid_law
    return w


def _law(probs, law: str, prec: str) -> np.ndarray:
    if law == "true":
        return np.asarray(probs, np.float64) / np.sum(probs)
    if law == "grid":
        return fast_grid_law(probs, prec)
    if law == "prop52":
        return precision_lib.prop52_law(probs, precision_lib.gumbel_cap(prec))
    raise ValueError(f"unknown law {law!r}: use true, grid or prop52")


def ancestral_token_law(mu, p_unmask, law: str, prec: str, num_points: int = 24) -> np.ndarray:
    """The law of the token an ancestral run leaves at one position of an i.i.d. model.

    p_unmask[i] is step i's unmask probability (alpha_s - alpha_t)/(1 - alpha_t) (the last one
    is 1). Each step draws the (V+1)-way law [p mu, 1 - p] under `law` ("true", "grid": the
    exact finite-precision law of `prec`, "prop52": the paper's truncated-Gumbel law); the
    position stays masked with the law's mask share. The finite-precision laws are evaluated at
    `num_points` log-spaced p and interpolated in log p (the per-token distortion ratio is smooth
    in p), so long runs cost a few dozen law evaluations, not N.
    Returns q [V], the distribution of the final token.
    """
    mu = np.asarray(mu, np.float64)
    mu = mu / mu.sum()
    p = np.asarray(p_unmask, np.float64)
    if law == "true":
        return mu
    body = p[:-1]
    lo, hi = float(body.min()) if body.size else 1.0, float(body.max()) if body.size else 1.0
    grid_p = np.unique(np.geomspace(lo, hi, num_points)) if body.size else np.array([1.0])
    ratios = []
    for q in grid_p:
        w = _law(np.concatenate([q * mu, [1.0 - q]]), law, prec)[:-1]
        with np.errstate(divide="ignore", invalid="ignore"):
            ratios.append(np.where(mu > 0, w / (q * mu), 0.0))
    ratios = np.asarray(ratios)  # [points, V]
    if body.size:
        # Tokens with the same probability and the same distortion ratios behave identically:
        # work on those groups (a head + tail law has a handful), not on [N, V] arrays.
        groups, inverse = np.unique(np.vstack([mu[None, :], ratios]), axis=1, return_inverse=True)
        inverse = inverse.reshape(-1)
        mu_g, ratios_g = groups[0], groups[1:]
        size_g = np.bincount(inverse, minlength=groups.shape[1])
        if len(grid_p) == 1:
            r = np.broadcast_to(ratios_g[0], (len(body), len(mu_g)))
        else:
            x = np.log(grid_p)
            r = np.stack([np.interp(np.log(body), x, ratios_g[:, g]) for g in range(len(mu_g))], axis=1)
        step = body[:, None] * mu_g[None, :] * r  # [N-1, groups] win prob per token
        stay = np.clip(1.0 - step @ size_g, 0.0, 1.0)
        alive = np.concatenate([[1.0], np.cumprod(stay)[:-1]])  # P(masked when step i starts)
        q = (alive[:, None] * step).sum(axis=0)[inverse]
        left = float(np.prod(stay))
    else:
        q, left = np.zeros_like(mu), 1.0
    # The last step has no mask class: a V-way draw of mu under the same precision.
    q = q + left * _law(mu, law, prec)
    return q / q.sum()


def expected_sequence_entropy(q, length: int, num: int = 20000, seed: int = 0) -> tuple[float, float]:
    """(mean, standard error) of the per-sequence unigram entropy of i.i.d. q-sequences (Monte Carlo)."""
    g = np.random.default_rng(seed)
    x = g.choice(len(q), size=(num, length), p=np.asarray(q) / np.sum(q))
    x.sort(axis=1)
    # Run lengths of equal ids in each sorted row are the counts of each distinct id.
    change = np.ones_like(x, dtype=bool)
    change[:, 1:] = x[:, 1:] != x[:, :-1]
    idx = np.flatnonzero(change.ravel())
    counts = np.diff(np.append(idx, x.size))
    rows = idx // length
    c = counts / length
    h = np.bincount(rows, weights=-c * np.log(c), minlength=num)
    return float(h.mean()), float(h.std(ddof=1) / math.sqrt(num))


def generative_perplexity_of_law(q, probs) -> float:
    """exp(E_q[-log probs]): the gen PPL (under the exact ARM) of i.i.d. q-samples, in expectation."""
    q = np.asarray(q, np.float64)
    with np.errstate(divide="ignore"):
        nll = -np.log(np.asarray(probs, np.float64))
    return float(np.exp(np.sum(np.where(q > 0, q * nll, 0.0))))


def one_step_stats(mu, num_steps: int, t: float, schedule, prec: str) -> dict:
    """One ancestral step t -> t - 1/N: `precision.original_step_stats` with the grid law from
    `fast_grid_law` (the exact series there is too slow for a sweep over many N)."""
    return precision_lib.original_step_stats(mu, num_steps, t, schedule, prec, grid_law_fn=fast_grid_law)
