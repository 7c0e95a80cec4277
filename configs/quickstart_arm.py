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
    c = config_lib.base()
    c.objective.kind = "arm"

    c.model.vocab_size = 256
    c.model.max_len = 128
    c.model.num_layers = 4
    c.model.num_heads = 4
    c.model.emb_dim = 256
    c.model.mlp_dim = 688
    c.model.time_conditioning = False

    c.data.dataset = "embedded"
    c.data.tokenizer = "byte"
    c.data.seq_len = 128

    c.train.batch_size = 16
    c.train.num_steps = 600
    c.train.lr = 2e-3
    c.train.warmup_steps = 50
    c.train.min_lr_ratio = 0.1
    c.train.ema_decay = 0.999
    c.train.log_every = 20
    c.train.eval_every = 100
    c.train.eval_batches = 8
    c.train.checkpoint_every = 200

    c.sampling.method = "autoregressive"
    c.sampling.precision = "float64"
    c.sampling.num_samples = 4
    c.sampling.batch_size = 4
    c.eval.num_batches = 16
    return c
