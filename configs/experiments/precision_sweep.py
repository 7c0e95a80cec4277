"""Experiment precision_sweep (the paper's Table 2 / Figure 7): sampler x precision x steps N.

Commands (from the repository root):
  # quickstart MDM + quickstart ARM as evaluator (train both first; ~10 minutes on 2 CPU cores):
  python -m mdm_jax.main --mode=experiment --config=configs/experiments/precision_sweep.py \\
      --workdir=workdirs/precision_sweep
  # exact reference model, no training needed (~5 minutes on 2 CPU cores):
  python -m mdm_jax.main --mode=experiment --config=configs/experiments/precision_sweep.py:reference \\
      --workdir=workdirs/precision_sweep_reference
  # accelerators, the exact reference model at the GPT-2 vocabulary (V = 50,257, N up to 10,000):
  python -m mdm_jax.main --mode=experiment --config=configs/experiments/precision_sweep.py:reference_gpt2 \\
      --workdir=workdirs/precision_sweep_reference_gpt2
  # accelerators, the paper's setting (owt_mdm_small + owt_arm_small workdirs, N up to 10,000):
  python -m mdm_jax.main --mode=experiment --config=configs/experiments/precision_sweep.py:owt \\
      --workdir=DIR --config.experiment.checkpoint_workdir=... --config.experiment.evaluator_workdir=...

Measured (2026-11-27): `:reference` in 4 min 39 s on the 2-core CPU: bfloat16 (V+1)-way ancestral
ends 26.6 standard errors below float64 at N=2048. `:reference_gpt2` in about 100 s on one H200:
float32 / float32-pytorch ancestral at N=10^4 end at entropy 1.45 / 1.51 nats against 2.70 in
float64 (exact 2.66; grid law 1.42 / 1.49); docs/results/nvidia-h200/.

What you should see: see mdm_jax/experiments/precision_sweep.py (bfloat16 (V+1)-way ancestral
collapses in entropy and gen PPL as N grows; float64, factorized and first-hitting stay put; the
32-bit effect needs V N near 2^24, i.e. the GPT-2 vocabulary). `:tiny` is the CI size.
"""

from mdm_jax import config as config_lib

_BASES = {
    "quickstart": "../quickstart.py",
    "reference": "../quickstart.py",
    "reference_gpt2": "../quickstart.py",
    "tiny": "../quickstart.py",
    "owt": "../owt_mdm_small.py",
}


def get_config(variant="quickstart"):
    c = config_lib.with_experiment(
        config_lib.load_variant(variant, _BASES, relative_to=__file__), "precision_sweep"
    )
    e = c.experiment
    c.sampling.num_samples = 8  # per (sampler, precision, N) cell
    c.sampling.batch_size = 8
    c.sampling.tokens_per_step = 4  # the parallel first-hitting sampler
    if variant in ("reference", "reference_gpt2", "tiny"):
        e.model = "reference"
        c.sampling.num_samples = 16
        c.sampling.batch_size = 16
        c.sampling.seq_len = 32
    if variant == "reference":
        e.steps = (32, 320, 2048)
    elif variant == "reference_gpt2":
        # The 32-bit effect at full strength, without a trained model: a tail token has
        # probability ~1e-5, so with N >= 1024 steps its (V+1)-way share per step falls below
        # float32's 2^-24 grid. ~1e12 category draws: a GPU job (minutes), hours on a CPU.
        e.reference_vocab = 50257
        e.steps = (1024, 4096, 10000)
        e.predict_low_precision = False  # exact bfloat16 enumeration is too slow for V = 50,257
    elif variant == "tiny":
        # CI size: the reference model, three precisions, two N. bfloat16 carries the assertion
        # that (V+1)-way ancestral loses entropy with N; see precision_sweep.py for why float32's
        # effect needs far more draws than a CI run can make on a CPU.
        e.precisions = ("float32-pytorch", "bfloat16", "float64")
        e.steps = (16, 256)
        c.sampling.seq_len = 16
        c.sampling.num_samples = 32
        c.sampling.batch_size = 32
        e.predict_points = 8
        e.predict_low_precision = False
    elif variant == "owt":
        e.checkpoint_workdir = ""
        e.evaluator_workdir = ""
        e.steps = (1024, 2048, 4096, 10000)
        c.sampling.num_samples = 32
        c.sampling.batch_size = 8
        e.predict_low_precision = False  # exact bfloat16 enumeration is too slow for V = 50,257
    return c
