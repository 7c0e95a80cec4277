"""The configuration schema: every field, its default, and validation with actionable errors.

Config files in `configs/` start from `base()` and override fields; the returned ConfigDict is
locked, so a typo (`--config.trian.lr=...`) fails at parse time. `validate()` checks values
against each other and the devices before anything expensive runs.
"""

from __future__ import annotations

import ml_collections

DTYPES = ("float32", "bfloat16", "float16", "float64")
PRECISIONS = ("float64", "float32", "float32-high", "bfloat16", "float16", "float32-pytorch")


def base() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0

    # What is trained: "mdm" (masked diffusion) or "arm" (autoregressive baseline, causal mask).
    c.objective = ml_collections.ConfigDict()
    c.objective.kind = "continuous"      # "continuous" NELBO | "discrete" (time-agnostic, over n) | "arm"
    c.objective.schedule = "linear"      # linear | cosine | polynomial | loglinear
    c.objective.schedule_k = 2.0         # polynomial degree
    c.objective.schedule_eps = 1e-3      # log-linear floor alpha(1)
    c.objective.low_discrepancy = True   # antithetic t (or n) across the global batch
    c.objective.t_min = 1e-5             # continuous NELBO: t ~ U[t_min, 1]

    c.model = ml_collections.ConfigDict()
    c.model.family = "transformer"       # the architecture: a key of mdm_jax.models.FAMILIES
    c.model.vocab_size = 256             # V real tokens; the mask token is id V
    c.model.max_len = 256                # longest sequence the model accepts
    c.model.num_layers = 6
    c.model.num_heads = 8
    c.model.emb_dim = 512
    c.model.mlp_dim = 1376
    c.model.mlp_type = "glu"             # "glu" (SwiGLU) | "gelu"
    c.model.dropout = 0.0
    c.model.time_conditioning = True     # adaLN conditioning on t (ignored for ARM)
    c.model.time_emb_dim = 128
    c.model.rope_base = 10000.0
    c.model.scan_layers = False          # nn.scan over the blocks: compile time flat in depth
    c.model.remat = "none"               # none | full | dots: what a block keeps (use with scan_layers)
    c.model.attention = "auto"           # auto | xla | cudnn | splash | splash_interpret

    # Dtype policy: three separate, named precisions.
    c.dtype = ml_collections.ConfigDict()
    c.dtype.param = "float32"            # parameter storage and optimizer
    c.dtype.compute = "float32"          # activations/matmuls ("bfloat16" on accelerators)
    c.dtype.sampling = "float64"         # categorical draws in samplers (see mdm_jax.precision)

    c.data = ml_collections.ConfigDict()
    c.data.dataset = "embedded"          # embedded | text8 | lm1b | openwebtext
    c.data.tokenizer = "byte"            # byte | char | gpt2
    c.data.gpt2_vocab_dir = ""           # local dir with GPT-2 vocab.json + merges.txt
    c.data.data_dir = ""                 # TFDS data_dir ("" -> ~/tensorflow_datasets); gs:// needs gcsfs
    c.data.packed_dir = ""               # local dir for the packed token files ("" -> inside
                                         # data_dir; required when data_dir is remote, e.g. gs://)
    c.data.seq_len = 256
    c.data.shuffle = True

    c.train = ml_collections.ConfigDict()
    c.train.batch_size = 16              # global batch (all devices, all hosts)
    c.train.num_steps = 1000
    c.train.lr = 3e-4
    c.train.lr_schedule = "cosine"       # cosine | constant (both after linear warm-up)
    c.train.warmup_steps = 100
    c.train.min_lr_ratio = 0.1
    c.train.weight_decay = 0.0
    c.train.b1 = 0.9
    c.train.b2 = 0.999
    c.train.grad_clip = 1.0
    c.train.ema_decay = 0.9999
    c.train.grad_accum_steps = 1
    c.train.log_every = 25
    c.train.eval_every = 500
    c.train.eval_batches = 8
    c.train.checkpoint_every = 500
    c.train.keep_checkpoints = 3
    c.train.plot = True                  # write loss_curve.png at the end
    c.train.sample_at_end = False        # print a few first-hitting samples after training
    c.train.profile_steps = ()           # (start, stop): profiler trace of those steps in workdir/profile

    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = -1                     # -1 fills the remaining devices
    c.mesh.fsdp = 1
    c.mesh.tensor = 1

    c.sampling = ml_collections.ConfigDict()
    c.sampling.method = "first_hitting"  # first_hitting | ancestral | autoregressive
    c.sampling.precision = "float64"     # one of PRECISIONS
    c.sampling.num_steps = 1024          # ancestral only
    c.sampling.tokens_per_step = 1       # first_hitting parallel variant
    c.sampling.cache = True              # ancestral: reuse output when nothing changed
    c.sampling.factorized = False        # ancestral: Bernoulli unmask + V-way token
    c.sampling.temperature = 1.0
    c.sampling.num_samples = 8
    c.sampling.batch_size = 8
    c.sampling.seq_len = 0               # 0 -> data.seq_len
    c.sampling.use_ema = True
    c.sampling.prompt = ""               # text prompt (prefix), tokenized with the data tokenizer

    c.eval = ml_collections.ConfigDict()
    c.eval.num_batches = 16
    c.eval.mc_draws = 1                  # Monte Carlo draws of t per sequence for the NELBO
    c.eval.evaluator_workdir = ""        # ARM workdir used for generative perplexity
    c.eval.use_ema = True

    c.experiment = ml_collections.ConfigDict()
    c.experiment.name = ""
    return c


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
    import importlib.util
    import os

    if relative_to is not None:
        path = os.path.join(os.path.dirname(os.path.abspath(relative_to)), path)
    name = "_mdm_config_" + os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg) if arg else module.get_config()
