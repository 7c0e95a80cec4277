"""Exact reference models: distributions a sampler's output can be checked against exactly.

- `joint.ReferenceJoint`: an arbitrary distribution over all V^L sequences of a tiny vocabulary,
  with its exact MDM denoiser and ARM, and the exact laws of the ancestral and parallel
  first-hitting samplers (`ancestral_law`, `parallel_fhs_law`); `chisquare_pvalue` compares
  sample counts with such a law. The samplers' statistical tests and notebooks 01-02 use it.
- `head_tail.HeadTailReference`: i.i.d. tokens from a head + tail law over any vocabulary (up to
  GPT-2's), with the finite-precision laws an ancestral run follows (`ancestral_token_law`); the
  precision experiments use it.

Point a sampler at one of these to audit it: any deviation is the sampler's, not a model's.
"""
