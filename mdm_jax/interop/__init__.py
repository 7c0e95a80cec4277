"""Published models in their real checkpoint formats: GPT-2 (evaluator, ARM) and MDLM (denoiser).

    from mdm_jax import interop
    apply_fn, params, info = interop.load_gpt2("/data/gpt2-large")   # logits = apply_fn(params, tokens)
    denoise_fn, info = interop.load_mdlm("/data/mdlm-owt")           # log-probs = denoise_fn(tokens, t)

Both read a Hugging Face directory (config.json + safetensors, single or sharded) with the
safetensors NumPy API (no torch), check it against the network its config implies before reading
any weight, and place every parameter on a device mesh with the sharding of its logical axes. The
networks are `mdm_jax.models.gpt2.GPT2` and `mdm_jax.models.dit.DiT`, also the model families
"gpt2" and "mdlm"; `tests/fixtures/README.md` states the reference arithmetic they reproduce.
`init_from` starts a training run from loaded weights (`--config.init_from=mdlm:/data/mdlm-owt`).

Modules: `hf` (reading and checking a directory), `layout` (placing arrays on a mesh), `gpt2` and
`mdlm` (each format's tensor mapping and loader), `vocab` (tokenizer vs model), `init_from`.
"""

from mdm_jax.interop.gpt2 import GPT2Info, load_gpt2, sequence_nll
from mdm_jax.interop.mdlm import MDLMInfo, load_mdlm, load_mdlm_model
from mdm_jax.interop.vocab import check_tokenizer
from mdm_jax.models.dit import log_probs_subs, sigma_of_t

__all__ = [
    "load_gpt2",
    "load_mdlm",
    "load_mdlm_model",
    "GPT2Info",
    "MDLMInfo",
    "sequence_nll",
    "log_probs_subs",
    "sigma_of_t",
    "check_tokenizer",
]
