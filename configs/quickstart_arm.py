"""The quickstart's autoregressive twin: the same backbone and budget, causal mask, next-token loss.

Command:
  python -m mdm_jax.main --config=configs/quickstart_arm.py --workdir=workdirs/quickstart_arm

What you should see: the same progress bar and eval lines as configs/quickstart.py, with the
exact validation NLL in bits/token (an ARM has no bound to report); it ends lower than the MDM
bound at the same budget (the paper's MDM-vs-ARM gap). It serves as the evaluator for
generative perplexity (`--config.eval.evaluator_workdir=workdirs/quickstart_arm`) and as the
ARM of the MDM-vs-ARM pair. Every field but the objective and sampler equals
configs/quickstart.py (tests/test_configs.py checks it).
"""

from mdm_jax import config as config_lib


def get_config():
    c = config_lib.load_file("quickstart.py", relative_to=__file__)
    c.objective.kind = "arm"
    c.train.sample_at_end = False
    c.sampling.method = "autoregressive"
    return c
