"""text8 masked diffusion model: characters (a-z and space, 27 symbols), L=256.

The D3PM/SEDD/MDLM text8 setup: the first 90M characters train, the next 5M validate, chunks of
256 characters (a continuous stream, no document separators), continuous NELBO with the linear
schedule, time-free network, no dropout. Everything else is configs/owt_mdm_small.py's (12 layers,
width 768, global batch 512, AdamW 3e-4 with 2,500 warm-up steps then constant, EMA 0.9999, bf16
compute); this file states only what differs. Command (downloads text8 once via TFDS,
~30 MB, so it needs the network the first time):
  python -m mdm_jax.main --config=configs/text8_mdm.py --workdir=workdirs/text8_mdm

What you should see: validation NELBO falling below about 1.5 bits/character over a few hundred
thousand steps (published MDMs reach ~1.3-1.4 bits/char at 1M steps; the uniform baseline is
log2(27) = 4.75). On one GPU lower --config.train.batch_size (e.g. 128).
"""

from mdm_jax import config as config_lib


def get_config():
    c = config_lib.load_file("owt_mdm_small.py", relative_to=__file__)
    c.objective.schedule = "linear"

    c.model.vocab_size = 27
    c.model.max_len = 256
    c.model.dropout = 0.0
    c.model.time_conditioning = False

    c.data.dataset = "text8"
    c.data.tokenizer = "char"
    c.data.seq_len = 256

    c.sampling.num_samples = 16
    c.sampling.batch_size = 16
    c.eval.num_batches = 128
    return c
