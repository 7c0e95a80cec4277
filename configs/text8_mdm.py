"""text8 masked diffusion model: characters (a-z and space, 27 symbols), L=256.

The D3PM/SEDD/MDLM text8 setup: the first 90M characters train, the next 5M validate, chunks of
256 characters (a continuous stream, no document separators), a 12-layer width-768 transformer,
global batch 512, AdamW 3e-4 with 2,500 warm-up steps then constant, EMA 0.9999, continuous
NELBO with the linear schedule, time-free network. Command (downloads text8 once via TFDS,
~30 MB, so it needs the network the first time):
  python -m mdm_jax.main --config=configs/text8_mdm.py --workdir=workdirs/text8_mdm

What you should see: validation NELBO falling below about 1.5 bits/character over a few hundred
thousand steps (published MDMs reach ~1.3-1.4 bits/char at 1M steps; the uniform baseline is
log2(27) = 4.75). On one GPU lower --config.train.batch_size (e.g. 128).
"""

from mdm_jax import config as config_lib


def get_config():
    c = config_lib.base()
    c.objective.kind = "continuous"
    c.objective.schedule = "linear"

    c.model.vocab_size = 27
    c.model.max_len = 256
    c.model.num_layers = 12
    c.model.num_heads = 12
    c.model.emb_dim = 768
    c.model.mlp_dim = 3072
    c.model.mlp_type = "gelu"
    c.model.dropout = 0.0
    c.model.time_conditioning = False

    c.dtype.compute = "bfloat16"

    c.data.dataset = "text8"
    c.data.tokenizer = "char"
    c.data.seq_len = 256

    c.train.batch_size = 512
    c.train.num_steps = 1_000_000
    c.train.lr = 3e-4
    c.train.lr_schedule = "constant"
    c.train.warmup_steps = 2500
    c.train.ema_decay = 0.9999
    c.train.log_every = 100
    c.train.eval_every = 10_000
    c.train.eval_batches = 64
    c.train.checkpoint_every = 5000

    c.sampling.method = "first_hitting"
    c.sampling.precision = "float64"
    c.sampling.num_samples = 16
    c.sampling.batch_size = 16
    c.eval.num_batches = 128
    return c
