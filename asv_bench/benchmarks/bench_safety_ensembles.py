"""Antibody and IBDR benchmarks (safety_ensembles.md, "asv sizes and targets"): the weighted
token cross-entropy through the head (forward + backward; GPU: the Antibody fine-tuning batch
on Llama-2-7B in bf16), the flat-vector alignment direction (GPU: LoRA r = 32 on q, k, v of 32
layers), IBDR's loss and gradient, with peak device memory on GPU classes. The comparison with
``linear_dpo_loss_grad`` at equal (N, d, V) is the ``<backend>-weighted-ce`` impl of
``bench_peers.DpoHeadFull{CPU,GPU}``."""

from .common import suite

globals().update(suite("safety_ensembles"))
