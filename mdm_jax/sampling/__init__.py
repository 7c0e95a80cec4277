"""Samplers for masked diffusion and autoregressive models, under an explicit precision policy.

    from mdm_jax import sampling, schedules
    tokens, stats = sampling.first_hitting(denoise_fn, key, batch_size=B, seq_len=L, mask_id=V,
                                           schedule=schedules.get("linear"), precision="float64")
    tokens, stats = sampling.ancestral(denoise_fn, key, ..., num_steps=N, precision="float32")
    tokens, stats = sampling.mdlm_ancestral(denoise_fn, key, ..., num_steps=N)   # MDLM's own procedure
    idx = sampling.categorical(key, logits, precision="float32")

denoise_fn(tokens int32[B, L], t float32[B]) -> logits [B, L, V], mask id = V. Nothing here
imports models, training or data code: a sampler only needs a denoising (or next-token) function.
Modules: `categorical` (the precision policies of one draw), `plumbing` (per-row keys, batch
sharding, the set-up around every sampler's loop), `fn_args` (model functions as traced
arguments), and one module per sampler.
"""

from mdm_jax.sampling.ancestral import ancestral
from mdm_jax.sampling.autoregressive import autoregressive, autoregressive_uncached, shift_right
from mdm_jax.sampling.categorical import PRECISIONS, categorical, policy_dtype, x64_scope as categorical_scope
from mdm_jax.sampling.first_hitting import first_hitting
from mdm_jax.sampling.mdlm import mdlm_ancestral

__all__ = [
    "first_hitting",
    "ancestral",
    "mdlm_ancestral",
    "autoregressive",
    "autoregressive_uncached",
    "shift_right",
    "categorical",
    "categorical_scope",
    "policy_dtype",
    "PRECISIONS",
]
