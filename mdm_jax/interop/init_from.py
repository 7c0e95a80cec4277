"""Training initialised from published weights: `--config.init_from=FORMAT:DIRECTORY`.

    --config.init_from=mdlm:/data/mdlm-owt    MDLM's DiT (model.family="mdlm"), an MDM objective
    --config.init_from=gpt2:/data/gpt2        GPT-2 (model.family="gpt2"), objective.kind="arm"

A fresh run (no checkpoint in its workdir yet) starts from the loaded weights: params and their
EMA are the checkpoint's, read straight into the train state's shardings; the optimizer state is
fresh and the step is 0. A run that resumes restores its own checkpoint and never reads
`init_from` again (the source directory may be gone by then).

The config must describe the checkpoint's network. `check(config)` compares every field that
defines it (model.family, vocab_size, max_len, emb_dim, ...) with the checkpoint's config.json and
raises, naming every mismatched field with the value to set, before any data is read and before
any compilation; then the tensor names and shapes, and the data tokenizer's vocabulary.
"""

from __future__ import annotations

from mdm_jax import models
from mdm_jax.data import tokenizers
from mdm_jax.interop import gpt2, hf, mdlm, vocab

__all__ = ["FORMATS", "source", "check", "load_params"]

# format (= the model_type of its config.json) -> its interop module (the same functions in each)
FORMATS = {"mdlm": mdlm, "gpt2": gpt2}


def source(config) -> tuple[str, str] | None:
    """(format, directory) of config.init_from, or None for a random initialisation."""
    spec = str(config.get("init_from", "") or "")
    if not spec:
        return None
    fmt, sep, path = spec.partition(":")
    if not sep or fmt not in FORMATS or not path:
        raise ValueError(
            f"init_from={spec!r}: expected FORMAT:DIRECTORY with FORMAT one of "
            f"{', '.join(FORMATS)}, e.g. --config.init_from=mdlm:/data/mdlm-owt"
        )
    return fmt, path


def _mismatches(config, fmt: str, ckpt: hf.Checkpoint) -> list[str]:
    module = FORMATS[fmt]
    want = {"family": module.FAMILY, "mlp_type": "gelu", **module.config_values(ckpt.config)}
    origins = dict(module.CONFIG_FIELDS)
    out = []
    for name, value in want.items():
        have = config.model.get(name)
        if have != value:
            why = f" (config.json {origins[name]})" if name in origins else ""
            out.append(f"--config.model.{name}={value}{why}, the config has {have!r}")
    return out


def check(config) -> None:
    """Raises before any work unless config.init_from can initialise this config's network."""
    src = source(config)
    if src is None:
        return
    fmt, path = src
    module = FORMATS[fmt]
    ckpt = hf.open_dir(path, model_type=fmt, hint=module.HINT)
    problems = _mismatches(config, fmt, ckpt)
    if problems:
        raise ValueError(
            f"init_from={config.init_from!r}: the config describes another network than the checkpoint; "
            "set these fields (or use the checkpoint that matches the config):\n  " + "\n  ".join(problems)
        )
    ckpt, model, _, _ = module.open_checked(path, models.build(config))
    vocab.check_tokenizer(
        tokenizers.get(config.data),
        vocab_size=model.vocab_size,
        eot_id=module.eot_id(ckpt.config),
        model=f"the {fmt} checkpoint {ckpt.directory}",
        field="config.data.tokenizer",
    )


def load_params(config, mesh, abstract_params, param_shardings):
    """The checkpoint's weights as the train state's params: same tree, dtypes and shardings."""
    fmt, path = source(config)
    module = FORMATS[fmt]
    ckpt, model, tensors, stored = module.open_checked(path, models.build(config))
    return module.read_params(ckpt, model, tensors, stored, mesh, abstract_params, param_shardings)
