"""Networks, and the registry of model families: `build(config)` is the one place a config becomes
a module.

A family is one architecture with the properties the rest of the package asks of it (can it be
causal, does it take t). Code outside this module never tests a family's name: a new architecture
is one entry in `FAMILIES` (its module, its `build`, its properties).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp

from mdm_jax import errors, objectives
from mdm_jax.models import attention
from mdm_jax.models.dit import DiT
from mdm_jax.models.gpt2 import GPT2
from mdm_jax.models.transformer import Transformer, check_remat

# Model fields that change how the network is executed or laid out, not the function it computes:
# a checkpoint restores under any of their values (checkpoint.py converts the scan layout), so a
# trained run may be reused or resumed with them changed.
EXECUTION_FIELDS = ("scan_layers", "remat", "attention")

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def dtype_of(name: str, field: str):
    if name not in _DTYPES:
        raise ValueError(f"unknown {field}={name!r}: choose one of {', '.join(_DTYPES)}")
    return _DTYPES[name]


@dataclasses.dataclass(frozen=True)
class Family:
    """A model architecture: how a config builds it and what it can do."""

    name: str  # the value of config.model.family
    build: Callable  # (config, objective: objectives.Objective) -> flax module
    causal: tuple  # attention modes it supports: (False,), (True,) or (False, True)
    time_conditioned: Callable  # config -> whether the built network takes t
    selects_attention: bool = False  # honours model.attention (recorded in every run's metadata)


def _network_fields(config) -> dict:
    """The constructor arguments every family takes from config.model and config.dtype."""
    m = config.model
    return dict(
        vocab_size=m.vocab_size,
        max_len=m.max_len,
        num_layers=m.num_layers,
        num_heads=m.num_heads,
        emb_dim=m.emb_dim,
        mlp_dim=m.mlp_dim,
        dropout=m.dropout,
        dtype=dtype_of(config.dtype.compute, "dtype.compute"),
        param_dtype=dtype_of(config.dtype.param, "dtype.param"),
    )


def _require_gelu(config, family: str) -> None:
    """MDLM's DiT and GPT-2 have a fixed GELU MLP: a config asking for another is refused."""
    if config.model.mlp_type != "gelu":
        raise errors.ConfigError(
            f"model.family={config.model.family!r} has {family}'s GELU MLP, not model.mlp_type="
            f"{config.model.mlp_type!r}: set --config.model.mlp_type=gelu"
        )


def _build_transformer(config, objective) -> Transformer:
    m = config.model
    check_remat(m.remat)
    return Transformer(
        **_network_fields(config),
        mlp_type=m.mlp_type,
        causal=objective.causal,
        time_conditioning=objectives.uses_time(config),
        time_emb_dim=m.time_emb_dim,
        rope_base=m.rope_base,
        scan_layers=bool(m.scan_layers),
        remat=m.remat,
        attention=attention_choice(config).implementation,
    )


def attention_choice(config) -> attention.Choice:
    """The attention kernel `config.model.attention` resolves to on this backend for the run's
    shapes (data.seq_len); recorded in run metadata. Raises for a kernel that cannot run here."""
    m = config.model
    return attention.select(
        m.attention,
        backend=jax.default_backend(),
        dtype=dtype_of(config.dtype.compute, "dtype.compute"),
        seq_len=int(config.data.seq_len),
        num_heads=int(m.num_heads),
        head_dim=int(m.emb_dim) // int(m.num_heads),
        causal=objectives.of(config).causal,
    )


def _build_dit(config, objective) -> DiT:
    _require_gelu(config, "MDLM")
    return DiT(
        **_network_fields(config),
        cond_dim=config.model.time_emb_dim,
        time_conditioning=objectives.uses_time(config),
        rope_base=config.model.rope_base,
    )


def _build_gpt2(config, objective) -> GPT2:
    del objective  # causal only: family_of has checked the objective
    _require_gelu(config, "GPT-2")
    return GPT2(**_network_fields(config))


FAMILIES = {
    f.name: f
    for f in (
        Family(
            name="transformer",
            build=_build_transformer,
            causal=(False, True),
            time_conditioned=objectives.uses_time,
            selects_attention=True,
        ),
        # MDLM's DiT (mdm_jax.models.dit): loads MDLM checkpoints (init_from); model.time_emb_dim is its
        # cond_dim.
        Family(name="mdlm", build=_build_dit, causal=(False,), time_conditioned=objectives.uses_time),
        # GPT-2 (mdm_jax.models.gpt2), an ARM: loads GPT-2 checkpoints (init_from); no time input.
        Family(name="gpt2", build=_build_gpt2, causal=(True,), time_conditioned=lambda config: False),
    )
}


def family_of(config) -> Family:
    """The family named by config.model.family, checked against the objective's attention mode."""
    name = config.model.family
    if name not in FAMILIES:
        raise errors.ConfigError(f"unknown model.family {name!r}: choose one of {', '.join(FAMILIES)}")
    family = FAMILIES[name]
    objective = objectives.of(config)
    if objective.causal not in family.causal:
        mode = "causal" if objective.causal else "bidirectional"
        raise errors.ConfigError(
            f"model.family={name!r} has no {mode} form, which objective.kind="
            f"{objective.name!r} needs; choose another --config.model.family or objective"
        )
    return family


def build(config):
    """The network for `config`: its family's module, causal exactly when the objective is."""
    return family_of(config).build(config, objectives.of(config))
