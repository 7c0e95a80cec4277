"""Masking schedules alpha(t): plain math, shared by training objectives and samplers.

alpha(t) is the probability that a token is still unmasked at time t; alpha(0) = 1 and
alpha decreases to alpha(1) (0 for all schedules but log-linear, where it is eps).
Every schedule gives alpha, its derivative and its inverse (the first-hitting sampler maps
a mask level m = 1 - alpha(tau) back to a time tau = alpha^-1(1 - m)).

Functions are written with `jnp` so they work on numpy arrays, traced arrays and any float
dtype; they keep the dtype of their input (float64 stays float64 when x64 is enabled).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import jax.numpy as jnp

__all__ = ["Schedule", "get", "NAMES"]


@dataclasses.dataclass(frozen=True)
class Schedule:
    """A masking schedule. `alpha`, `dalpha` and `inverse` are elementwise functions."""

    name: str
    alpha: Callable
    dalpha: Callable  # d alpha / dt (<= 0)
    inverse: Callable  # alpha^-1(a), for a in [alpha(1), 1]
    params: tuple = ()

    @property
    def alpha_at_1(self) -> float:
        return float(self.alpha(1.0))

    def mask_level(self, t):
        """m(t) = 1 - alpha(t): the probability that a token is masked at time t."""
        return 1.0 - self.alpha(t)

    def time_of_mask_level(self, m):
        """tau with 1 - alpha(tau) = m."""
        return self.inverse(1.0 - m)

    def weight(self, t):
        """ELBO weight -alpha'(t) / (1 - alpha(t)) (positive)."""
        return -self.dalpha(t) / (1.0 - self.alpha(t))

    def __str__(self):
        extra = ",".join(f"{k}={v}" for k, v in self.params)
        return f"{self.name}({extra})" if extra else self.name


def _linear() -> Schedule:
    return Schedule(
        "linear",
        alpha=lambda t: 1.0 - t,
        dalpha=lambda t: -jnp.ones_like(jnp.asarray(t)),
        inverse=lambda a: 1.0 - a,
    )


def _cosine() -> Schedule:
    half_pi = math.pi / 2
    return Schedule(
        "cosine",
        alpha=lambda t: 1.0 - jnp.cos(half_pi * (1.0 - t)),
        dalpha=lambda t: -half_pi * jnp.sin(half_pi * (1.0 - t)),
        inverse=lambda a: 1.0 - jnp.arccos(1.0 - a) / half_pi,
    )


def _polynomial(k: float) -> Schedule:
    if k <= 0:
        raise ValueError(f"polynomial schedule needs k > 0, got k={k}")
    return Schedule(
        "polynomial",
        alpha=lambda t: 1.0 - t**k,
        dalpha=lambda t: -k * jnp.asarray(t) ** (k - 1),
        inverse=lambda a: (1.0 - a) ** (1.0 / k),
        params=(("k", k),),
    )


def _loglinear(eps: float) -> Schedule:
    # MDLM's schedule: alpha(t) = 1 - (1 - eps) t, so alpha(1) = eps (not fully masked).
    if not 0 <= eps < 1:
        raise ValueError(f"log-linear schedule needs 0 <= eps < 1, got eps={eps}")
    return Schedule(
        "loglinear",
        alpha=lambda t: 1.0 - (1.0 - eps) * t,
        dalpha=lambda t: -(1.0 - eps) * jnp.ones_like(jnp.asarray(t)),
        inverse=lambda a: (1.0 - a) / (1.0 - eps),
        params=(("eps", eps),),
    )


NAMES = ("linear", "cosine", "polynomial", "loglinear")


def get(name: str, *, k: float = 2.0, eps: float = 1e-3) -> Schedule:
    """Returns the schedule `name`; `k` is the polynomial degree, `eps` the log-linear floor."""
    if isinstance(name, Schedule):
        return name
    if name == "linear":
        return _linear()
    if name == "cosine":
        return _cosine()
    if name == "polynomial":
        return _polynomial(float(k))
    if name == "loglinear":
        return _loglinear(float(eps))
    raise ValueError(
        f"unknown schedule {name!r}: choose one of {', '.join(NAMES)} (config field objective.schedule)"
    )
