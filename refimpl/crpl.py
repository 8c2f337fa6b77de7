"""CRPL — cluster-preserving prompt learning for unsupervised domain adaptation (Vuong et al.,
arXiv 2506.11493): the reference prediction built from zero-shot and source prompts weighted by
the distances to per-domain class centroids, and the exact balanced optimal-transport loss that
keeps target image embeddings clustered around their class text embeddings (exact OT from
:mod:`refimpl.ot`). The float64 reference is in :mod:`refimpl._crpl`; what is the authors'
script, paper summary and reconstructed is said there and in ``docs/crpl.md``.
"""

from refimpl._crpl import *  # noqa: F401,F403
from refimpl._crpl import __all__  # noqa: F401
