"""Optimal-transport benchmarks (ot.md sec. 8; performance.md sec. 3C, 3D)."""

from .common import suite

globals().update(suite("ot"))
