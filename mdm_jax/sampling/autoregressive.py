"""Autoregressive decoding for the ARM baseline, model-agnostic, under the same precision policy.

Position convention (shift right with a BOS token). The network reads the input sequence
    inputs = [bos_id, x_0, x_1, ..., x_{L-2}]
and its output at input position p is the distribution of the output token x_p given
x_0..x_{p-1}. So:
  * cached:   step_fn(state, tokens=inputs[:, p], pos=p) -> (logits[B, V] for x_p, new_state),
              called for p = 0..L-1; p = 0 receives bos_id. `state` is any pytree (e.g. a flax
              'cache' collection sized for L positions, written at index pos).
  * uncached: logits_fn(inputs int32[B, L]) -> logits[B, L, V], causal, logits[:, p] for x_p.
A prompt int32[B, P] forces x_0..x_{P-1}; it is still fed through step_fn one token at a time
so the cache is filled (no separate prefill). Both forms draw x_p with the per-row key
fold_in(fold_in(key, row), p), so with the same key they give exactly the same tokens.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from mdm_jax.sampling import fn_args
from mdm_jax.sampling.categorical import rowwise_categorical
from mdm_jax.sampling.plumbing import constrain, row_keys, sampler_call, step_keys, tempered

__all__ = ["autoregressive", "autoregressive_uncached", "shift_right"]


def shift_right(tokens, bos_id: int):
    """[x_0..x_{L-1}] -> [BOS, x_0..x_{L-2}]: a causal model's input for targets x_0..x_{L-1}.

    The one definition of the convention above: the ARM objective trains on it
    (`objectives.corrupt_arm`), generative perplexity scores with it (`sample_metrics`) and the
    uncached sampler feeds it.
    """
    return jnp.concatenate([jnp.full_like(tokens[:, :1], bos_id), tokens[:, :-1]], axis=1)


def _prompt_array(prompt, batch_size, seq_len):
    if prompt is None:
        return jnp.zeros((batch_size, seq_len), jnp.int32), 0
    prompt = jnp.asarray(prompt, jnp.int32)
    b, p = prompt.shape
    if b != batch_size or p > seq_len:
        raise ValueError(f"prompt has shape {prompt.shape}; expected ({batch_size}, P <= {seq_len})")
    return jnp.pad(prompt, ((0, 0), (0, seq_len - p))), p


def _stats(method, precision, batch_size, seq_len, prompt_len, temperature):
    return dict(
        method=method,
        precision=precision,
        nfe=seq_len,
        num_steps=seq_len,
        prompt_len=prompt_len,
        temperature=float(temperature),
        batch_size=batch_size,
        seq_len=seq_len,
        tokens_per_step=1,
    )


def _pick(row_keys_, logits, p, forced, prompt_len, temperature, precision):
    draw = rowwise_categorical(step_keys(row_keys_, p), tempered(logits, temperature, precision), precision)
    return jnp.where(p < prompt_len, forced[:, p], draw)


def autoregressive(
    step_fn,
    init_state,
    key,
    *,
    batch_size: int,
    seq_len: int,
    precision: str = "float64",
    temperature: float = 1.0,
    prompt=None,
    bos_id: int = 0,
    batch_sharding=None,
):
    """KV-cached decoding of int32[batch_size, seq_len]; returns (tokens, stats) with nfe = L.

    See the module docstring for the step_fn / BOS convention. One compiled `lax.fori_loop` of L
    steps, cached on (step_fn, shapes, precision, prompt length): pass the same step_fn object.
    With `batch_sharding` on a mesh with Explicit axes, `init_state` should already be placed
    with its batch axis sharded (e.g. `jax.device_put`), as the sampler cannot know its layout.
    """
    with sampler_call(step_fn, precision, temperature, batch_sharding) as (fn_static, fn_leaves, temp):
        forced, plen = _prompt_array(prompt, batch_size, seq_len)
        tokens = _ar_cached(
            key,
            init_state,
            forced,
            temp,
            fn_leaves,
            step_fn=fn_static,
            batch_size=batch_size,
            seq_len=seq_len,
            precision=precision,
            prompt_len=plen,
            bos_id=int(bos_id),
            batch_sharding=batch_sharding,
        )
    return tokens, _stats("autoregressive", precision, batch_size, seq_len, plen, temperature)


def autoregressive_uncached(
    logits_fn,
    key,
    *,
    batch_size: int,
    seq_len: int,
    precision: str = "float64",
    temperature: float = 1.0,
    prompt=None,
    bos_id: int = 0,
    batch_sharding=None,
):
    """Decoding with a full causal forward per token (no cache); same tokens as `autoregressive`."""
    with sampler_call(logits_fn, precision, temperature, batch_sharding) as (fn_static, fn_leaves, temp):
        forced, plen = _prompt_array(prompt, batch_size, seq_len)
        tokens = _ar_uncached(
            key,
            forced,
            temp,
            fn_leaves,
            logits_fn=fn_static,
            batch_size=batch_size,
            seq_len=seq_len,
            precision=precision,
            prompt_len=plen,
            bos_id=int(bos_id),
            batch_sharding=batch_sharding,
        )
    return tokens, _stats("autoregressive_uncached", precision, batch_size, seq_len, plen, temperature)


_STATIC = ("batch_size", "seq_len", "precision", "prompt_len", "bos_id", "batch_sharding")


@functools.partial(jax.jit, static_argnames=("step_fn",) + _STATIC)
def _ar_cached(
    key,
    state,
    forced,
    temperature,
    fn_leaves,
    *,
    step_fn,
    batch_size,
    seq_len,
    precision,
    prompt_len,
    bos_id,
    batch_sharding,
):
    step_fn = fn_args.join(step_fn, fn_leaves)
    keys = constrain(row_keys(key, batch_size), batch_sharding)
    forced = constrain(forced, batch_sharding)

    def body(p, carry):
        tokens, state = carry
        prev = jax.lax.dynamic_index_in_dim(tokens, jnp.maximum(p - 1, 0), axis=1, keepdims=False)
        inp = jnp.where(p == 0, jnp.int32(bos_id), prev)  # BOS at position 0
        logits, state = step_fn(state, constrain(inp, batch_sharding), p)
        tok = _pick(keys, logits, p, forced, prompt_len, temperature, precision)
        tokens = jax.lax.dynamic_update_index_in_dim(tokens, tok, p, axis=1)
        return constrain(tokens, batch_sharding), state

    tokens0 = constrain(jnp.zeros((batch_size, seq_len), jnp.int32), batch_sharding)
    tokens, _ = jax.lax.fori_loop(0, seq_len, body, (tokens0, state))
    return tokens


@functools.partial(jax.jit, static_argnames=("logits_fn",) + _STATIC)
def _ar_uncached(
    key,
    forced,
    temperature,
    fn_leaves,
    *,
    logits_fn,
    batch_size,
    seq_len,
    precision,
    prompt_len,
    bos_id,
    batch_sharding,
):
    logits_fn = fn_args.join(logits_fn, fn_leaves)
    keys = constrain(row_keys(key, batch_size), batch_sharding)
    forced = constrain(forced, batch_sharding)

    def body(p, tokens):
        logits = logits_fn(constrain(shift_right(tokens, bos_id), batch_sharding))
        logits_p = jax.lax.dynamic_index_in_dim(logits, p, axis=1, keepdims=False)
        tok = _pick(keys, logits_p, p, forced, prompt_len, temperature, precision)
        return constrain(jax.lax.dynamic_update_index_in_dim(tokens, tok, p, axis=1), batch_sharding)

    tokens0 = constrain(jnp.zeros((batch_size, seq_len), jnp.int32), batch_sharding)
    return jax.lax.fori_loop(0, seq_len, body, tokens0)
