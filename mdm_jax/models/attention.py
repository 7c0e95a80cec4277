"""Which attention kernel a transformer runs, chosen once per run and recorded: `model.attention`.

  "auto"    the fastest kernel this device can run on these shapes: cuDNN flash attention on an
            NVIDIA GPU with 16-bit compute, the Pallas Splash kernel on a TPU, XLA's otherwise.
  "xla"     `jax.nn.dot_product_attention`'s XLA implementation: runs everywhere; materialises the
            [B, heads, L, L] scores, so memory grows with L^2 (fine to a few thousand tokens).
  "cudnn"   cuDNN flash attention (`jax.nn.dot_product_attention(implementation="cudnn")`): GPU,
            bf16/fp16; O(L) memory, what long context and MFU need on GPUs.
  "splash"  the Pallas Splash attention kernel (jax.experimental.pallas.ops.tpu.splash_attention):
            TPU; O(L) memory, blocks of up to 512 queries/keys (L must be a multiple of 128).
  "splash_interpret"  the same kernel in Pallas interpret mode: runs on any backend, very slowly;
            it exists so that the kernel's wiring (layout, scaling, masks, sharding) can be checked
            on a CPU against XLA's attention (tests/test_attention.py).

`select` resolves a request against the backend and the run's shapes BEFORE anything is compiled:
an explicit kernel the device cannot run is a ValueError naming the field; "auto" falls back to
XLA's kernel and says why. The resulting `Choice` is what the model runs with and what the run
records in its metadata (`models.attention_choice`, written by `mdm_jax.report.metadata` and into
the train workdir's run_metadata.json), so a slow fallback is visible next to the results, not
only in a log line. KV-cached decoding (one query against a masked cache) always uses XLA's kernel.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math

import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.tpu.splash_attention import (
    splash_attention_kernel as splash,
    splash_attention_mask as splash_mask,
)
from jax.sharding import PartitionSpec as P

__all__ = ["IMPLEMENTATIONS", "KERNELS", "Choice", "select", "attend"]

IMPLEMENTATIONS = ("auto", "xla", "cudnn", "splash", "splash_interpret")
KERNELS = ("xla", "cudnn", "splash", "splash_interpret")  # what a Choice resolves to
_SPLASH_BLOCK = 512  # Splash query/key block (MaxText's default); smaller when L is
_SPLASH_MIN_BLOCK = 128  # TPU lane width: the smallest block, so L % 128 == 0 is required
_HALF = (jnp.bfloat16, jnp.float16)


@dataclasses.dataclass(frozen=True)
class Choice:
    """A resolved `model.attention`: the kernel the network runs and why."""

    requested: str
    implementation: str  # one of KERNELS
    reason: str
    fallback: bool  # "auto" could not use this device's preferred kernel for these shapes

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def preferred(backend: str, dtype) -> str:
    """The kernel "auto" tries first on `backend` ('cpu', 'gpu', 'tpu') for compute `dtype`."""
    if backend == "gpu" and jnp.dtype(dtype) in _HALF:
        return "cudnn"
    if backend == "tpu":
        return "splash"
    return "xla"


def select(
    requested: str, *, backend: str, dtype, seq_len: int, num_heads: int, head_dim: int, causal: bool
) -> Choice:
    """Resolves `requested` (one of IMPLEMENTATIONS) for these shapes on `backend`; see the module doc."""
    return _select(
        requested, backend, jnp.dtype(dtype), int(seq_len), int(num_heads), int(head_dim), bool(causal)
    )


@functools.cache  # one probe (and one fallback warning) per run shape, not per build
def _select(requested, backend, dtype, seq_len, num_heads, head_dim, causal) -> Choice:
    if requested not in IMPLEMENTATIONS:
        raise ValueError(f"unknown model.attention={requested!r}: choose one of {', '.join(IMPLEMENTATIONS)}")
    if requested == "xla":
        return Choice(requested, "xla", "requested", False)
    kernel = preferred(backend, dtype) if requested == "auto" else requested
    if kernel == "xla":
        why = (
            f"no fused kernel for {backend} with {jnp.dtype(dtype).name} compute "
            "(cuDNN needs a GPU and bf16/fp16, Splash a TPU)"
        )
        return Choice(requested, "xla", why, False)
    problem = _unsupported(
        kernel,
        backend=backend,
        dtype=dtype,
        seq_len=seq_len,
        num_heads=num_heads,
        head_dim=head_dim,
        causal=causal,
    )
    if problem is None:
        return Choice(
            requested, kernel, "requested" if requested == kernel else f"preferred on {backend}", False
        )
    if requested == "auto":
        logging.warning(
            "model.attention=auto: %s cannot run here (%s); using XLA's attention", kernel, problem
        )
        return Choice(requested, "xla", f"{kernel} unavailable: {problem}", True)
    raise ValueError(
        f"model.attention={requested!r} cannot run this model: {problem}; use "
        "--config.model.attention=auto (picks what runs) or xla"
    )


def _unsupported(kernel, *, backend, dtype, seq_len, num_heads, head_dim, causal) -> str | None:
    """Why `kernel` cannot run these shapes here (None if it can), checked by tracing it abstractly."""
    if kernel == "cudnn":
        if backend != "gpu":
            return f"cuDNN attention needs an NVIDIA GPU (this backend is {backend})"
        if jnp.dtype(dtype) not in _HALF:
            return f"cuDNN flash attention needs bf16/fp16 compute (dtype.compute is {jnp.dtype(dtype).name})"
    if kernel == "splash" and backend != "tpu":
        return f"the Splash kernel needs a TPU (this backend is {backend}); splash_interpret runs anywhere"
    if kernel in ("splash", "splash_interpret") and seq_len % _SPLASH_MIN_BLOCK:
        return f"the Splash kernel needs a sequence length that is a multiple of 128 (got {seq_len})"
    q = jax.ShapeDtypeStruct((1, seq_len, num_heads, head_dim), jnp.dtype(dtype))
    try:  # the kernels check shapes and dtypes when traced; eval_shape traces without compiling
        probe = functools.partial(attend, implementation=kernel, is_causal=causal, strict=True)
        jax.eval_shape(probe, q, q, q)
    except (NotImplementedError, ValueError, RuntimeError, TypeError) as e:
        return f"{type(e).__name__}: {e}"
    return None


def attend(q, k, v, *, implementation: str, is_causal: bool = False, mask=None, strict: bool = False):
    """Softmax attention of q, k, v [B, L, heads, head_dim] -> [B, L, heads, head_dim].

    `mask` (KV-cache decoding) always goes to XLA's kernel. A cuDNN or Splash call that cannot run
    a shape the run did not select it for (e.g. sampling at another length) falls back to XLA with a
    warning; `strict` raises instead (what `select` uses to probe).
    """
    if mask is not None or implementation == "xla":
        return jax.nn.dot_product_attention(q, k, v, is_causal=is_causal, mask=mask)
    if implementation == "cudnn":
        try:
            return jax.nn.dot_product_attention(q, k, v, is_causal=is_causal, implementation="cudnn")
        except (NotImplementedError, ValueError, RuntimeError) as e:
            if strict:
                raise
            logging.warning(
                "cuDNN attention unavailable for q%s %s (%s); using XLA's attention",
                tuple(q.shape),
                q.dtype,
                e,
            )
            return jax.nn.dot_product_attention(q, k, v, is_causal=is_causal)
    if implementation in ("splash", "splash_interpret"):
        if q.shape[1] % _SPLASH_MIN_BLOCK and not strict:
            logging.warning(
                "Splash attention needs a length that is a multiple of 128, got q%s; using XLA's attention",
                tuple(q.shape),
            )
            return jax.nn.dot_product_attention(q, k, v, is_causal=is_causal)
        return _splash(q, k, v, is_causal=is_causal, interpret=implementation == "splash_interpret")
    raise ValueError(
        f"unknown attention implementation {implementation!r}: choose one of {', '.join(KERNELS)}"
    )


def _splash_block(seq_len: int) -> int:
    return math.gcd(seq_len, _SPLASH_BLOCK) if seq_len % _SPLASH_MIN_BLOCK == 0 else seq_len


def _splash_kernel(num_heads: int, seq_len: int, causal: bool, head_shards: int, interpret: bool):
    """The Splash kernel for `num_heads` heads (the whole model's), its heads split `head_shards` ways."""
    block = _splash_block(seq_len)
    one = splash_mask.CausalMask((seq_len, seq_len)) if causal else splash_mask.FullMask((seq_len, seq_len))
    sizes = splash.BlockSizes(
        block_q=block,
        block_kv=block,
        block_kv_compute=block,
        block_q_dkv=block,
        block_kv_dkv=block,
        block_kv_dkv_compute=block,
        block_q_dq=block,
        block_kv_dq=block,
    )
    return splash.make_splash_mha(
        splash_mask.MultiHeadMask([one] * num_heads),
        block_sizes=sizes,
        head_shards=head_shards,
        q_seq_shards=1,
        interpret=interpret,
    )


def _splash(q, k, v, *, is_causal: bool, interpret: bool):
    """Splash attention. The kernel wants per-example [heads, L, head_dim] and unscaled logits; under a
    mesh (training) it runs per device in a shard_map: batch over the batch axes, heads over "tensor"
    (a Pallas call is opaque to the SPMD partitioner, which would otherwise gather it onto one device)."""
    b, length, heads, head_dim = q.shape
    q = q * jnp.asarray(1.0 / math.sqrt(head_dim), q.dtype)

    def local(kernel, q, k, v):  # [b, L, n, h] -> [b, L, n, h], one device's part
        t = lambda x: jnp.swapaxes(x, 1, 2)  # noqa: E731
        return t(jax.vmap(kernel)(t(q), t(k), t(v)))

    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or all(mesh.shape[a] == 1 for a in mesh.axis_names):
        return local(_splash_kernel(heads, length, is_causal, 1, interpret), q, k, v)
    # The logical activation rules of mdm_jax.sharding: batch over (data, fsdp), heads over tensor.
    batch_axes = tuple(a for a in ("data", "fsdp") if a in mesh.axis_names)
    head_axis = "tensor" if "tensor" in mesh.axis_names else None
    head_shards = mesh.shape[head_axis] if head_axis else 1
    kernel = _splash_kernel(heads, length, is_causal, head_shards, interpret)
    kernel_spec = kernel.manual_sharding_spec(jax.sharding.NamedSharding(mesh, P(head_axis, None)))
    qkv_spec = P(batch_axes, None, head_axis, None)
    return jax.shard_map(
        local,
        mesh=mesh,
        in_specs=(kernel_spec, qkv_spec, qkv_spec, qkv_spec),
        out_specs=qkv_spec,
        check_vma=False,
    )(kernel, q, k, v)
