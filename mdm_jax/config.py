"""The configuration schema: every field with its type, default and a one-line description.

`SCHEMA` (fields of every run, here) and `EXPERIMENT_FIELDS` (the `experiment.*` fields of each
experiment, in `mdm_jax/config_experiments.py`) are the one place fields are declared, as
`Field`s and `Group`s (`mdm_jax/config_fields.py`); `base()` is built from them, so a field
cannot exist without its description. A field's type is its default's type, and ml_collections
enforces it on every override (`--config.train.lr=1e-3`; an int may replace a float).

Config files in `configs/` start from `base()` (or from another config file, `load_file`) and state
only what differs. The returned ConfigDict is locked by the CLI, so a typo (`--config.trian.lr=...`)
fails at parse time. List-valued fields are tuples: `--config.experiment.steps=16,256` on the
command line; a tuple of strings also accepts one comma-separated string
(`--config.experiment.precisions=float32,float64`, read with `experiments.parse_list`).

`describe(config)` renders a resolved config with each field's description (`--print_config`).
Checks of values against each other and the devices live with the code that uses them
(`train.check_config`, `data.pipeline.validate`), and run before anything expensive.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Mapping

import ml_collections

from mdm_jax.config_experiments import EXPERIMENT_FIELDS
from mdm_jax.config_fields import Field, Group

F = Field
SCHEMA: dict[str, Field | Group] = {
    "seed": F(0, "root of every random stream: init, data order, training noise, sampling, eval"),
    "objective": Group(
        "what is trained and how its loss is estimated",
        {
            "kind": F("continuous", "continuous (NELBO over t) | discrete (time-agnostic ELBO over n) | arm"),
            "schedule": F("linear", "masking schedule alpha(t): linear | cosine | polynomial | loglinear"),
            "schedule_k": F(2.0, "degree of the polynomial schedule"),
            "schedule_eps": F(1e-3, "floor alpha(1) of the loglinear schedule"),
            "low_discrepancy": F(True, "stratified t (or n) across the global batch, one shared uniform"),
            "t_min": F(1e-5, "continuous NELBO: t ~ U[t_min, 1]"),
        },
    ),
    "model": Group(
        "the network",
        {
            "family": F("transformer", "architecture: a key of mdm_jax.models.FAMILIES"),
            "vocab_size": F(256, "V real tokens (must equal the tokenizer's); id V is the mask / BOS token"),
            "max_len": F(256, "longest sequence the model accepts (>= data.seq_len)"),
            "num_layers": F(6, "transformer blocks"),
            "num_heads": F(8, "attention heads (must divide emb_dim)"),
            "emb_dim": F(512, "width of the residual stream"),
            "mlp_dim": F(1376, "hidden width of each MLP"),
            "mlp_type": F("glu", "glu (SwiGLU) | gelu"),
            "dropout": F(0.0, "dropout rate while training"),
            "time_conditioning": F(
                True, "adaLN-Zero conditioning on t; False = time-free (ignored by the ARM)"
            ),
            "time_emb_dim": F(128, "width of the sinusoidal time embedding"),
            "rope_base": F(10000.0, "base of the rotary position embedding frequencies"),
            "scan_layers": F(
                False,
                "nn.scan over the blocks (parameters stacked on a 'layers' axis): compile time "
                "flat in depth; checkpoints convert between the layouts on restore",
            ),
            "remat": F(
                "none",
                "what a block keeps for the backward pass: none | full | dots (matmul outputs); "
                "use with scan_layers",
            ),
            "attention": F(
                "auto",
                "attention kernel: auto (cuDNN on GPU in 16-bit, XLA otherwise) | xla | cudnn | "
                "splash (TPU) | splash_interpret (the Splash kernel interpreted, for tests)",
            ),
        },
    ),
    "dtype": Group(
        "parameter and compute precision (sampling precision: sampling.precision)",
        {
            "param": F("float32", "storage of parameters and optimizer state: float32 | bfloat16 | float16"),
            "compute": F("float32", "activations and matmuls: float32 | bfloat16 (accelerators) | float16"),
        },
    ),
    "data": Group(
        "the dataset and its tokenizer",
        {
            "dataset": F("embedded", "embedded (offline English corpus) | text8 | lm1b | openwebtext"),
            "tokenizer": F("byte", "byte | char (text8) | gpt2"),
            "gpt2_vocab_dir": F("", "local directory with GPT-2's vocab.json and merges.txt"),
            "data_dir": F("", 'TFDS data_dir ("" = ~/tensorflow_datasets); gs:// needs the gcs extra'),
            "packed_dir": F(
                "", 'local dir of the packed token files ("" = inside data_dir; needed if remote)'
            ),
            "seq_len": F(256, "training sequence length L"),
            "shuffle": F(True, "shuffle the training sequences (seeded by seed)"),
        },
    ),
    "train": Group(
        "the optimisation loop",
        {
            "batch_size": F(16, "global batch in sequences (all devices, all hosts)"),
            "num_steps": F(1000, "optimizer steps"),
            "lr": F(3e-4, "peak AdamW learning rate"),
            "lr_schedule": F("cosine", "cosine | constant, both after the linear warm-up"),
            "warmup_steps": F(100, "steps of linear warm-up from 0 to lr"),
            "min_lr_ratio": F(0.1, "cosine: final learning rate as a fraction of lr"),
            "weight_decay": F(0.0, "AdamW decoupled weight decay"),
            "b1": F(0.9, "AdamW beta1"),
            "b2": F(0.999, "AdamW beta2"),
            "grad_clip": F(1.0, "clip the global gradient norm to this (0 = off)"),
            "ema_decay": F(0.9999, "decay of the parameter EMA used by eval and sampling"),
            "grad_accum_steps": F(1, "micro-batches per step (each batch_size / grad_accum_steps)"),
            "log_every": F(25, "steps between training log lines / metrics records"),
            "eval_every": F(500, "steps between validation evaluations (and at the end)"),
            "eval_batches": F(8, "validation batches of each in-training evaluation"),
            "checkpoint_every": F(500, "steps between checkpoints (and at the end)"),
            "keep_checkpoints": F(3, "most recent checkpoints kept"),
            "plot": F(True, "write loss_curve.png into the workdir at the end"),
            "sample_at_end": F(False, "print a few samples (sampling.*) after training"),
            "profile_steps": F(
                (),
                "(start, stop): a jax.profiler trace of those steps in workdir/profile "
                "(process 0; () = none)",
            ),
            "nonfinite": F(
                "stop",
                "a step with a non-finite loss, gradient or update is never applied: stop (exit 3) | skip it",
            ),
            "max_nonfinite_skips": F(10, "nonfinite=skip: stop after this many non-finite steps in a row"),
            "checkpoint_fallback": F(True, "unreadable latest checkpoint: warn and restore the one before"),
        },
    ),
    "init_from": F(
        "",
        'weights of a fresh run: "" (random) | mdlm:DIR | gpt2:DIR (a Hugging Face '
        "checkpoint directory, mdm_jax/interop); a resumed run restores its own checkpoint",
    ),
    "mesh": Group(
        "device mesh; -1 fills the remaining devices",
        {
            "data": F(-1, "data-parallel axis"),
            "fsdp": F(1, "fully sharded data-parallel axis: shards parameters and optimizer state"),
            "tensor": F(1, "tensor-parallel axis: shards heads and MLP"),
        },
    ),
    "sampling": Group(
        "sampling (--mode=sample, and the experiments' samplers)",
        {
            "method": F(
                "first_hitting",
                "first_hitting | ancestral | mdlm_ancestral (MDMs; the last is MDLM's "
                "own procedure) | autoregressive (ARM)",
            ),
            "precision": F("float64", "how categorical draws are made: one of mdm_jax.sampling.PRECISIONS"),
            "num_steps": F(1024, "ancestral: steps N"),
            "tokens_per_step": F(
                1, "first_hitting (and precision_sweep's parallel): tokens unmasked per call"
            ),
            "cache": F(True, "ancestral: reuse the network output when no token changed"),
            "factorized": F(False, "ancestral: Bernoulli unmask then a V-way token draw"),
            "uniform_bits": F(
                0,
                "mdlm_ancestral: uniforms on the grid k 2^-b (0 = the policy's own; 24 with "
                "float64 = Table 2's third row)",
            ),
            "temperature": F(1.0, "softmax temperature of the model's predictions"),
            "num_samples": F(8, "sequences to draw (experiments: per cell)"),
            "batch_size": F(8, "sequences per sampler call"),
            "seq_len": F(0, "sample length (0 = data.seq_len)"),
            "use_ema": F(True, "sample from the EMA parameters"),
            "prompt": F("", "text prefix, tokenized with the data tokenizer"),
        },
    ),
    "eval": Group(
        "likelihood evaluation (--mode=eval) and generative perplexity",
        {
            "num_batches": F(16, "validation batches"),
            "mc_draws": F(1, "Monte Carlo draws of t (or n) per sequence for the NELBO"),
            "evaluator_workdir": F("", "ARM workdir whose model scores samples (generative perplexity)"),
            "evaluator": F(
                "", "gpt2:DIR: a Hugging Face GPT-2 directory scores samples instead (e.g. gpt2-large)"
            ),
            "gen_ppl_definition": F(
                "project",
                "project (ids scored as sampled) | mdlm (decode, retokenise with "
                "the evaluator's tokenizer, chunk: docs/evaluation.md)",
            ),
            "use_ema": F(True, "evaluate the EMA parameters"),
        },
    ),
    "experiment": Group(
        "--mode=experiment; the fields of each experiment: EXPERIMENT_FIELDS",
        {
            "name": F("", 'the experiment: a key of EXPERIMENT_FIELDS ("" outside configs/experiments/)'),
        },
    ),
}


def _build(fields: Mapping[str, Field | Group]) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    for name, f in fields.items():
        c[name] = _build(f.fields) if isinstance(f, Group) else f.default
    return c


def _experiment_fields(name: str) -> dict[str, Field]:
    if name not in EXPERIMENT_FIELDS:
        raise ValueError(
            f"unknown experiment.name={name!r}: choose one of {', '.join(EXPERIMENT_FIELDS)} "
            "(use one of the configs in configs/experiments/)"
        )
    return {**SCHEMA["experiment"].fields, **EXPERIMENT_FIELDS[name]}


def schema(experiment: str = "") -> dict[str, Field | Group]:
    """The schema of a config: SCHEMA, plus the fields of `experiment` in the experiment group."""
    if not experiment:
        return SCHEMA
    group = SCHEMA["experiment"]
    return {**SCHEMA, "experiment": Group(group.doc, _experiment_fields(experiment))}


def base(experiment: str = "") -> ml_collections.ConfigDict:
    """Every field at its default; with `experiment`, also that experiment's fields (name set)."""
    c = _build(schema(experiment))
    c.experiment.name = experiment
    return c


