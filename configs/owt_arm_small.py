"""OpenWebText autoregressive baseline: owt_mdm_small's backbone with a causal mask.

Same width/depth/heads/MLP, data, batch, optimizer, dropout and budget as
configs/owt_mdm_small.py, so the two differ only in the objective (tests/test_configs.py checks
it). Command:
  python -m mdm_jax.main --config=configs/owt_arm_small.py --workdir=gs://BUCKET/owt_arm_small \\
      --config.data.gpt2_vocab_dir=/path/to/gpt2 --config.data.data_dir=gs://BUCKET/tfds --config.data.packed_dir=/tmp/owt_packed
(A gs:// data_dir needs `pip install -e '.[gcs]'`; packed_dir must be local disk: the packed
token file is memory-mapped.)

What you should see: validation perplexity heading to about 17.5 (MDLM's ARM baseline at 1M
steps; about 2.86 nats/token), below the MDM's bound. It is the evaluator for generative
perplexity of OWT samples (`--config.eval.evaluator_workdir=...`).
"""

from mdm_jax import config as config_lib


def get_config():
    c = config_lib.base()
    c.objective.kind = "arm"

    c.model.vocab_size = 50257
    c.model.max_len = 1024
    c.model.num_layers = 12
    c.model.num_heads = 12
    c.model.emb_dim = 768
    c.model.mlp_dim = 3072
    c.model.mlp_type = "gelu"
    c.model.dropout = 0.1
    c.model.time_conditioning = False  # ignored by the causal model; False states it

    c.dtype.param = "float32"
    c.dtype.compute = "bfloat16"

    c.data.dataset = "openwebtext"
    c.data.tokenizer = "gpt2"
    c.data.seq_len = 1024

    c.train.batch_size = 512
    c.train.num_steps = 1_000_000
    c.train.lr = 3e-4
    c.train.lr_schedule = "constant"
    c.train.warmup_steps = 2500
    c.train.weight_decay = 0.0
    c.train.grad_clip = 1.0
    c.train.ema_decay = 0.9999
    c.train.log_every = 100
    c.train.eval_every = 10_000
    c.train.eval_batches = 64
    c.train.checkpoint_every = 5000
    c.train.keep_checkpoints = 3
    c.train.plot = True

    c.sampling.method = "autoregressive"
    c.sampling.precision = "float64"
    c.sampling.num_samples = 64
    c.sampling.batch_size = 64
    c.eval.num_batches = 256
    return c
