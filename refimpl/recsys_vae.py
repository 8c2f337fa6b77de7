"""Recommender VAEs — the float64 reference of one family, in two modules.

* :mod:`refimpl._multvae` — Mult-VAE (Liang et al., arXiv 1802.05814; official notebook
  ``dawenl/vae_cf VAE_ML20M_WWW2018.ipynb``): the forward with both input-masking modes, the
  multinomial likelihood, the KL term and its annealing, the loss with its explicit gradient
  (``multvae_value_and_grad``), and PIA's anchor regulariser (Vuong et al., arXiv 2511.06781)
  in closed form with the anchor-spread term, its gradients and the Monte Carlo path.
* :mod:`refimpl._recsys_eval` — the strong-generalisation protocol of the notebook: the split,
  Recall@k and NDCG@k exactly as the notebook computes them (NaN for users without held-out
  items), the popularity baseline, and the MovieLens-100k loader (the file inside the PyPI
  package ``recbole``, read without importing it).

What is official code, paper summary and reconstructed is said in each module's docstring and
in ``docs/recsys_vae.md``.
"""

from refimpl._multvae import *  # noqa: F401,F403
from refimpl._multvae import __all__ as _multvae_all
from refimpl._recsys_eval import *  # noqa: F401,F403
from refimpl._recsys_eval import __all__ as _eval_all

__all__ = [*_multvae_all, *_eval_all]
