"""OpenWebText masked diffusion model, the paper's (MDLM's) small setup, for GPUs and TPU pods.

12 layers, width 768, 12 heads, GELU MLP 3072, adaLN time conditioning (MDLM's DiT), L=1024,
GPT-2 vocabulary (50,257), global batch 512, AdamW lr 3e-4 with 2,500 warm-up steps then
constant, no weight decay, dropout 0.1, grad clip 1, EMA 0.9999, bf16 compute with f32
parameters, log-linear schedule (eps 1e-3), continuous-time NELBO, 1M steps (~262B tokens).

Needs the GPT-2 vocabulary files locally (vocab.json, merges.txt; see mdm_jax/data/tokenizers.py)
and network access once to build OpenWebText with TFDS. Command (every host of a pod runs it):
  python -m mdm_jax.main --config=configs/owt_mdm_small.py --workdir=gs://BUCKET/owt_mdm_small \\
      --config.data.gpt2_vocab_dir=/path/to/gpt2 --config.data.data_dir=gs://BUCKET/tfds \\
      --config.data.packed_dir=/tmp/owt_packed
(A gs:// data_dir needs `pip install -e '.[gcs]'`; packed_dir must be local disk: the packed
token file is memory-mapped.)

What you should see: eval lines every 10k steps with the validation NELBO falling towards
MDLM's <= 23.2 perplexity bound (about 3.1 nats/token, 4.5 bits/token) late in training; the
paper's ARM twin (configs/owt_arm_small.py) reaches about 17.5. Use --config.mesh.fsdp=-1
--config.mesh.data=1 to shard parameters and optimizer state when memory is short.
"""

from mdm_jax import config as config_lib


def get_config():
    c = config_lib.base()
    c.objective.schedule = "loglinear"

    c.model.vocab_size = 50257
    c.model.max_len = 1024
    c.model.num_layers = 12
    c.model.num_heads = 12
    c.model.emb_dim = 768
    c.model.mlp_dim = 3072
    c.model.mlp_type = "gelu"
    c.model.dropout = 0.1

    c.dtype.compute = "bfloat16"

    c.data.dataset = "openwebtext"
    c.data.tokenizer = "gpt2"
    c.data.seq_len = 1024

    c.train.batch_size = 512
    c.train.num_steps = 1_000_000
    c.train.lr_schedule = "constant"
    c.train.warmup_steps = 2500
    c.train.log_every = 100
    c.train.eval_every = 10_000
    c.train.eval_batches = 64
    c.train.checkpoint_every = 5000

    c.sampling.num_samples = 64
    c.sampling.batch_size = 64
    c.eval.num_batches = 256
    return c
