"""Experiment time_agnostic (docs/paper.md section 2): same-budget MDM variants with/without t, and the ARM.

Command (from the repository root; four quickstart-sized models of 300 steps x batch 16 x L=64,
then their evaluation; 12 min 49 s on the 2-core development CPU at load 2.4-3.4):
  python -m mdm_jax.main --mode=experiment --config=configs/experiments/time_agnostic.py \
      --workdir=workdirs/time_agnostic

Outputs: summary.md, nelbo.png, kl_vs_t.png, learning_curves.png, time_agnostic.json and CSVs in the
workdir; the models in workdir/runs/<variant> (reused on a rerun with the same config).
Measured with this command (2026-11-27): validation bits/token (continuous NELBO, 8,192 tokens x 4
draws, standard error 0.075-0.084) 4.784 with t, 4.690 time-free, 4.684 discrete (time-free), all
within about one standard error; the ARM 2.948 (exact). The time-conditioned network's output moves
by at most 0.0013 nats mean KL when t moves within the Beta band the mask ratio implies (<= 0.05%
of its ~3.1-nat loss per masked token) and by <= 0.006 nats over all of t in (0, 1): it has learned
to all but ignore t (its adaLN-Zero gates start at zero; Prop. 3.2 says it loses nothing by doing so).

Fields: experiment.* (variants, num_steps, kl_ratios, kl_num_times, kl_num_sequences), described
with their defaults in mdm_jax/config_experiments.py (EXPERIMENT_FIELDS). Validation uses eval.num_batches x
eval.mc_draws.

Accelerators: `--config=configs/experiments/time_agnostic.py:owt` starts from
configs/owt_mdm_small.py (12 layers, width 768, L=1024, GPT-2 vocabulary; needs
--config.data.gpt2_vocab_dir and OpenWebText in --config.data.data_dir) with a 50k-step budget per
variant (--config.experiment.num_steps=...).
"""

from mdm_jax import config as config_lib

_BASES = {"quickstart": "../quickstart.py", "owt": "../owt_mdm_small.py"}


def get_config(variant="quickstart"):
    c = config_lib.with_experiment(
        config_lib.load_variant(variant, _BASES, relative_to=__file__), "time_agnostic"
    )
    c.eval.mc_draws = 4
    if variant == "quickstart":
        # Quickstart model, smaller budget (x4 models): 300 steps x 16 x 128 tokens per variant
        # (the experiment fields' defaults are this variant's).
        c.train.batch_size = 16
        c.train.eval_every = 100
        c.train.checkpoint_every = 300
        c.eval.num_batches = 8
    else:
        c.experiment.num_steps = 50_000
        c.experiment.kl_num_sequences = 64
        c.eval.num_batches = 64
    return c
