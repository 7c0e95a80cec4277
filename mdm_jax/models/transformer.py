"""The backbone shared by masked diffusion models and the autoregressive baseline.

A pre-norm transformer with rotary position embeddings (RoPE), SwiGLU or GELU MLP and optional
adaLN-Zero time conditioning (DiT-style, as in MDLM). The MDM and the ARM differ only in `causal`
(and the objective), so comparisons between them isolate the objective.

Token ids are in [0, V]; id V is the mask token (input embedding has V + 1 rows; the output
head has V logits, so the network never predicts the mask: the "SUBS" parameterisation). Both
tables are stored padded to a multiple of 128 rows/columns (`padded_vocab`); the padding is unused.

Every parameter and activation carries *logical* axis names; `mdm_jax.sharding` maps them to
mesh axes (data / fsdp / tensor), so the same module runs on 1 CPU or a pod. The primitives that
name no axes themselves (token, rotary and time embeddings, the `Einsum` projection) are in
`mdm_jax.models.primitives`; this module assembles attention, MLP, blocks and the network.

Options for large runs (see README "Scaling up"):
- `scan_layers`: the blocks run under `nn.scan`, their parameters stacked on a leading axis of
  logical name "layers" (one `blocks` subtree instead of `block_0..block_{n-1}`): the compiled
  program holds one block, so compile time stays flat in depth. `mdm_jax.models.scan_layout`
  converts parameters and checkpoints between the two layouts. Dropout masks (and a fresh init)
  differ between the layouts; with the same parameters the functions are the same.
- `remat`: rematerialisation of each block in the backward pass (`REMAT_POLICIES`).
- `attention`: the attention kernel, already resolved by `mdm_jax.models.attention.select`.

The module is x64-safe: all constants have explicit dtypes, so tracing it under
`jax.enable_x64(True)` (the float64 sampling policy) keeps its compute in `dtype`.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mdm_jax.models import attention as attention_lib
from mdm_jax.models.primitives import Einsum, GatheredEmbed, rope, rope_tables, timestep_embedding

Dtype = Any

# Logical axis names of parameters ("layers": the stacked axis of scanned blocks).
VOCAB, EMBED, MLP, HEADS, KV, TIME, LAYERS = "vocab", "embed", "mlp", "heads", "kv", "time", "layers"
# Logical axis names of activations.
A_BATCH, A_LEN, A_EMBED, A_HEADS, A_MLP, A_VOCAB = (
    "act_batch",
    "act_length",
    "act_embed",
    "act_heads",
    "act_mlp",
    "act_vocab",
)


VOCAB_MULTIPLE = 128
# Parameter subtrees of the blocks: block_0 .. block_{n-1} unscanned, one stacked "blocks" scanned.
SCANNED_BLOCKS = "blocks"


def block_name(i: int) -> str:
    return f"block_{i}"


def padded_vocab(n: int) -> int:
    """Vocabulary-sized dims are padded to a multiple of 128: any tensor-parallel degree up to 128
    divides them (50,257 is odd), and accelerator matmul tiles stay full. Padded head columns are
    sliced off the logits, so they get no gradient and never carry probability mass."""
    return -(-n // VOCAB_MULTIPLE) * VOCAB_MULTIPLE


def _init(init_fn, *axes):
    return nn.with_logical_partitioning(init_fn, axes)


def _constrain(x, *axes):
    return nn.with_logical_constraint(x, axes)


# Rematerialisation policies (`model.remat`): the jax.checkpoint policy of each block, i.e. what it
# keeps from its forward pass for the backward pass; everything else is recomputed. Effective under
# scan_layers: unscanned, XLA's CPU scheduler runs the recomputation early (benchmarks/RESULTS.md).
REMAT_POLICIES = {
    "none": None,  # no rematerialisation: every intermediate is kept (fastest, most memory)
    "full": jax.checkpoint_policies.nothing_saveable,  # keep only the block's input
    # keep the outputs of the weight matmuls (qkv, attention out, MLP in/out), which are what costs
    # FLOPs to recompute; recompute norms, RoPE, attention scores/softmax and activations.
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def check_remat(name: str) -> str:
    if name not in REMAT_POLICIES:
        raise ValueError(f"unknown model.remat={name!r}: choose one of {', '.join(REMAT_POLICIES)}")
    return name


class Attention(nn.Module):
    num_heads: int
    causal: bool
    rope_base: float
    dtype: Dtype
    param_dtype: Dtype
    max_len_for_cache: int = 0
    implementation: str = "xla"  # a kernel of mdm_jax.models.attention.KERNELS

    @nn.compact
    def __call__(self, x, rope_sc, *, decode: bool = False):
        b, t, d = x.shape
        n, head_dim = self.num_heads, d // self.num_heads
        # One fused projection; [3, B, T, N, H] output so q, k, v are contiguous leading slices.
        qkv = Einsum(
            "btd,dcnh->cbtnh",
            (d, 3, n, head_dim),
            (EMBED, None, HEADS, KV),
            0,
            (1, 2, 3),
            self.dtype,
            self.param_dtype,
            name="qkv",
        )(x)
        q, k, v = qkv[0], qkv[1], qkv[2]
        q = _constrain(q, A_BATCH, A_LEN, A_HEADS, None)

        if decode:
            # KV cache: x is one position [B, 1, D]; the cache holds max_len keys/values.
            is_init = not self.has_variable("cache", "key")
            max_len = self.max_len_for_cache
            ck = self.variable("cache", "key", jnp.zeros, (b, max_len, n, head_dim), k.dtype)
            cv = self.variable("cache", "value", jnp.zeros, (b, max_len, n, head_dim), v.dtype)
            ci = self.variable("cache", "index", lambda: jnp.zeros((), jnp.int32))
            if is_init:
                # Initialisation pass: only the cache shapes matter.
                return self._out(jnp.zeros_like(q), d)
            pos = ci.value
            sin, cos = rope_tables(pos[None], head_dim, self.rope_base)
            q, k = rope(q, sin, cos), rope(k, sin, cos)
            # _in_dim builds the other start indices in pos's dtype (python 0s would be int64 under x64).
            ck.value = jax.lax.dynamic_update_slice_in_dim(ck.value, k, pos, axis=1)
            cv.value = jax.lax.dynamic_update_slice_in_dim(cv.value, v, pos, axis=1)
            ci.value = pos + 1
            valid = (jnp.arange(max_len, dtype=jnp.int32) <= pos)[None, None, None, :]
            out = attention_lib.attend(q, ck.value, cv.value, implementation="xla", mask=valid)
        else:
            sin, cos = rope_sc
            q, k = rope(q, sin, cos), rope(k, sin, cos)
            out = attention_lib.attend(q, k, v, implementation=self.implementation, is_causal=self.causal)
        return self._out(out, d)

    def _out(self, out, d):
        out = _constrain(out, A_BATCH, A_LEN, A_HEADS, None)
        return Einsum(
            "btnh,nhd->btd",
            (self.num_heads, d // self.num_heads, d),
            (HEADS, KV, EMBED),
            (0, 1),
            2,
            self.dtype,
            self.param_dtype,
            name="out",
        )(out)


class Mlp(nn.Module):
    hidden: int
    kind: str  # "glu" | "gelu"
    dtype: Dtype
    param_dtype: Dtype

    @nn.compact
    def __call__(self, x):
        d = x.shape[-1]
        if self.kind == "glu":
            # Gate and up projections fused in one matmul; SwiGLU reads both halves in one fusion.
            gate_up = Einsum(
                "btd,dch->btch",
                (d, 2, self.hidden),
                (EMBED, None, MLP),
                0,
                (1, 2),
                self.dtype,
                self.param_dtype,
                name="wi",
            )(x)
            h = nn.silu(gate_up[..., 0, :]) * gate_up[..., 1, :]
        elif self.kind == "gelu":
            h = nn.gelu(
                Einsum(
                    "btd,dh->bth",
                    (d, self.hidden),
                    (EMBED, MLP),
                    0,
                    1,
                    self.dtype,
                    self.param_dtype,
                    name="wi",
                )(x)
            )
        else:
            raise ValueError(f"unknown model.mlp_type {self.kind!r}: use 'glu' or 'gelu'")
        h = _constrain(h, A_BATCH, A_LEN, A_MLP)
        return Einsum(
            "bth,hd->btd", (self.hidden, d), (MLP, EMBED), 0, 1, self.dtype, self.param_dtype, name="wo"
        )(h)


class Block(nn.Module):
    num_heads: int
    mlp_dim: int
    mlp_type: str
    dropout: float
    causal: bool
    rope_base: float
    time_conditioning: bool
    max_len: int
    dtype: Dtype
    param_dtype: Dtype
    attention: str = "xla"
    scanned: bool = False  # under nn.scan: return (x, None), the (carry, output) scan expects

    @nn.compact
    def __call__(self, x, cond, rope_sc, deterministic: bool, decode: bool = False):
        # deterministic and decode are positional: nn.remat marks them static by position, and
        # nn.scan passes only positional arguments.
        d = x.shape[-1]
        norm = lambda name: nn.RMSNorm(  # noqa: E731
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name=name,
            use_scale=not self.time_conditioning,
            scale_init=_init(nn.initializers.ones, EMBED),
        )
        if self.time_conditioning:
            # adaLN-Zero: shift/scale/gate per sub-layer from the time embedding, gates start at 0.
            mod = nn.Dense(
                6 * d,
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                name="adaln",
                kernel_init=_init(nn.initializers.zeros, TIME, EMBED),
                bias_init=_init(nn.initializers.zeros, EMBED),
            )(cond)
            sh1, sc1, g1, sh2, sc2, g2 = jnp.split(mod[:, None, :], 6, axis=-1)
            modulate = lambda h, sh, sc: h * (1 + sc) + sh  # noqa: E731
        else:
            sh1 = sc1 = sh2 = sc2 = None
            g1 = g2 = 1.0
            modulate = lambda h, sh, sc: h  # noqa: E731

        h = modulate(norm("attn_norm")(x), sh1, sc1)
        h = Attention(
            self.num_heads,
            self.causal,
            self.rope_base,
            self.dtype,
            self.param_dtype,
            max_len_for_cache=self.max_len,
            implementation=self.attention,
            name="attn",
        )(h, rope_sc, decode=decode)
        h = nn.Dropout(self.dropout)(h, deterministic=deterministic)
        x = _constrain(x + g1 * h, A_BATCH, A_LEN, A_EMBED)

        h = modulate(norm("mlp_norm")(x), sh2, sc2)
        h = Mlp(self.mlp_dim, self.mlp_type, self.dtype, self.param_dtype, name="mlp")(h)
        h = nn.Dropout(self.dropout)(h, deterministic=deterministic)
        x = _constrain(x + g2 * h, A_BATCH, A_LEN, A_EMBED)
        return (x, None) if self.scanned else x


class Transformer(nn.Module):
    """tokens int32[B, T] (ids in [0, V]), t float[B] or None -> logits float32[B, T, V]."""

    vocab_size: int
    max_len: int
    num_layers: int
    num_heads: int
    emb_dim: int
    mlp_dim: int
    mlp_type: str = "glu"
    dropout: float = 0.0
    causal: bool = False
    time_conditioning: bool = False
    time_emb_dim: int = 128
    rope_base: float = 10000.0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    scan_layers: bool = False
    remat: str = "none"  # a key of REMAT_POLICIES
    attention: str = "xla"  # a kernel of mdm_jax.models.attention.KERNELS (already resolved)

    @nn.compact
    def __call__(self, tokens, t=None, *, deterministic: bool = True, decode: bool = False):
        b, length = tokens.shape
        tokens = _constrain(tokens, A_BATCH, A_LEN)
        x = GatheredEmbed(
            padded_vocab(self.vocab_size + 1),
            self.emb_dim,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="embed",
            embedding_init=_init(nn.initializers.normal(1.0), VOCAB, EMBED),
        )(tokens)
        x = _constrain(x, A_BATCH, A_LEN, A_EMBED)

        cond = None
        if self.time_conditioning:
            if t is None:
                raise ValueError("a time-conditioned model (model.time_conditioning=True) needs t")
            dense = lambda n, name, ax: nn.Dense(  # noqa: E731
                n,
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                name=name,
                kernel_init=_init(nn.initializers.normal(0.02), *ax),
                bias_init=_init(nn.initializers.zeros, ax[-1]),
            )
            cond = timestep_embedding(jnp.broadcast_to(t, (b,)), self.time_emb_dim).astype(self.dtype)
            cond = nn.silu(dense(self.time_emb_dim, "time_mlp_in", (None, TIME))(cond))
            cond = nn.silu(dense(self.time_emb_dim, "time_mlp_out", (None, TIME))(cond))

        rope_sc = rope_tables(
            jnp.arange(length, dtype=jnp.int32), self.emb_dim // self.num_heads, self.rope_base
        )
        x = self._blocks(x, cond, rope_sc, deterministic, decode)

        x = nn.RMSNorm(
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="final_norm",
            use_scale=not self.time_conditioning,
            scale_init=_init(nn.initializers.ones, EMBED),
        )(x)
        if self.time_conditioning:
            mod = nn.Dense(
                2 * self.emb_dim,
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                name="final_adaln",
                kernel_init=_init(nn.initializers.zeros, TIME, EMBED),
                bias_init=_init(nn.initializers.zeros, EMBED),
            )(cond)
            shift, scale = jnp.split(mod[:, None, :], 2, axis=-1)
            x = x * (1 + scale) + shift
        logits = nn.Dense(
            padded_vocab(self.vocab_size),
            use_bias=False,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="head",
            kernel_init=_init(nn.initializers.zeros, EMBED, VOCAB),
        )(x)[..., : self.vocab_size]
        # Logits leave the network in float32: the loss and the sampling policy cast from there.
        return _constrain(logits.astype(jnp.float32), A_BATCH, A_LEN, A_VOCAB)

    def _blocks(self, x, cond, rope_sc, deterministic, decode):
        block = Block
        if check_remat(self.remat) != "none":
            # prevent_cse only matters outside scan (XLA could otherwise merge the recomputation
            # with the forward); under scan it would just block optimisations (the Flax/MaxText advice).
            block = nn.remat(
                Block,
                policy=REMAT_POLICIES[self.remat],
                prevent_cse=not self.scan_layers,
                static_argnums=(4, 5),
            )  # deterministic, decode (self is argument 0)
        args = (
            self.num_heads,
            self.mlp_dim,
            self.mlp_type,
            self.dropout,
            self.causal,
            self.rope_base,
            self.time_conditioning,
            self.max_len,
            self.dtype,
            self.param_dtype,
            self.attention,
        )
        if not self.scan_layers:
            for i in range(self.num_layers):
                x = block(*args, name=block_name(i))(x, cond, rope_sc, deterministic, decode)
            return x
        scanned = nn.scan(
            block,
            variable_axes={"params": 0, "cache": 0},
            split_rngs={"params": True, "dropout": True},
            in_axes=(nn.broadcast, nn.broadcast, nn.broadcast, nn.broadcast),
            length=self.num_layers,
            metadata_params={nn.PARTITION_NAME: LAYERS},
        )
        x, _ = scanned(*args, scanned=True, name=SCANNED_BLOCKS)(x, cond, rope_sc, deterministic, decode)
        return x
