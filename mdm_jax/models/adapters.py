"""Turn a trained `Transformer` + params into the plain functions samplers and evaluators take.

Samplers (`mdm_jax.sampling`) only know functions of arrays, never Flax modules:
- `denoise_fn(model, params)`       -> fn(tokens int32[B, L], t float32[B]) -> logits float32[B, L, V]
- `ar_step_fn(model, params, B)`    -> (step_fn, init_state) for `sampling.autoregressive`, KV-cached
- `ar_logits_fn(model, params)`     -> fn(inputs int32[B, T]) -> logits float32[B, T, V], the full
                                        causal forward, for the uncached sampler and generative PPL.

Each is a `jax.tree_util.Partial` of a hashable function object (holding the module) and the
variables: the samplers pass the params into their jitted loops as traced arguments (keeping their
sharding, no recompile when only the params change; see `mdm_jax.sampling.fn_args`), and two
adapters of equal modules share compiled samplers. Called directly they behave as plain functions.

`params` is the 'params' collection (what `TrainState.params` / `.ema_params` hold); a full variables
dict {"params": ...} and logically boxed trees are accepted too. All functions are deterministic
(no dropout) and cast their inputs to int32 / float32, so they can be traced inside
`jax.enable_x64(True)` (the float64 sampling policy) without any float64 reaching the network.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from mdm_jax.models import scan_layout
from mdm_jax.models.transformer import Transformer


def _variables(params, model: Transformer) -> dict:
    """{"params": ...} with every weight matrix already in the compute dtype.

    Every layer casts its matrices (ndim >= 2: kernels, the embedding table) to `model.dtype` at
    use, so casting them once here changes no result. It matters because the params are traced
    arguments of the samplers' loops: without it, a bf16 network re-reads and re-casts its float32
    weights on every one of the L network calls (+30% per FHS call on an H200 at owt_mdm_small).
    Vectors (norm scales, biases) keep their dtype: some layers use them in float32.
    """
    params = nn.unbox(params)
    if isinstance(params, dict) and set(params) == {"params"}:
        params = params["params"]
    dtype = jnp.dtype(model.dtype)

    def cast(path, x):  # per_layer_ndim: a scanned norm scale [layers, d] is a vector
        matrix = scan_layout.per_layer_ndim(path, x) >= 2
        if matrix and jnp.issubdtype(x.dtype, jnp.floating) and x.dtype != dtype:
            return jnp.asarray(x, dtype)
        return x

    return {"params": jax.tree_util.tree_map_with_path(cast, params)}


@dataclasses.dataclass(frozen=True)
class _Denoise:
    model: Transformer

    def __call__(self, variables, tokens, t):
        tokens = jnp.asarray(tokens, jnp.int32)
        # Passing t only when the network uses it keeps time-free networks honest: they cannot see t.
        tt = jnp.asarray(t, jnp.float32) if self.model.time_conditioning else None
        return self.model.apply(variables, tokens, tt, deterministic=True)


def denoise_fn(model: Transformer, params) -> Callable:
    """The MDM denoiser x_t, t -> logits over the V real tokens; t is ignored by a time-free network."""
    return jax.tree_util.Partial(_Denoise(model), _variables(params, model))


@dataclasses.dataclass(frozen=True)
class _ArLogits:
    model: Transformer

    def __call__(self, variables, inputs):
        return self.model.apply(variables, jnp.asarray(inputs, jnp.int32), None, deterministic=True)


def ar_logits_fn(model: Transformer, params) -> Callable:
    """Full causal forward: inputs[:, i] -> logits predicting the token after it (position i's target).

    The caller builds the inputs exactly as the ARM objective does: [bos = V, x_0, ..., x_{T-2}]
    scores x_0..x_{T-1}.
    """
    _require_causal(model)
    return jax.tree_util.Partial(_ArLogits(model), _variables(params, model))


def ar_step_fn(model: Transformer, params, batch_size: int):
    """KV-cached decoding for `sampling.autoregressive`: returns (step_fn, init_state).

    step_fn(state, tokens int32[B], pos) -> (logits float32[B, V], state): feeds the input token at
    position `pos` (pos = 0 takes the bos id V) and returns the distribution of the token at `pos`.
    `state` is the Flax 'cache' collection (keys/values of `model.max_len` positions per layer).
    `pos` is authoritative: it overwrites the cache's own write index, so a caller can restart or
    re-feed positions and the result is always the causal forward over inputs [0..pos].
    """
    _require_causal(model)
    variables = _variables(params, model)
    dummy = jnp.zeros((batch_size, 1), jnp.int32)
    # The first decode=True call creates the cache: all zeros (keys, values, index 0), so only its
    # shapes are needed; eval_shape gets them without running (or compiling) the network.
    shapes = jax.eval_shape(
        lambda v: model.apply(v, dummy, None, deterministic=True, decode=True, mutable=["cache"])[1]["cache"],
        variables,
    )
    init_state = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)

    return jax.tree_util.Partial(_ArStep(model, int(batch_size)), variables), init_state


@dataclasses.dataclass(frozen=True)
class _ArStep:
    model: Transformer
    batch_size: int

    def __call__(self, variables, state, tokens, pos):
        pos = jnp.asarray(pos, jnp.int32)
        state = _with_index(state, pos)
        tokens = jnp.asarray(tokens, jnp.int32).reshape(self.batch_size, 1)
        logits, mutated = self.model.apply(
            {**variables, "cache": state}, tokens, None, deterministic=True, decode=True, mutable=["cache"]
        )
        return logits[:, 0], mutated["cache"]


def _with_index(cache, pos):
    """The cache with every layer's write index set to pos."""
    return jax.tree_util.tree_map_with_path(
        lambda path, leaf: (
            jnp.broadcast_to(pos, leaf.shape).astype(leaf.dtype)
            if getattr(path[-1], "key", None) == "index"
            else leaf
        ),
        cache,
    )


def _require_causal(model: Transformer):
    if not model.causal:
        raise ValueError(
            "autoregressive decoding needs a causal model: build it from a config with "
            "objective.kind='arm' (this one is bidirectional, an MDM)"
        )
