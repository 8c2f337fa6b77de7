"""Cross-tokenizer distillation benchmarks: DWA-KD's divergences, weights and Soft-DTW loss,
CTPD's span sums and losses, TIS-DPO (cross_tokenizer.md, asv sizes)."""

from .common import suite

globals().update(suite("cross_tokenizer"))
