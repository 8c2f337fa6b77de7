"""Mult-VAE and PIA benchmarks (recsys_vae.md, "Benchmarks (asv)"): the forward, the loss and
``multvae_value_and_grad`` (forward + backward together; CPU: the ML-100k demo size, GPU: a batch
of 500 users over ML-20M's 20,108 items), the PIA anchor loss and gradient, and Recall@k /
NDCG@k (CPU 1,000 x 1,682; GPU 10,000 x 20,000, k = 100), with peak device memory on the GPU
classes."""

from .common import suite

globals().update(suite("recsys_vae"))
