"""CRPL benchmarks (clip_uda_ot.md, "Benchmarks (asv)"): the reference prediction, the exact
OT cluster loss (a host solve on every backend, by design), the target loss and the full
objective — forward (``time_<op>``) and forward + backward (``time_full_<op>``: the explicit
gradient op) — at the paper's sizes: batch 30, K in {12, 65, 345} classes, D in {1024, 512},
S in {1, 3} source domains; CPU in float64, GPU in float32 with peak device memory. These are
latency-bound; the exact OT dominates at K = 345."""

from .common import suite

globals().update(suite("crpl"))
