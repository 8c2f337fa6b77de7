"""Multilayer graph networks for predictive maintenance (Kazim et al., arXiv 2507.07298;
official code ``CEL-lab/Multilayer_GNN @6910437``) — the float64 reference in four modules.

* :mod:`refimpl._gnn_layers` — the layers with PyG's semantics (messages flow
  ``edge_index[0] -> edge_index[1]``): CSR conversion (stable sort by destination), self-loops,
  GCN normalisation and layer, the per-destination, per-head segment softmax, GAT (edge
  features optional, heads concatenated or averaged), GIN, and each one's vector-Jacobian
  product written from the math.
* :mod:`refimpl._gnn_heads` — the edge-weight MLP, the relation-fusion variants (the code's
  global softmax; concatenation; semantic and node-level attention, reconstructed), the focal
  loss as the code uses it (and the fixed form), binary F1, silhouette and Davies–Bouldin with
  noise points excluded.
* :mod:`refimpl._gnn_models` — the code's classifier (PowerGridGNN) and clustering encoder
  (OperationalGNN) built from the functions above.
* :mod:`refimpl._gnn_graph` — the synthetic three-relation substation graph of the demo and
  benchmarks (reconstructed: the utility data are not public).

What is official code, library semantics (PyG), paper summary and reconstructed is said in
each module's docstring and in ``docs/gnn_pdm.md``.
"""

from refimpl._gnn_graph import *  # noqa: F401,F403
from refimpl._gnn_graph import __all__ as _graph_all
from refimpl._gnn_heads import *  # noqa: F401,F403
from refimpl._gnn_heads import __all__ as _heads_all
from refimpl._gnn_layers import *  # noqa: F401,F403
from refimpl._gnn_layers import __all__ as _layers_all
from refimpl._gnn_models import *  # noqa: F401,F403
from refimpl._gnn_models import __all__ as _models_all

__all__ = [*_layers_all, *_heads_all, *_models_all, *_graph_all]
