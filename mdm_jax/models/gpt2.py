"""GPT-2 (Radford et al., 2019) in Flax, with the arithmetic of Hugging Face's `GPT2LMHeadModel`.

tokens int32[B, T] -> logits float32[B, T, V]. Learned position embeddings, pre-norm blocks
(LayerNorm with bias, eps from the config), fused qkv whose output is laid out (three, heads,
head_dim), causal attention scaled by 1/sqrt(head_dim), a tanh-approximated GELU MLP ("gelu_new"),
a final LayerNorm and an output head tied to the token embedding (no bias). The token table is
stored padded to a multiple of 128 rows (`transformer.padded_vocab`: any tensor-parallel degree
divides it); padded rows are zero and their logits are sliced off.

Weights come from a Hugging Face checkpoint through `mdm_jax.interop.load_gpt2`; every parameter
carries logical axis names, so they load straight into a sharded mesh.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mdm_jax.models.layers import Affine, Embedding, constrain, layer_norm, partitioned, stats_dtype
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
    padded_vocab,
)

Dtype = Any


class GPT2Block(nn.Module):
    num_heads: int
    mlp_dim: int
    eps: float
    dropout: float
    max_len: int
    dtype: Dtype
    param_dtype: Dtype

    @nn.compact
    def __call__(self, x, *, deterministic: bool, decode: bool):
        d = x.shape[-1]
        n, hd = self.num_heads, d // self.num_heads
        norm = dict(eps=self.eps, use_bias=True, dtype=self.dtype, param_dtype=self.param_dtype)
        dense = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        drop = nn.Dropout(self.dropout)

        h = layer_norm("ln_1", EMBED, **norm)(x)
        # [B, T, 3, N, H]: the bias [3, N, H] broadcasts over the trailing axes.
        qkv = Affine(
            "btd,dcnh->btcnh",
            (d, 3, n, hd),
            (EMBED, None, HEADS, KV),
            (None, HEADS, KV),
            name="c_attn",
            **dense,
        )(h)
        q, k, v = (constrain(qkv[:, :, i], A_BATCH, A_LEN, A_HEADS, None) for i in range(3))
        if decode:
            # KV cache: x is one position [B, 1, D]; the cache holds max_len keys and values.
            ck = self.variable("cache", "key", jnp.zeros, (x.shape[0], self.max_len, n, hd), k.dtype)
            cv = self.variable("cache", "value", jnp.zeros, (x.shape[0], self.max_len, n, hd), v.dtype)
            ci = self.variable("cache", "index", lambda: jnp.zeros((), jnp.int32))
            pos = ci.value
            ck.value = jax.lax.dynamic_update_slice_in_dim(ck.value, k, pos, axis=1)
            cv.value = jax.lax.dynamic_update_slice_in_dim(cv.value, v, pos, axis=1)
            ci.value = pos + 1
            valid = (jnp.arange(self.max_len, dtype=jnp.int32) <= pos)[None, None, None, :]
            a = jax.nn.dot_product_attention(q, ck.value, cv.value, mask=valid)
        else:
            a = jax.nn.dot_product_attention(q, k, v, is_causal=True)  # scale 1/sqrt(head_dim)
        a = constrain(a, A_BATCH, A_LEN, A_HEADS, None)
        a = Affine("btnh,nhd->btd", (n, hd, d), (HEADS, KV, EMBED), (EMBED,), name="c_proj", **dense)(a)
        x = constrain(x + drop(a, deterministic=deterministic), A_BATCH, A_LEN, A_EMBED)

        h = layer_norm("ln_2", EMBED, **norm)(x)
        h = Affine("btd,dm->btm", (d, self.mlp_dim), (EMBED, MLP), (MLP,), name="c_fc", **dense)(h)
        h = constrain(nn.gelu(h, approximate=True), A_BATCH, A_LEN, A_MLP)
        h = Affine("btm,md->btd", (self.mlp_dim, d), (MLP, EMBED), (EMBED,), name="mlp_c_proj", **dense)(h)
        return constrain(x + drop(h, deterministic=deterministic), A_BATCH, A_LEN, A_EMBED)


class GPT2(nn.Module):
    """tokens int32[B, T] (T <= max_len) -> logits [B, T, vocab_size] (float32, float64 if dtype is).

    As the project's "gpt2" model family (an ARM), it follows the project's model contract:
    `(tokens, t=None, *, deterministic, decode)`, t ignored (no time input); the ARM objective's
    first input, id vocab_size, is read as <|endoftext|> (`bos_id`, GPT-2's last id), which GPT-2
    itself uses to start a document; `decode=True` runs one position against a KV cache.
    Dropout (`dropout`) acts where GPT-2's embd_pdrop and resid_pdrop act; there is no dropout on
    the attention probabilities.
    """

    vocab_size: int
    max_len: int
    num_layers: int
    num_heads: int
    emb_dim: int
    mlp_dim: int
    eps: float = 1e-5
    dropout: float = 0.0
    bos_id: int | None = None  # what id vocab_size is read as (None: vocab_size - 1)
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    causal = True  # read by the adapters
    time_conditioning = False

    @nn.compact
    def __call__(self, tokens, t=None, *, deterministic: bool = True, decode: bool = False):
        del t  # GPT-2 has no time input
        b, length = tokens.shape
        if length > self.max_len:
            raise ValueError(f"GPT-2 sequences are at most {self.max_len} tokens (n_positions), got {length}")
        tokens = jnp.asarray(tokens, jnp.int32)
        bos = self.vocab_size - 1 if self.bos_id is None else self.bos_id
        tokens = constrain(jnp.where(tokens == self.vocab_size, bos, tokens), A_BATCH, A_LEN)
        wte = Embedding(padded_vocab(self.vocab_size), self.emb_dim, self.dtype, self.param_dtype, name="wte")
        wpe = self.param(
            "wpe",
            partitioned(nn.initializers.normal(0.02), None, EMBED),
            (self.max_len, self.emb_dim),
            self.param_dtype,
        )
        if decode:
            # The position of the one decoded token; the adapters set every cache "index" to it.
            index = self.variable("cache", "index", lambda: jnp.zeros((), jnp.int32))
            pos = jax.lax.dynamic_slice_in_dim(wpe, index.value, 1, axis=0)
            index.value = index.value + 1
        else:
            pos = wpe[:length]
        x = wte(tokens) + pos.astype(self.dtype)
        x = nn.Dropout(self.dropout)(x, deterministic=deterministic)
        x = constrain(x, A_BATCH, A_LEN, A_EMBED)
        for i in range(self.num_layers):
            x = GPT2Block(
                self.num_heads,
                self.mlp_dim,
                self.eps,
                self.dropout,
                self.max_len,
                self.dtype,
                self.param_dtype,
                name=f"h_{i}",
            )(x, deterministic=deterministic, decode=decode)
        x = layer_norm(
            "ln_f", EMBED, eps=self.eps, use_bias=True, dtype=self.dtype, param_dtype=self.param_dtype
        )(x)
        logits = wte.attend(x)[..., : self.vocab_size].astype(stats_dtype(self.dtype))
        return constrain(logits, A_BATCH, A_LEN, A_VOCAB)
