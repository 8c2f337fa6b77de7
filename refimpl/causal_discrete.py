"""Ordering-based causal discovery with the discrete score — the float64 reference of one
family, in two modules.

* :mod:`refimpl._causal_score` — the discrete score (marginalisation operator, Lyu UAI 2009)
  from an exact table, a known network, plug-in counts or a model of the conditionals; the
  generalised score-matching loss; the leaf statistics; the ordering loop; the samplers.
* :mod:`refimpl._causal_graph` — G² / Pearson chi² conditional-independence tests (batched
  over candidates), pruning restricted to predecessors, the metrics (order divergence, SHD,
  edge precision/recall), the Sachs data from the files of the PyPI package ``cdt``, and
  SCORE's Stein Hessian diagonal (arXiv 2203.04413) as the continuous baseline.

Paper: Vo, Le, Zhao, Bonilla, Phung, arXiv 2601.16249. No official code exists: what is
reconstructed is marked in each module's docstring and in ``docs/causal_discrete.md``.
"""

from refimpl._causal_graph import (  # noqa: F401
    ci_test, ci_test_batch, edge_precision_recall, load_sachs, order_divergence, prune_ci, shd,
    stein_hessian_diag,
)
from refimpl._causal_score import (  # noqa: F401
    conditionals_logistic, discrete_score_exact, discrete_score_from_conditionals,
    discrete_score_oracle, discrete_score_order, discrete_score_plugin, gsm_marginal_loss,
    joint_table, leaf_statistic, order_by_leaf_removal, random_dag, sample_cpt_bn,
    sample_discrete_anm,
)

__all__ = [
    "discrete_score_exact", "discrete_score_oracle", "discrete_score_plugin",
    "discrete_score_from_conditionals", "conditionals_logistic", "gsm_marginal_loss",
    "leaf_statistic", "discrete_score_order", "order_by_leaf_removal", "random_dag", "sample_discrete_anm",
    "sample_cpt_bn", "joint_table",
    "ci_test", "ci_test_batch", "prune_ci", "order_divergence", "shd", "edge_precision_recall",
    "load_sachs", "stein_hessian_diag",
]
