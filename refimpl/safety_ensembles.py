"""Two-point safety and ensemble updates — the float64 reference of one family, in two modules.

* :mod:`refimpl._antibody` — Antibody (Nguyen et al., arXiv 2603.00498; official code
  ``minhquoc0712/Antibody @1d4fa5f``): the normalised harmful perturbation, the adaptive
  weight lambda_t (cosine form of the code, KKT form as a variant) with its moving average, the
  alignment direction (Booster, arXiv 2409.01586, is its constant-lambda special case), and the
  fine-tuning stage's per-sample weights with the weighted token cross-entropy through a linear
  head — the latter on the preference family's streaming log-sum-exp (one in the codebase).
* :mod:`refimpl._ibdr` — IBDR (Pham et al., arXiv 2506.07247; official code
  ``ngocquanofficial/DRO``): the DPP log-determinant diversity of the particles' wrong-class
  probabilities, the loss on averaged logits with its gradient, the clipped ascent step
  ``g / (2 lam)`` and the dual update in prediction space.

Both methods compute a gradient at theta, perturb, and compute a gradient at theta'; refimpl
offers the array math, the model's forward and backward stay in the caller's training loop.
What is code-faithful, paper-form and reconstructed is said in each module's docstring and in
``docs/antibody.md`` / ``docs/ibdr.md``.
"""

from refimpl._antibody import *  # noqa: F401,F403
from refimpl._antibody import __all__ as _antibody_all
from refimpl._ibdr import *  # noqa: F401,F403
from refimpl._ibdr import __all__ as _ibdr_all

__all__ = [*_antibody_all, *_ibdr_all]
