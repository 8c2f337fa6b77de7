"""refimpl: the reference math of distribution-alignment papers.

Each algorithm is a readable NumPy/SciPy function computing in float64; the accelerated
backends in :mod:`backends` (torch, cupy, numba_cuda) offer the same functions with the
same signatures and are cross-checked against these. ``import refimpl`` imports NumPy and
SciPy only.

Families: :mod:`refimpl.softdtw` (Soft-DTW, arXiv 1703.01541, 2010.08354) and
:mod:`refimpl.ot` (entropic and exact optimal transport), :mod:`refimpl.preference` (DPO
through a linear head and logits-SAM, arXiv 2305.18290, 2603.18258),
:mod:`refimpl.cross_tokenizer` (DWA-KD, CTPD, TIS-DPO, arXiv 2602.21669, 2601.11865,
2410.04350), :mod:`refimpl.inf_ssm` (Inf-SSM, arXiv 2505.18604), :mod:`refimpl.causal_discrete`
(discrete-score causal discovery, arXiv 2601.16249) and :mod:`refimpl.safety_ensembles`
(Antibody, arXiv 2603.00498, and IBDR, arXiv 2506.07247), :mod:`refimpl.recsys_vae` (Mult-VAE,
arXiv 1802.05814, and PIA, arXiv 2511.06781), :mod:`refimpl.gnn` (GCN, GAT, GIN and relation
fusion for predictive maintenance, arXiv 2507.07298) and :mod:`refimpl.crpl` (cluster-preserving
prompt learning with an exact OT loss, arXiv 2506.11493); the last six are imported on first use
(``from refimpl import inf_ssm``).
"""

from refimpl import cross_tokenizer, ot, preference, softdtw

__version__ = "0.1.0"
__all__ = ["cross_tokenizer", "ot", "preference", "softdtw", "__version__"]
