"""MDLM's diffusion transformer (DiT, Sahoo et al. 2024) in Flax, and its SUBS parameterisation.

The arithmetic of `models/dit.py` and `Diffusion._subs_parameterization` in MDLM's code
(github.com/kuleshov-group/mdlm), what its published checkpoints (e.g. `kuleshov-group/mdlm-owt`)
were trained with:
- time: MDLM conditions on sigma, the total noise of its log-linear schedule,
  sigma(t) = -log1p(-(1 - 1e-3) t); with `time_conditioning=False` sigma is replaced by 0, but the
  conditioning vector is still computed (from sigma = 0) and still modulates every block;
- c = SiLU(Linear(SiLU(Linear([cos(sigma f), sin(sigma f)])))), 256 sinusoid features, cosines first;
- no position embedding: rotary (rotate-half) over the whole head, on q and k;
- blocks: adaLN chunks (shift1, scale1, gate1, shift2, scale2, gate2) from c; bias-free LayerNorm
  times a weight, modulated as x (1 + scale) + shift; fused bias-free qkv laid out (three, heads,
  head_dim); full bidirectional attention; gated residuals; a tanh-GELU MLP with biases;
- output: adaLN (shift, scale), then a linear layer with bias over V + 1 classes (the mask too);
- SUBS: the mask class gets -1e6 added (a finite constant, as upstream), the row is normalised,
  and every unmasked position becomes a one-hot in log space (0 at its token, -1e6 elsewhere).

`DiT.backbone(tokens, sigma)` is MDLM's backbone (raw logits over V + 1 classes);
`DiT(tokens, t)` is the project's model contract: t in [0, 1] (None for a time-free network) ->
SUBS log-probabilities over the V real tokens (mask column dropped; mask id V), so the same module
trains through the project's objectives, samples through its samplers, and loads MDLM checkpoints
(`mdm_jax.interop.load_mdlm`). Vocabulary-sized tables are stored padded to a multiple of 128.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mdm_jax.models.layers import Affine, Embedding, constrain, layer_norm, stats_dtype
from mdm_jax.models.transformer import (
    A_BATCH,
    A_EMBED,
    A_HEADS,
    A_LEN,
    A_MLP,
    A_VOCAB,
    EMBED,
    HEADS,
    KV,
    MLP,
    TIME,
    VOCAB,
    padded_vocab,
    rope,
)

Dtype = Any

SIGMA_EPS = 1e-3  # MDLM's log-linear schedule: alpha(1) = 1e-3
FREQ_DIM = 256  # width of the sinusoidal embedding of sigma (fixed upstream, independent of cond_dim)
NEG_INFINITY = -1e6  # MDLM's finite "minus infinity" of SUBS (not -inf: its values are reproduced)
LN_EPS = 1e-5


def sigma_of_t(t):
    """MDLM's total noise at time t under its log-linear schedule: -log(1 - (1 - 1e-3) t)."""
    return -jnp.log1p(-(1.0 - SIGMA_EPS) * t)


def timestep_embedding(sigma, dtype) -> jax.Array:
    """[B] -> [B, 256]: [cos(sigma f_j), sin(sigma f_j)], f_j = exp(-ln(10000) j / 128)."""
    half = FREQ_DIM // 2
    freqs = jnp.exp(-math.log(10000.0) * jnp.arange(half, dtype=dtype) / half)
    args = sigma.astype(dtype)[:, None] * freqs[None]
    return jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)


def rotary_tables(length: int, head_dim: int, base: float, dtype):
    """(sin, cos) [length, head_dim / 2], angles l * inv_freq with inv_freq = 1 / base^(2j / head_dim)
    computed as upstream computes its stored buffer."""
    inv_freq = 1.0 / (base ** (jnp.arange(0, head_dim, 2, dtype=dtype) / head_dim))
    angles = jnp.arange(length, dtype=dtype)[:, None] * inv_freq[None]
    return jnp.sin(angles), jnp.cos(angles)