def with_experiment(config, name: str) -> ml_collections.ConfigDict:
    """`config` with its experiment group replaced by experiment `name`'s fields at their defaults."""
    with config.unlocked():
        config.experiment = base(name).experiment
    return config


def fields(experiment: str = "") -> dict[str, Field]:
    """{"group.field": Field} of every leaf of the schema (with `experiment`'s fields)."""
    out = {}
    for name, f in schema(experiment).items():
        if isinstance(f, Group):
            out.update({f"{name}.{k}": v for k, v in f.fields.items()})
        else:
            out[name] = f
    return out


def _leaves(c, prefix=""):
    for k, v in c.items():
        if isinstance(v, ml_collections.ConfigDict):
            yield from _leaves(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


def describe(config) -> str:
    """The resolved config, one line per field in schema order: value, type, description, and the
    default when the value differs from it; fields outside the schema are listed last."""
    name = str(config.experiment.get("name", "")) if "experiment" in config else ""
    name = name if name in EXPERIMENT_FIELDS else ""
    defaults = dict(_leaves(base(name)))
    values = dict(_leaves(config))
    rows = []
    for top, f in schema(name).items():
        group = f.fields.items() if isinstance(f, Group) else [("", f)]
        if isinstance(f, Group):
            rows.append((f"# {top}: {f.doc}", None, None))
        for k, field in group:
            path = f"{top}.{k}" if k else top
            if path not in values:
                continue
            value = _plain(values.pop(path))
            note = f"{field.type_name}: {field.doc}"
            if value != _plain(defaults[path]):
                note += f" [default {_plain(defaults[path])!r}]"
            rows.append((path, repr(value), note))
    if values:
        rows.append(("# not in the schema (no code reads them)", None, None))
        rows += [(path, repr(v), type(v).__name__) for path, v in values.items()]
    width = max(len(p) for p, v, _ in rows if v is not None)
    vwidth = min(24, max(len(v) for _, v, _ in rows if v is not None))
    return "\n".join(p if v is None else f"{p:<{width}} = {v:<{vwidth}}  # {n}" for p, v, n in rows) + "\n"


def _plain(value):
    """Tuples and lists compare (and print) alike: a config read back from JSON holds lists."""
    if isinstance(value, (list, tuple)):
        return tuple(_plain(v) for v in value)
    return value


def from_dict(values: Mapping) -> ml_collections.ConfigDict:
    """A config from its `to_dict()` / JSON form, on top of `base()` (fields added to the schema
    since get their defaults; fields no longer in it are kept). JSON lists become tuples."""
    exp = values.get("experiment", {}) if isinstance(values, Mapping) else {}
    name = exp.get("name", "") if isinstance(exp, Mapping) else ""
    c = base(name if name in EXPERIMENT_FIELDS else "")
    with c.unlocked():
        _merge(c, values)
    return c


def _merge(node, values: Mapping):
    for k, v in values.items():
        if k in node and isinstance(node[k], ml_collections.ConfigDict) and isinstance(v, Mapping):
            _merge(node[k], v)
        else:
            v = _plain(v) if isinstance(v, list) else v
            try:
                node[k] = v
            except TypeError:  # recorded under an older schema (e.g. a list as a string): kept as is
                with node.ignore_type():
                    node[k] = v


def load_variant(variant: str, bases: dict, *, relative_to: str):
    """The base config of a `--config=file.py:variant`: `bases` maps each variant to a config file
    beside `relative_to` (e.g. {"quickstart": "../quickstart.py"}); an unknown variant names the
    valid ones."""
    if variant not in bases:
        raise ValueError(f"unknown variant {variant!r} after ':' in --config: use one of {', '.join(bases)}")
    return load_file(bases[variant], relative_to=relative_to)


def load_file(path: str, arg: str | None = None, *, relative_to: str | None = None):
    """`get_config(arg)` of a config file; `relative_to=__file__` resolves `path` beside the caller.

    Lets one config build on another (e.g. the ARM twin of an MDM config) without copying fields.
    """
    if relative_to is not None:
        path = os.path.join(os.path.dirname(os.path.abspath(relative_to)), path)
    name = "_mdm_config_" + os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg) if arg else module.get_config()
