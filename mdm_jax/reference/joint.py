"""Exact reference models whose distributions can be enumerated, for statistical sampler tests.

A `ReferenceJoint` is an arbitrary (random, fixed-seed) distribution over all V^L sequences of a
tiny vocabulary. From it:
  * `denoise_fn(x, t)`: the exact, time-free MDM denoiser: at every masked position the
    conditional law of that token given all observed (unmasked) positions, as logits [B, L, V];
  * `arm_logits_fn(inputs)` / `arm_step_fn(state, tok, pos)`: the exact autoregressive model
    (conditionals of x_p given x_<p) in the BOS / shift-right convention of
    `mdm_jax.sampling.autoregressive` (full causal form and KV-"cached" form, whose state is the
    prefix seen so far);
  * `marginals()` and `product_of_marginals()`: what an N = 1 ancestral step samples.
All are jittable closures over constant arrays; build one object per test module and reuse its
methods (same function objects, so the samplers' compile caches hit).
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats

LOG_FLOOR = 1e-30


class ReferenceJoint:
    def __init__(self, vocab: int = 3, length: int = 3, seed: int = 0, concentration: float = 0.7):
        self.V, self.L = vocab, length
        rng = np.random.default_rng(seed)
        self.probs = rng.dirichlet(np.full(vocab**length, concentration))  # float64 [S]
        self.probs = np.maximum(self.probs, 1e-4)
        self.probs /= self.probs.sum()
        # seqs[s] = base-V digits of s, most significant first.
        self.seqs = np.array(np.unravel_index(np.arange(vocab**length), (vocab,) * length)).T
        self._probs_j = jnp.asarray(self.probs, jnp.float32)
        self._onehot = jax.nn.one_hot(jnp.asarray(self.seqs), vocab, dtype=jnp.float32)  # [S, L, V]
        self._seqs_j = jnp.asarray(self.seqs, jnp.int32)
        self.denoise_fn = self._denoise
        self.arm_logits_fn = self._arm_logits
        self.arm_step_fn = self._arm_step

    # --- enumeration helpers ---------------------------------------------------------------
    def index(self, tokens) -> np.ndarray:
        """Sequence ids (base-V numbers) of int[N, L] samples."""
        tokens = np.asarray(tokens)
        return np.ravel_multi_index(tuple(tokens.T), (self.V,) * self.L)

    def marginals(self) -> np.ndarray:
        return np.einsum("s,slv->lv", self.probs, np.asarray(self._onehot, np.float64))

    def product_of_marginals(self) -> np.ndarray:
        m = self.marginals()
        return np.prod(m[np.arange(self.L)[None, :], self.seqs], axis=1)

    def conditional_joint(self, init, mask_id) -> np.ndarray:
        """The joint restricted to sequences that agree with the set positions of `init` [L]."""
        init = np.asarray(init)
        ok = np.all((init[None, :] == mask_id) | (self.seqs == init[None, :]), axis=1)
        p = self.probs * ok
        return p / p.sum()

    # --- exact models ----------------------------------------------------------------------
    def _cond_logits(self, weights):
        # weights [B, S] -> per-position token probabilities [B, L, V] -> logits.
        p = jnp.einsum("bs,slv->blv", weights, self._onehot)
        p = p / jnp.sum(p, axis=-1, keepdims=True)
        return jnp.log(jnp.maximum(p, LOG_FLOOR))

    def _denoise(self, x, t):
        del t  # the exact denoiser E[x_0 | x_t] is time-free
        mask_id = self.V
        agree = (x[:, None, :] == mask_id) | (x[:, None, :] == self._seqs_j[None, :, :])  # [B,S,L]
        w = self._probs_j[None, :] * jnp.all(agree, axis=-1).astype(jnp.float32)
        return self._cond_logits(w)

    def _prefix_weights(self, prefix, p):
        """Weights of sequences agreeing with prefix[:, :p] (p may be traced)."""
        pos = jnp.arange(self.L)
        agree = (pos[None, None, :] >= p) | (prefix[:, None, :] == self._seqs_j[None, :, :])
        return self._probs_j[None, :] * jnp.all(agree, axis=-1).astype(jnp.float32)

    def _arm_logits(self, inputs):
        # inputs = [bos, x_0, ..., x_{L-2}]; output p is the law of x_p given x_<p.
        prefix = jnp.concatenate([inputs[:, 1:], inputs[:, :1]], axis=1)  # x_0..x_{L-2}, junk
        outs = []
        for p in range(self.L):
            # p = 0 conditions on nothing (kept out of XLA's constant folder).
            w = (
                jnp.broadcast_to(self._probs_j, (inputs.shape[0], len(self.probs)))
                if p == 0
                else self._prefix_weights(prefix, p)
            )
            outs.append(self._cond_logits(w)[:, p])
        return jnp.stack(outs, axis=1)

    def init_arm_state(self, batch_size):
        return jnp.zeros((batch_size, self.L), jnp.int32)

    def _arm_step(self, state, tok, pos):
        # state: the prefix seen so far (the "KV cache"); input at pos p is x_{p-1} (BOS at 0).
        write = (jnp.arange(self.L) == pos - 1)[None, :]  # nothing written at pos 0
        state = jnp.where(write, tok[:, None], state)
        w = self._prefix_weights(state, pos)
        logits = jax.lax.dynamic_index_in_dim(self._cond_logits(w), pos, axis=1, keepdims=False)
        return logits, state


def chisquare_pvalue(observed_ids, expected_probs, min_expected: float = 5.0) -> float:
    """Pearson chi-square p-value of sample ids against a law; bins with small expectation pooled."""
    n = len(observed_ids)
    counts = np.bincount(np.asarray(observed_ids), minlength=len(expected_probs)).astype(float)
    exp = np.asarray(expected_probs, float) * n
    if np.any((exp == 0) & (counts > 0)):
        return 0.0
    big = exp >= min_expected
    obs_b = list(counts[big]) + ([counts[~big].sum()] if (~big).any() else [])
    exp_b = list(exp[big]) + ([exp[~big].sum()] if (~big).any() else [])
    obs_b, exp_b = np.array(obs_b), np.array(exp_b)
    keep = exp_b > 0
    return float(stats.chisquare(obs_b[keep], exp_b[keep] * obs_b[keep].sum() / exp_b[keep].sum()).pvalue)


# --- exact laws of the approximate samplers (enumerated over partially masked states) --------


def _conditionals(ref: ReferenceJoint, x) -> np.ndarray:
    """[L, V] law of each position given the unmasked positions of state x (numpy, float64)."""
    x = np.asarray(x)
    ok = np.all((x[None, :] == ref.V) | (ref.seqs == x[None, :]), axis=1)
    w = ref.probs * ok
    p = np.einsum("s,slv->lv", w, np.asarray(ref._onehot, np.float64))
    return p / p.sum(axis=1, keepdims=True)


def _finish(ref, dist) -> np.ndarray:
    out = np.zeros(ref.V**ref.L)
    for x, p in dist.items():
        assert ref.V not in x, "a mask was left"
        out[ref.index(np.array([x]))[0]] += p
    return out


def ancestral_law(ref: ReferenceJoint, p_unmask, init=None) -> np.ndarray:
    """Exact law of the ancestral sampler with per-step unmask probabilities `p_unmask`.

    Each masked position independently stays masked (1 - p) or takes token v (p mu_l(v | x)).
    """
    start = tuple([ref.V] * ref.L) if init is None else tuple(int(v) for v in init)
    dist = {start: 1.0}
    for p in p_unmask:
        new = {}
        for x, px in dist.items():
            masked = [l for l in range(ref.L) if x[l] == ref.V]
            mu = _conditionals(ref, x)
            options = [[(ref.V, 1.0 - p)] + [(v, p * mu[l, v]) for v in range(ref.V)] for l in masked]
            for combo in itertools.product(*options):
                y, q = list(x), px
                for l, (v, pv) in zip(masked, combo):
                    y[l] = v
                    q *= pv
                if q > 0:
                    new[tuple(y)] = new.get(tuple(y), 0.0) + q
        dist = new
    return _finish(ref, dist)


def parallel_fhs_law(ref: ReferenceJoint, k: int, init=None) -> np.ndarray:
    """Exact law of first-hitting with k tokens per step (uniform k-subsets, independent draws)."""
    start = tuple([ref.V] * ref.L) if init is None else tuple(int(v) for v in init)
    dist = {start: 1.0}
    while any(ref.V in x for x in dist):
        new = {}
        for x, px in dist.items():
            masked = [l for l in range(ref.L) if x[l] == ref.V]
            if not masked:
                new[x] = new.get(x, 0.0) + px
                continue
            mu = _conditionals(ref, x)
            subsets = list(itertools.combinations(masked, min(k, len(masked))))
            for sub in subsets:
                for vals in itertools.product(range(ref.V), repeat=len(sub)):
                    y, q = list(x), px / len(subsets)
                    for l, v in zip(sub, vals):
                        y[l] = v
                        q *= mu[l, v]
                    new[tuple(y)] = new.get(tuple(y), 0.0) + q
        dist = new
    return _finish(ref, dist)
