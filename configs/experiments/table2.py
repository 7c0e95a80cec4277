"""Experiment table2 (the paper's Table 2): MDLM's OpenWebText checkpoint sampled by MDLM's own sampler
in 32-bit, 64-bit and 64-bit with 24-bit uniforms, plus first-hitting (exact and parallel) in 64-bit,
each scored by GPT-2 Large: gen PPL (MDLM's and the project's definitions) and entropy with standard
errors, next to the paper's values.

Command (from the repository root, on a GPU host holding the two Hugging Face directories; how to get
them and the expected time: README.md, "Reproduce Table 2 with the published checkpoints"):
  python -m mdm_jax.main --mode=experiment --config=configs/experiments/table2.py \\
      --workdir=workdirs/table2 --config.experiment.mdlm_dir=checkpoints/mdlm-owt \\
      --config.experiment.evaluator_dir=checkpoints/gpt2-large

What you should see (summary.md, table2.png, table2.json / table2_rows.csv, table2_samples.jsonl):
the paper found 32-bit gen PPL 31.24 / entropy 5.17 against 126.11 / 5.66 in 64-bit, and 28.64 / 5.12
for 64-bit arithmetic on 32-bit's uniforms: the float32 uniform grid starves low-probability tokens,
which lowers entropy and "improves" gen PPL. First-hitting draws one well-scaled V-way categorical
per token and stays at the 64-bit values. With 8 samples the entropy's standard error is ~0.01-0.02.

`:tiny` is the CI size, on the random-weight MDLM fixture (tests/test_experiments_table2.py).
Fields: experiment.* (mdlm_dir, evaluator_dir, rows, mdlm_dtype, evaluator_dtype), described with
their defaults in mdm_jax/config_experiments.py (EXPERIMENT_FIELDS); the samplers' settings are sampling.*
(num_steps of MDLM's sampler, tokens_per_step of parallel first-hitting, num_samples, batch_size,
seq_len: 0 = the MDLM model's length).
"""

from mdm_jax import config as config_lib

VARIANTS = ("paper", "tiny")  # both start from config.base(): the model comes from experiment.mdlm_dir


def get_config(variant="paper"):
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r} after ':' in --config: use {' or '.join(VARIANTS)}")
    c = config_lib.with_experiment(config_lib.base(), "table2")
    s = c.sampling
    s.num_steps = 2048  # the paper's Table 2
    s.tokens_per_step = 4
    s.num_samples = 8  # the paper's Table 2
    s.batch_size = 8
    s.seq_len = 0  # 0 -> the MDLM model's length (1024 for mdlm-owt)
    if variant == "tiny":
        c.experiment.mdlm_dir = "tests/fixtures/mdlm-tiny"
        c.experiment.evaluator_dir = ""  # the test writes a random-weight GPT-2 of the real vocabulary
        s.num_steps = 64
        s.num_samples = 4
        s.batch_size = 2
    return c
