"""Cross-tokenizer distillation — the float64 reference of one family, in two modules.

* :mod:`refimpl._dwa_kd` — DWA-KD (arXiv 2602.21669) on top of DSKD's cross-model attention
  (arXiv 2406.17328): per-token KD divergences and their gradients, the dual-space entropy
  weights, the soft confidence gate, the CMA block, the attention-derived soft band, the
  cosine-cost Soft-DTW divergence on two layers, the gamma schedule and the whole loss.
* :mod:`refimpl._ctpd` — CTPD (arXiv 2601.11865): aligned span projection from two
  tokenizers' character offsets, span log-probs, clipped span weights and the
  teacher-anchored DPO objective; TIS-DPO's token-weighted DPO (arXiv 2410.04350).

Both use the library's one DPO formula (:func:`refimpl.preference._dpo`) and its Soft-DTW
(:mod:`refimpl.softdtw`). The equations as implemented, the official code they follow and the
quirks kept behind flags are in each module's docstring and in ``docs/dwa_kd.md`` and
``docs/ctpd.md``.
"""

from refimpl._ctpd import (  # noqa: F401
    ctpd_loss, ctpd_loss_grad, span_align, span_sum, span_weights, tis_dpo_loss,
    tis_dpo_loss_grad,
)
from refimpl._dwa_kd import (  # noqa: F401
    certainty_weights, cma_align, cma_band_penalty, dwa_dtw_loss, dwa_dtw_loss_grad, dwa_gamma,
    dwa_kd_loss, entropy_weights, kd_divergence, kd_divergence_grad, kd_gate,
)

__all__ = [
    "kd_divergence", "kd_divergence_grad", "entropy_weights", "certainty_weights", "kd_gate",
    "cma_align", "cma_band_penalty", "dwa_gamma", "dwa_dtw_loss", "dwa_dtw_loss_grad",
    "dwa_kd_loss",
    "span_align", "span_sum", "span_weights", "ctpd_loss", "ctpd_loss_grad", "tis_dpo_loss",
    "tis_dpo_loss_grad",
]
