"""Inf-SSM benchmarks: closed-form Grams, the O(n^2) code distance and its gradient (the
fused kernel; GPU size one Vim-small step), the Mamba (a, c) extraction and the regulariser
(inf_ssm.md sec. 7). The dense-solver comparison is ``bench_peers.SteinPerSystemCPU``."""

from .common import suite

globals().update(suite("inf_ssm"))
