"""OpenWebText autoregressive baseline: owt_mdm_small's backbone with a causal mask.

Same width/depth/heads/MLP, data, batch, optimizer, dropout and budget as
configs/owt_mdm_small.py, so the two differ only in the objective (tests/test_configs.py checks
it). Command:
  python -m mdm_jax.main --config=configs/owt_arm_small.py --workdir=gs://BUCKET/owt_arm_small \\
      --config.data.gpt2_vocab_dir=/path/to/gpt2 --config.data.data_dir=gs://BUCKET/tfds \\
      --config.data.packed_dir=/tmp/owt_packed
(A gs:// data_dir needs `pip install -e '.[gcs]'`; packed_dir must be local disk: the packed
token file is memory-mapped.)

What you should see: validation perplexity heading to about 17.5 (MDLM's ARM baseline at 1M
steps; about 2.86 nats/token), below the MDM's bound. It is the evaluator for generative
perplexity of OWT samples (`--config.eval.evaluator_workdir=...`).
"""

from mdm_jax import config as config_lib


def get_config():
    c = config_lib.load_file("owt_mdm_small.py", relative_to=__file__)
    c.objective.kind = "arm"
    c.model.time_conditioning = False  # ignored by the causal model; False states it
    c.sampling.method = "autoregressive"
    return c
