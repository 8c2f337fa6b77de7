"""Soft-DTW benchmarks (softdtw.md sec. 12; performance.md sec. 3B)."""

from .common import suite

globals().update(suite("softdtw"))
