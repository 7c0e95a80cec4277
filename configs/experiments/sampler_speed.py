"""Experiment sampler_speed (the paper's 20x claim): first-hitting vs cached ancestral, ARM cache.

Command (from the repository root; 3 min 36 s on the 2-core development CPU at load 3.4):
  python -m mdm_jax.main --mode=experiment --config=configs/experiments/sampler_speed.py \\
      --workdir=workdirs/sampler_speed
Accelerators (the full owt_mdm_small shape, L=1024, N up to 10^4 at both vocabularies):
  python -m mdm_jax.main --mode=experiment --config=configs/experiments/sampler_speed.py:owt \\
      --workdir=DIR

Measured (2026-11-27): on the CPU, FHS 74x faster than cached ancestral at N=10^4 (V=256) and 86x at
N=1,024 (V=50,257). On one H200 (`:owt` with vocab_sizes=256,50257, steps=1024,10000 for each,
batch_size=1, repeats=1, precision=float64, arm_lengths=256,1024: benchmarks/accelerator.sh):
11.2x at N=10^4 with V=50,257 and 1.25x with V=256; docs/results/nvidia-h200/.

What you should see: see mdm_jax/experiments/sampler_speed.py. On the CPU the GPT-2 vocabulary
runs only up to N = 1024 (one ancestral step draws L x 50,258 categories); the cost model
extrapolates to 10^4 (experiment.predict_steps). `:tiny` is the CI size.

The model: owt_mdm_small's architecture (GELU MLP 4x, adaLN time conditioning, RoPE) scaled down
to 2 layers x width 256 (4 heads), float32 compute (bf16 matmuls are slow on CPUs), untrained.
Fields: experiment.* (vocab_sizes, steps, predict_steps, repeats, arm_vocab, arm_lengths), described
with their defaults in mdm_jax/config_experiments.py (EXPERIMENT_FIELDS); the MDM's L is data.seq_len (or
sampling.seq_len), the batch sampling.batch_size and the draws' precision sampling.precision.
"""

from mdm_jax import config as config_lib

# Every variant is owt_mdm_small's architecture; cpu and tiny scale it down below.
_BASES = {"cpu": "../owt_mdm_small.py", "tiny": "../owt_mdm_small.py", "owt": "../owt_mdm_small.py"}


def get_config(variant="cpu"):
    c = config_lib.with_experiment(
        config_lib.load_variant(variant, _BASES, relative_to=__file__), "sampler_speed"
    )
    e = c.experiment
    c.sampling.precision = "float32"
    if variant == "owt":
        c.sampling.batch_size = 8
        e.steps = (1024, 2048, 4096, 10000)  # for every vocabulary
        e.arm_lengths = (128, 256, 512, 1024)
        return c
    # cpu and tiny (the experiment fields' defaults are cpu's).
    c.model.num_layers = 2
    c.model.emb_dim = 256
    c.model.num_heads = 4
    c.model.mlp_dim = 1024
    c.model.dropout = 0.0
    c.dtype.compute = "float32"
    c.data.seq_len = 16
    c.sampling.batch_size = 1
    if variant == "tiny":
        c.model.num_layers = 1
        c.model.emb_dim = 64
        c.model.num_heads = 2
        c.model.mlp_dim = 128
        c.data.seq_len = 8
        e.vocab_sizes = (256, 4096)
        e.steps = ((8, 64, 512), (8, 64))
        e.predict_steps = (1000,)
        e.repeats = 1
        e.arm_lengths = (16, 64)
    return c
