"""Multilayer-GNN benchmarks (gnn_pdm.md, "Benchmarks (asv)"): the GCN, GAT (1 head; 8 heads of
8 channels) and GIN layers, the segment softmax, the fusion and the focal loss — each forward
(``time_<op>``) and forward + backward together (``time_full_<op>``: the ``*_vjp`` op), on the
CPU size N = 10^4, E = 10^5, F = 64 in float64 and the 347-node, ~24k-edges-per-relation latency
case, and on the GPU size N = 10^6, E = 10^7, F = 64 in float32 with the device's peak memory
(``track_peak_gpu_bytes_<op>``). PyG's layers at the same sizes, in the same run, are in
``bench_peers``."""

from .common import suite

globals().update(suite("gnn"))
