"""DPO through a linear head and logits-SAM benchmarks (preference.md sec. 11; performance.md
sec. 3A)."""

from .common import suite

globals().update(suite("preference"))
