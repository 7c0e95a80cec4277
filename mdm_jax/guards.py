"""Non-finite guards: a diverged step is detected inside the jitted train step and never applied.

In the step (`step_health`, `keep_if_healthy`): the loss, the gradient norm, every gradient array
and every updated parameter array are tested with `isfinite`; the result is a handful of int32
scalars in the step's metrics (see FLAG_KEYS). When anything is non-finite the new params,
optimizer state and EMA are dropped and the old ones kept (an elementwise select that XLA fuses
into the update, not a second pass), so the train state itself never becomes non-finite.

On the host (`Monitor`), the flags are read only where the loop already syncs with the device:
at each log interval, before each checkpoint or eval and at the end. The policy
`train.nonfinite`:
  "stop"  (default) stop at the first non-finite step: `Diverged` (exit status 3) names the
          step, what was non-finite (loss, grad norm, which parameter arrays) and the last good
          checkpoint. Nothing is saved after it.
  "skip"  count the step as skipped (the update was not applied; `skipped_steps` in the logged
          metrics) and go on; stop after `train.max_nonfinite_skips` non-finite steps in a row.
Checkpoints are checked once more before every save (`tree_nonfinite`): a non-finite state is
never written, so the keep-N rotation can never replace good checkpoints with diverged ones.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from mdm_jax import errors

POLICIES = ("stop", "skip")
FLAG_KEYS = (
    "nonfinite",
    "nonfinite_loss",
    "nonfinite_grad_norm",
    "nonfinite_grads",
    "nonfinite_params",
    "nonfinite_grad_leaf",
    "nonfinite_param_leaf",
)


class Diverged(errors.RunStopped):
    exit_code = errors.EXIT_DIVERGED


def check_config(tc) -> None:
    """train.nonfinite / train.max_nonfinite_skips (part of the checks before any work)."""
    if tc.nonfinite not in POLICIES:
        raise errors.ConfigError(
            f"train.nonfinite={tc.nonfinite!r}: choose one of {', '.join(POLICIES)} "
            "(stop at the first non-finite step, or skip such steps)"
        )
    if int(tc.max_nonfinite_skips) < 1:
        raise errors.ConfigError(
            f"train.max_nonfinite_skips={tc.max_nonfinite_skips} must be >= 1 "
            "(non-finite steps in a row before a 'skip' run stops)"
        )


def _finite(x) -> jax.Array:
    if not jnp.issubdtype(x.dtype, jnp.inexact):  # integers, PRNG keys: always finite
        return jnp.bool_(True)
    return jnp.all(jnp.isfinite(x))


def _leaf_flags(tree) -> jax.Array:
    """bool[num_leaves]: whether each array of `tree` is entirely finite."""
    return jnp.stack([_finite(x) for x in jax.tree.leaves(tree)])


def _first_false(ok: jax.Array) -> jax.Array:
    return jnp.where(jnp.all(ok), -1, jnp.argmin(ok)).astype(jnp.int32)


def step_health(loss, grad_norm, grads, new_params) -> tuple[jax.Array, dict]:
    """(healthy: bool scalar, the FLAG_KEYS metrics as int32 scalars). Runs inside the step."""
    g_ok, p_ok = _leaf_flags(grads), _leaf_flags(new_params)
    loss_ok, norm_ok = jnp.isfinite(loss), jnp.isfinite(grad_norm)
    healthy = loss_ok & norm_ok & jnp.all(g_ok) & jnp.all(p_ok)
    flags = {
        "nonfinite": ~healthy,
        "nonfinite_loss": ~loss_ok,
        "nonfinite_grad_norm": ~norm_ok,
        "nonfinite_grads": jnp.sum(~g_ok),
        "nonfinite_params": jnp.sum(~p_ok),
        "nonfinite_grad_leaf": _first_false(g_ok),
        "nonfinite_param_leaf": _first_false(p_ok),
    }
    return healthy, {k: v.astype(jnp.int32) for k, v in flags.items()}


def keep_if_healthy(healthy, new, old):
    """`new` where the step is healthy, else `old` (same tree structure)."""
    return jax.tree.map(lambda n, o: jnp.where(healthy, n, o), new, old)


@jax.jit
def _all_finite(tree) -> jax.Array:
    return _leaf_flags(tree)


def tree_nonfinite(tree) -> list[str]:
    """Paths of the arrays of `tree` that hold a NaN or an infinity (a host sync; used at saves)."""
    ok = np.asarray(jax.device_get(_all_finite(tree)))
    names = leaf_names(tree)
    return [names[i] for i in np.flatnonzero(~ok)]


def leaf_names(tree) -> list[str]:
    """'params/block_0/attn/qkv/kernel'-style names of the leaves, in `jax.tree.leaves` order."""
    out = []
    for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]:
        parts = [str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path]
        out.append("/".join(parts))
    return out


def describe_subtrees(names: list[str], limit: int = 6) -> str:
    """A short list of array names for a message."""
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} arrays)" if len(names) > limit else "")


class Monitor:
    """Host side of the policy. `observe(flags, first_step)` takes the FLAG_KEYS of consecutive
    steps (host values) and raises `Diverged` when the policy says stop; returns the number of
    non-finite (skipped) steps among them."""

    def __init__(self, tc, param_names: list[str], last_good=lambda: None):
        self.policy = tc.nonfinite
        self.max_skips = int(tc.max_nonfinite_skips)
        self.param_names = param_names
        self.last_good = last_good  # -> (step, path) of the newest checkpoint, or None
        self.in_a_row = 0

    def observe(self, flags: list[dict], first_step: int) -> int:
        skipped = 0
        for i, f in enumerate(flags):
            if not int(f["nonfinite"]):
                self.in_a_row = 0
                continue
            skipped += 1
            self.in_a_row += 1
            step = first_step + i
            if self.policy == "stop":
                raise Diverged(self.report(step, f, "train.nonfinite='stop'"))
            if self.in_a_row >= self.max_skips:
                raise Diverged(
                    self.report(
                        step,
                        f,
                        f"{self.in_a_row} non-finite steps in a row "
                        f"(train.max_nonfinite_skips={self.max_skips})",
                    )
                )
        return skipped

    def _arrays(self, count, first) -> str:
        total = len(self.param_names)
        name = self.param_names[first] if 0 <= first < total else "?"
        return f"{count} of {total} parameter arrays (first: {name})"

    def report(self, step: int, f: dict, why: str) -> str:
        what = []
        if int(f["nonfinite_loss"]):
            what.append("the loss")
        if int(f["nonfinite_grad_norm"]):
            what.append("the gradient norm")
        if int(f["nonfinite_grads"]):
            what.append(
                "gradients of " + self._arrays(int(f["nonfinite_grads"]), int(f["nonfinite_grad_leaf"]))
            )
        if int(f["nonfinite_params"]):
            what.append(
                "updated values of "
                + self._arrays(int(f["nonfinite_params"]), int(f["nonfinite_param_leaf"]))
            )
        good = self.last_good()
        last = (
            f"the last good checkpoint is step {good[0]} ({good[1]})"
            if good
            else "there is no checkpoint yet"
        )
        return (
            f"training diverged at step {step}: non-finite {'; '.join(what) or 'values'}. The update "
            f"was not applied and nothing non-finite was saved; {last}. Stopped because {why}. Fix: "
            "lower --config.train.lr (or raise train.warmup_steps / set train.grad_clip), or pass "
            "--config.train.nonfinite=skip to skip such steps."
        )