def log_probs_subs(logits_raw: jax.Array, tokens: jax.Array) -> jax.Array:
    """MDLM's SUBS parameterisation: raw logits [B, L, V + 1] -> log-probabilities [B, L, V + 1].

    The mask id is the last class (V). -1e6 is added to the mask column, rows are normalised
    (logits - logsumexp); at unmasked positions (tokens != V) every entry becomes -1e6 except the
    position's own token, 0: the model copies what is already known.
    """
    mask_id = logits_raw.shape[-1] - 1
    neg = jnp.asarray(NEG_INFINITY, logits_raw.dtype)
    logits = logits_raw.at[..., mask_id].add(neg)
    logits = logits - jax.nn.logsumexp(logits, axis=-1, keepdims=True)
    own = tokens[..., None] == jnp.arange(logits.shape[-1], dtype=tokens.dtype)
    copy = jnp.where(own, jnp.zeros((), logits.dtype), neg)
    return jnp.where((tokens != mask_id)[..., None], copy, logits)


def _torch_linear_init(fan_in: int):
    """torch.nn.Linear's default (kaiming_uniform with a = sqrt 5): U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in)
    return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


def _modulate(x, shift, scale):
    return x * (1 + scale) + shift


class DiTBlock(nn.Module):
    num_heads: int
    mlp_dim: int
    cond_dim: int
    dropout: float
    dtype: Dtype
    param_dtype: Dtype

    @nn.compact
    def __call__(self, x, c, sin, cos, *, deterministic: bool):
        d = x.shape[-1]
        n, hd = self.num_heads, d // self.num_heads
        p = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        norm = dict(eps=LN_EPS, use_bias=False, **p)
        # adaLN-Zero, as upstream: modulation starts at zero, so every block starts as the identity.
        mod = Affine(
            "bc,cd->bd",
            (self.cond_dim, 6 * d),
            (TIME, EMBED),
            (EMBED,),
            name="adaLN_modulation",
            kernel_init=nn.initializers.zeros,
            **p,
        )(c)
        sh1, sc1, g1, sh2, sc2, g2 = jnp.split(mod[:, None, :], 6, axis=-1)
        drop = nn.Dropout(self.dropout)

        h = _modulate(layer_norm("norm1", EMBED, **norm)(x), sh1, sc1)
        qkv = Affine(
            "btd,dcnh->cbtnh",
            (d, 3, n, hd),
            (EMBED, None, HEADS, KV),
            None,
            name="attn_qkv",
            kernel_init=_torch_linear_init(d),
            **p,
        )(h)
        q, k, v = (constrain(a, A_BATCH, A_LEN, A_HEADS, None) for a in (qkv[0], qkv[1], qkv[2]))
        q, k = rope(q, sin, cos), rope(k, sin, cos)
        a = constrain(jax.nn.dot_product_attention(q, k, v), A_BATCH, A_LEN, A_HEADS, None)
        a = Affine(
            "btnh,nhd->btd",
            (n, hd, d),
            (HEADS, KV, EMBED),
            None,
            name="attn_out",
            kernel_init=_torch_linear_init(d),
            **p,
        )(a)
        x = constrain(x + g1 * drop(a, deterministic=deterministic), A_BATCH, A_LEN, A_EMBED)

        h = _modulate(layer_norm("norm2", EMBED, **norm)(x), sh2, sc2)
        h = Affine(
            "btd,dm->btm",
            (d, self.mlp_dim),
            (EMBED, MLP),
            (MLP,),
            name="mlp_in",
            kernel_init=_torch_linear_init(d),
            bias_init=_torch_linear_init(d),
            **p,
        )(h)
        h = constrain(nn.gelu(h, approximate=True), A_BATCH, A_LEN, A_MLP)
        h = Affine(
            "btm,md->btd",
            (self.mlp_dim, d),
            (MLP, EMBED),
            (EMBED,),
            name="mlp_out",
            kernel_init=_torch_linear_init(self.mlp_dim),
            bias_init=_torch_linear_init(self.mlp_dim),
            **p,
        )(h)
        return constrain(x + g2 * drop(h, deterministic=deterministic), A_BATCH, A_LEN, A_EMBED)


class DiT(nn.Module):
    """MDLM's DiT; see the module docstring for the two entry points."""

    vocab_size: int  # V real tokens; MDLM's config.json counts V + 1 (the mask, id V)
    max_len: int
    num_layers: int
    num_heads: int
    emb_dim: int
    cond_dim: int
    mlp_dim: int
    dropout: float = 0.0
    time_conditioning: bool = False
    rope_base: float = 10000.0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    causal = False  # bidirectional only (read by the adapters)

    def __call__(self, tokens, t=None, *, deterministic: bool = True, decode: bool = False):
        """tokens int32[B, L] (mask id V), t [B] or None -> SUBS log-probabilities [B, L, V]."""
        if decode:
            raise ValueError("MDLM's DiT is bidirectional: it has no autoregressive decoding cache")
        tokens = jnp.asarray(tokens, jnp.int32)
        ref = stats_dtype(self.dtype)
        if t is None:
            sigma = jnp.zeros((tokens.shape[0],), ref)
        else:
            sigma = sigma_of_t(jnp.broadcast_to(jnp.asarray(t, ref), (tokens.shape[0],)))
        raw = self.backbone(tokens, sigma, deterministic=deterministic)
        return constrain(log_probs_subs(raw, tokens)[..., : self.vocab_size], A_BATCH, A_LEN, A_VOCAB)

    @nn.compact
    def backbone(self, tokens, sigma, *, deterministic: bool = True):
        """MDLM's `DITBackbone.forward(tokens, sigma)`: raw logits [B, L, V + 1] (mask id V)."""
        b, length = tokens.shape
        if length > self.max_len:
            raise ValueError(f"MDLM sequences are at most {self.max_len} tokens (model_length), got {length}")
        d, classes = self.emb_dim, self.vocab_size + 1
        ref = stats_dtype(self.dtype)
        p = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        tokens = constrain(jnp.asarray(tokens, jnp.int32), A_BATCH, A_LEN)
        sigma = jnp.asarray(sigma, ref)
        if not self.time_conditioning:
            sigma = jnp.zeros_like(sigma)

        # The sinusoids in float32 as upstream; the MLP in the compute dtype like every other layer
        # (the adapters cast weight matrices to it once, which must not change results).
        emb = timestep_embedding(sigma, ref)
        c = nn.silu(
            Affine(
                "bf,fc->bc",
                (FREQ_DIM, self.cond_dim),
                (None, TIME),
                (TIME,),
                name="sigma_map_in",
                kernel_init=_torch_linear_init(FREQ_DIM),
                bias_init=_torch_linear_init(FREQ_DIM),
                **p,
            )(emb)
        )
        c = nn.silu(
            Affine(
                "bc,cd->bd",
                (self.cond_dim, self.cond_dim),
                (None, TIME),
                (TIME,),
                name="sigma_map_out",
                kernel_init=_torch_linear_init(self.cond_dim),
                bias_init=_torch_linear_init(self.cond_dim),
                **p,
            )(c)
        )

        # Upstream's EmbeddingLayer: kaiming_uniform(a = sqrt 5) of a [V + 1, D] table, U(+-1/sqrt D).
        x = Embedding(
            padded_vocab(classes),
            d,
            self.dtype,
            self.param_dtype,
            name="vocab_embed",
            embedding_init=_torch_linear_init(d),
        )(tokens)
        x = constrain(x, A_BATCH, A_LEN, A_EMBED)

        sin, cos = rotary_tables(length, d // self.num_heads, self.rope_base, ref)
        for i in range(self.num_layers):
            x = DiTBlock(self.num_heads, self.mlp_dim, self.cond_dim, self.dropout, name=f"blocks_{i}", **p)(
                x, c, sin, cos, deterministic=deterministic
            )

        mod = Affine(
            "bc,cd->bd",
            (self.cond_dim, 2 * d),
            (TIME, EMBED),
            (EMBED,),
            name="output_adaLN_modulation",
            kernel_init=nn.initializers.zeros,
            **p,
        )(c)
        shift, scale = jnp.split(mod[:, None, :], 2, axis=-1)
        x = _modulate(layer_norm("norm_final", EMBED, eps=LN_EPS, use_bias=False, **p)(x), shift, scale)
        logits = Affine(
            "btd,dv->btv",
            (d, padded_vocab(classes)),
            (EMBED, VOCAB),
            (VOCAB,),
            name="output_linear",
            kernel_init=nn.initializers.zeros,
            **p,
        )(x)
        return constrain(logits[..., :classes].astype(ref), A_BATCH, A_LEN, A_VOCAB)
