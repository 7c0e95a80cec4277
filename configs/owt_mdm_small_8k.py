"""owt_mdm_small at 8,192 tokens of context: the long-context setup for GPUs and TPU pods.

The network and objective of configs/owt_mdm_small.py (12 layers, width 768, 12 heads, GELU 3072,
adaLN time conditioning, GPT-2 vocabulary, log-linear continuous NELBO, bf16 compute with f32
params) with sequences of 8,192 tokens. What changes, and why:
- model.attention="auto": cuDNN flash attention on GPUs (bf16), the Pallas Splash kernel on TPUs,
  both O(L) in memory; XLA's attention would materialise [B, 12, 8192, 8192] scores (1.5 GiB per
  sequence per layer in bf16). The kernel actually used, and why, is recorded in the workdir's
  run_metadata.json ("attention"): check it says "cudnn" or "splash", not a fallback.
- model.scan_layers=True and model.remat="dots": blocks under nn.scan (compile time flat in depth)
  that keep only their weight matmuls' outputs for the backward pass and recompute the rest
  (norms, RoPE, attention, activations); use "full" if memory is still short.
- Global batch 64 sequences = 524,288 tokens per step (owt_mdm_small's 512 x 1,024), in 8
  micro-batches (train.grad_accum_steps=8): the [B, L, 50257] float32 logits and their gradient
  are the largest buffers at this length, and accumulation bounds them to one micro-batch. The
  batch must split into whole sequences per device and micro-batch (64 = devices x micro-batches
  x sequences): 8 devices take 8 micro-batches of one sequence each; on 64 devices pass
  --config.train.grad_accum_steps=1. Raise the micro-batch while memory allows.

Needs the GPT-2 vocabulary files locally and OpenWebText built by TFDS, as owt_mdm_small. Command
(every host of a pod runs it):
  python -m mdm_jax.main --config=configs/owt_mdm_small_8k.py --workdir=gs://BUCKET/owt_mdm_small_8k \\
      --config.data.gpt2_vocab_dir=/path/to/gpt2 --config.data.data_dir=gs://BUCKET/tfds \\
      --config.data.packed_dir=/tmp/owt_packed_8k

Not yet measured on an accelerator (no GPU or TPU was available when this config was written):
the first run should record step time and MFU (benchmarks/train_throughput.py
--config=configs/owt_mdm_small_8k.py --config.train.grad_accum_steps=1 --config.train.batch_size=8)
and the peak memory of remat "dots" against "full", then set the best values here.
"""

from mdm_jax import config as config_lib


def get_config():
    c = config_lib.load_file("owt_mdm_small.py", relative_to=__file__)
    c.model.max_len = 8192
    c.data.seq_len = 8192
    c.model.attention = "auto"
    c.model.scan_layers = True
    c.model.remat = "dots"

    c.train.batch_size = 64
    c.train.grad_accum_steps = 8
    c.sampling.num_samples = 16
    c.sampling.batch_size = 8
    c.eval.num_batches = 64
    return c
