"""Experiment time_agnostic (PAPER.md section 2): same-budget MDM variants with/without t, and the ARM.

Command (from the repository root, 2-core CPU, about 15 minutes: four quickstart-sized models of
400 steps each, then their evaluation):
  python -m mdm_jax.main --mode=experiment --config=configs/experiments/time_agnostic.py \
      --workdir=workdirs/time_agnostic

What you should see (summary.md, nelbo.png, kl_vs_t.png, learning_curves.png, time_agnostic.json and
CSVs in the workdir; models in workdir/runs/<variant>, reused on a rerun): the three MDM variants
(continuous ELBO with t, continuous ELBO time-free, discrete ELBO time-free) end within a few
hundredths of a bit/token of each other, the ARM below all of them; the time-conditioned network's
output changes by a tiny KL when t moves inside the Beta band implied by the mask ratio, and by
much more far outside it (where training never puts (x, t) pairs).

Fields (config.experiment.*): variants (comma list of tc_continuous, tf_continuous, tf_discrete,
tc_discrete, arm), num_steps (training budget per variant; 0 = train.num_steps), kl_ratios (mask
ratios n/L of the fixed inputs), kl_num_times (t grid size), kl_num_sequences (validation
sequences per ratio). Validation uses eval.num_batches x eval.mc_draws.

Accelerators: `--config=configs/experiments/time_agnostic.py:owt` starts from
configs/owt_mdm_small.py (12 layers, width 768, L=1024, GPT-2 vocabulary; needs
--config.data.gpt2_vocab_dir and OpenWebText in --config.data.data_dir) with a 50k-step budget per
variant (--config.experiment.num_steps=...).
"""

import importlib.util
import os

_BASES = {"quickstart": "quickstart.py", "owt": "owt_mdm_small.py"}


def _base_config(name):
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", _BASES[name])
    spec = importlib.util.spec_from_file_location(f"_mdm_base_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def get_config(variant="quickstart"):
    if variant not in _BASES:
        raise ValueError(f"unknown variant {variant!r} after ':' in --config: use one of {', '.join(_BASES)}")
    c = _base_config(variant)
    c.experiment.name = "time_agnostic"
    c.experiment.variants = "tc_continuous,tf_continuous,tf_discrete,arm"
    c.experiment.kl_ratios = "0.15,0.5,0.85"
    c.experiment.kl_num_times = 24
    if variant == "quickstart":
        # Quickstart model, smaller budget (x4 models): 300 steps x 16 x 128 tokens per variant.
        c.experiment.num_steps = 300
        c.experiment.kl_num_sequences = 16
        c.train.batch_size = 16
        c.train.eval_every = 100
        c.train.checkpoint_every = 300
        c.eval.num_batches = 8
        c.eval.mc_draws = 4
    else:
        c.experiment.num_steps = 50_000
        c.experiment.kl_num_sequences = 64
        c.eval.num_batches = 64
        c.eval.mc_draws = 4
    return c
