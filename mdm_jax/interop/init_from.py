"""Training initialised from published weights: `--config.init.from=mdlm:/path/to/mdlm-owt`.

A fresh run (no checkpoint in its workdir yet) starts from the loaded weights: params and their
EMA are the checkpoint's, read straight into the train state's shardings; the optimizer state is
fresh and the step is 0. A run that resumes restores its own checkpoint and never reads
`init.from` again (the source directory may be gone by then).

The config must describe the checkpoint's network. `check(config)` compares every field that
defines it (model.family, vocab_size, max_len, emb_dim, ...) with the checkpoint's config.json and
raises, naming every mismatched field with the value to set, before any data is read and before
any compilation; then the tensor names and shapes, and the data tokenizer's vocabulary.
"""

from __future__ import annotations

from mdm_jax import models
from mdm_jax.data import tokenizers
from mdm_jax.interop import hf, mdlm, vocab

__all__ = ["FORMATS", "source", "check", "load_params"]

FORMATS = ("mdlm",)


def source(config) -> tuple[str, str] | None:
    """(format, directory) of config.init.from, or None for a random initialisation."""
    spec = str(config.get("init", {}).get("from", "") or "")
    if not spec:
        return None
    fmt, sep, path = spec.partition(":")
    if not sep or fmt not in FORMATS or not path:
        raise ValueError(f"init.from={spec!r}: expected FORMAT:DIRECTORY with FORMAT one of "
                         f"{', '.join(FORMATS)}, e.g. --config.init.from=mdlm:/data/mdlm-owt")
    return fmt, path


def _mismatches(config, ckpt: hf.Checkpoint) -> list[str]:
    m = config.model
    want = {"family": "mdlm", "mlp_type": "gelu", **mdlm.config_values(ckpt.config)}
    out = []
    for name, value in want.items():
        have = m.get(name)
        if have != value:
            origin = dict(mdlm.CONFIG_FIELDS).get(name)
            why = f" (config.json {origin})" if origin else ""
            out.append(f"--config.model.{name}={value}{why}, the config has {have!r}")
    return out


def check(config) -> None:
    """Raises before any work unless config.init.from can initialise this config's network."""
    src = source(config)
    if src is None:
        return
    _, path = src
    ckpt = hf.open_dir(path, model_type="mdlm", hint=mdlm.HINT)
    problems = _mismatches(config, ckpt)
    if problems:
        raise ValueError(
            f"init.from={config.init['from']!r}: the config describes another network than the checkpoint; "
            "set these fields (or use the checkpoint that matches the config):\n  " + "\n  ".join(problems))
    model = models.build(config)
    ckpt, model, tensors, stored = mdlm.open_checked(path, model)
    mdlm.check_rotary(ckpt, stored, model)
    vocab.check_tokenizer(tokenizers.get(config.data), vocab_size=model.vocab_size,
                          model=f"the MDLM checkpoint {ckpt.directory}", field="config.data.tokenizer")


def load_params(config, mesh, abstract_params, param_shardings):
    """The checkpoint's weights as the train state's params: same tree, dtypes and shardings."""
    _, path = source(config)
    ckpt, model, tensors, stored = mdlm.open_checked(path, models.build(config))
    return mdlm.read_params(ckpt, model, tensors, stored, mesh, abstract_params, param_shardings)
