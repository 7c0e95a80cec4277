"""Published models in their real checkpoint formats: GPT-2 (evaluator) and MDLM (denoiser).

    from mdm_jax import interop
    apply_fn, params, info = interop.load_gpt2("/data/gpt2-large")      # logits = apply_fn(params, tokens)
    denoise_fn, info = interop.load_mdlm("/data/mdlm-owt")              # logits = denoise_fn(tokens, t)

Both read a Hugging Face directory (config.json + safetensors) with the safetensors NumPy API (no
torch), check it against the network its config implies before reading any weight, and place every
parameter on a device mesh with the sharding of its logical axes. The networks are
`mdm_jax.models.gpt2.GPT2` and `mdm_jax.models.dit.DiT` (MDLM's DiT, also the "mdlm" model family);
`tests/fixtures/README.md` states the reference arithmetic they reproduce and the tolerances.
`init_from` starts a training run from loaded weights (`--config.init.from=mdlm:/path`).
"""

from mdm_jax.interop.gpt2 import GPT2Info, load_gpt2, sequence_nll
from mdm_jax.interop.mdlm import MDLMInfo, load_mdlm, load_mdlm_model
from mdm_jax.models.dit import log_probs_subs, sigma_of_t

__all__ = ["load_gpt2", "load_mdlm", "load_mdlm_model", "GPT2Info", "MDLMInfo", "sequence_nll",
           "log_probs_subs", "sigma_of_t"]
