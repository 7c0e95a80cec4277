"""Experiment mdm_vs_arm: the decision page for an MDM and an ARM trained at the same budget.

Command (from the repository root; trains the quickstart MDM, its ARM twin and a second ARM as
evaluator for 300 steps x batch 16 each, then samples and times them; 7 min 42 s on the 2-core
development CPU at load 1.7-2.4):
  python -m mdm_jax.main --mode=experiment --config=configs/experiments/mdm_vs_arm.py \
      --workdir=workdirs/mdm_vs_arm
To use already trained runs instead (e.g. the quickstart pair):
  ... --config.experiment.mdm_workdir=workdirs/quickstart \
      --config.experiment.arm_workdir=workdirs/quickstart_arm

What you should see (summary.md = the page, perplexity.png, genppl_vs_entropy.png, sampling_time.png,
throughput.png, mdm_vs_arm.json and CSVs): the ARM ahead on validation perplexity (the MDM number
is a bound) and on gen PPL at matched entropy, FHS slower per sequence than the KV-cached ARM with
the gap growing with L (FHS re-runs the full sequence L times), similar training tokens/s, and a
verdict computed from those numbers.
Measured with this command (2026-11-27, the quickstart recipe: L=64, discrete ELBO, time-free;
evaluator = a second ARM, seed 1): ARM perplexity 7.7 vs MDM bound 24.9; at the real-text entropy
(2.66 nats) gen PPL 7.4 (ARM) vs 64.0 (MDM, FHS float64); per sequence at L=64, 46 ms (ARM, KV
cache) vs 282 ms (FHS), the ratio growing from 2.2x at L=16; training 2,818 vs 2,800 tokens/s;
verdict: the ARM wins all three criteria.

Fields: experiment.* (mdm_workdir, arm_workdir, num_steps, evaluator, temperatures, speed_lengths,
speed_batch, speed_repeats), described with their defaults in mdm_jax/config_experiments.py
(EXPERIMENT_FIELDS); sampling.num_samples (per temperature and model), sampling.batch_size and
sampling.precision drive the samplers.

Accelerators: `--config=configs/experiments/mdm_vs_arm.py:owt` starts from configs/owt_mdm_small.py
(its ARM twin equals configs/owt_arm_small.py's backbone); point mdm_workdir / arm_workdir at the
trained owt_mdm_small / owt_arm_small runs (training them here would take the full budget) and set
--config.data.gpt2_vocab_dir.
"""

from mdm_jax import config as config_lib

_BASES = {"quickstart": "../quickstart.py", "owt": "../owt_mdm_small.py"}


def get_config(variant="quickstart"):
    c = config_lib.with_experiment(
        config_lib.load_variant(variant, _BASES, relative_to=__file__), "mdm_vs_arm"
    )
    c.eval.mc_draws = 4
    if variant == "quickstart":
        # Quickstart model, smaller budget (x3 models): 300 steps x 16 x 128 tokens each (the
        # experiment fields' defaults are this variant's).
        c.train.batch_size = 16
        c.train.eval_every = 100
        c.train.checkpoint_every = 300
        c.sampling.num_samples = 16
        c.sampling.batch_size = 8
        c.eval.num_batches = 8
    else:
        c.experiment.num_steps = 0
        c.experiment.speed_lengths = (128, 256, 512, 1024)
        c.experiment.speed_batch = 8
        c.experiment.speed_repeats = 3
        c.eval.num_batches = 64
    return c
