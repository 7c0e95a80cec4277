"""mdm-jax: masked diffusion language models in JAX/Flax.

Zheng et al., "Masked Diffusion Models are Secretly Time-Agnostic Masked Models and
Exploit Inaccurate Categorical Sampling" (ICLR 2025), reimplemented for CPU, GPU and TPU.
"""

__version__ = "0.1.0"
