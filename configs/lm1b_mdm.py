"""LM1B (One Billion Words) masked diffusion model, L=128, GPT-2 tokenizer.

Choice of tokenizer: MDLM's LM1B runs use bert-base-uncased (30,522 tokens); mdm-jax ships
byte, char and GPT-2 BPE tokenizers only, so this config uses GPT-2 (50,257 tokens, the same
vocabulary files as OpenWebText). Perplexities are per GPT-2 token and therefore NOT comparable
with MDLM's LM1B table (different token units); compare runs of this repository with each other
(e.g. this config vs `--config.objective.kind=arm`). Sentences are packed to L=128 with the
end-of-text separator. Everything else is configs/owt_mdm_small.py's (this file states only
what differs): 12 layers, width 768, 12 heads (BERT-base-sized, as MDLM), batch 512, AdamW 3e-4,
2,500 warm-up steps then constant, EMA 0.9999, dropout 0.1, bf16 compute, log-linear schedule.
Command (TFDS downloads lm1b once; needs the GPT-2 files locally):
  python -m mdm_jax.main --config=configs/lm1b_mdm.py --workdir=workdirs/lm1b_mdm \\
      --config.data.gpt2_vocab_dir=/path/to/gpt2

What you should see: the validation NELBO falling steadily (eval lines every 10k steps); an
equally trained ARM (`--config.objective.kind=arm --config.sampling.method=autoregressive`)
stays below it.
"""

from mdm_jax import config as config_lib


def get_config():
    c = config_lib.load_file("owt_mdm_small.py", relative_to=__file__)
    c.model.max_len = 128

    c.data.dataset = "lm1b"
    c.data.seq_len = 128

    c.sampling.num_samples = 16
    c.sampling.batch_size = 16
    c.eval.num_batches = 128
    return c
