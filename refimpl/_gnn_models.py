r"""The official code's two models (``PowerGridGNN``, ``OperationalGNN``) as float64 NumPy
functions built from the family's layers (:mod:`refimpl._gnn_layers`) and heads
(:mod:`refimpl._gnn_heads`); spec ``gnn_pdm.md`` sec. 3.

Paper: Kazim, Pirim, Le, Le, Yadav, "Multilayer GNN for Predictive Maintenance and Clustering in
Power Grids", arXiv 2507.07298. Official code: ``CEL-lab/Multilayer_GNN`` @6910437,
``Code/Predictive_Maintenance.ipynb`` (cells 7-9: ``WeightedGCNConv``, ``PowerGridGNN``,
``FocalLoss``) and ``Code/Substation_Clustering.ipynb`` (cells 5-6: ``OperationalGNN`` and its
training loss). Everything below is **official code** unless tagged **reconstructed** (forms the
code does not contain) or **ours** (interface choices).

``relations``: a list of R dicts ``{"edge_index": (2, E) int, "edge_attr": (E, D) float}``, in
the order spatial, temporal, causal; messages flow ``edge_index[0]`` (src) -> ``[1]`` (dst).

PdM classifier (``pdm_classifier_forward``; N nodes, H^0 = x (N, F), hidden width h)
--------------------------------------------------------------------------------------
Per layer l = 0 .. L-1 and relation r (each (l, r) has its own weights; ``l{l}.r{r}.*`` keys)::

    w      = edge_mlp_weights(z_r, edge.W1, edge.b1, edge.W2, edge.b2)
           = sigmoid(relu(z_r W1 + b1) W2 + b2) + 1e-8                    (E_r,)
    G      = gcn_layer(H, edge_index_r, gcn.W, gcn.b, edge_weight=w, add_loops=False,
                       normalize=True)          # deg_i = sum_{dst=i} w, no self-loops
    B      = bn.weight (G - m) / sqrt(v + 1e-5) + bn.bias                 (BatchNorm1d)
    H_r    = B + (H res.W + res.b   if F_l != h   else   H)               (residual)
    H_r    = 0  (no BN, no residual) when relation r has no edge   (the code's empty-edge branch)
    H', beta = fuse(stack(H_1 .. H_R), fusion, fuse params)
    H^{l+1}  = dropout_0.3(relu(H'))

Head (width k = h // 2 — the code's ``hidden_dim // 2``, 128 for h = 256)::

    a   = H^L head.W1 + head.b1;   a = relu(BN_head(a));   a = dropout_0.5(a)
    z   = a head.W2 + head.b2                                             (N,)
    out = sigmoid(z)   (variant "code": the code's final nn.Sigmoid — probabilities)
    out = z            (variant "logits": the logit, for the fixed focal loss / evaluation)

The code's loss then applies BCE-with-logits to these probabilities (the double sigmoid of
``focal_bce(variant="code")``) and its evaluation ``sigmoid(out) > 0.5`` predicts every node
positive (sigma(sigma(z)) > 0.5); ``variant="logits"`` with ``focal_bce(variant="logits")`` and
``sigmoid(z) > 0.5`` is the fix.

BatchNorm (PyTorch ``BatchNorm1d``, eps 1e-5, momentum 0.1): evaluation (``training=False``)
normalises with the running statistics ``m = running_mean``, ``v = running_var``; training
normalises with the batch statistics over all N nodes, ``m = mean_i G_i``, ``v = mean_i (G_i -
m)^2`` (biased), and returns the updated running statistics in ``aux["running"]`` (the caller
merges them)::

    running_mean' = 0.9 running_mean + 0.1 m
    running_var'  = 0.9 running_var  + 0.1 v N / (N - 1)          (unbiased, PyTorch's rule)

Only BatchNorms that ran are listed (a relation without edges in the split skips its BN, as in
the code). As in the code every pass (train, val, test) runs on all N nodes with the split's
edges only: nodes outside the split receive no message (their GCN output is ``gcn.b``) yet
enter the batch statistics; the caller takes the split's rows of ``out`` for the loss. Dropout (training only): ``H <- H * masks[key]`` where the mask is the keep mask
already scaled by 1/(1-p) (values 0 and 1/(1-p)); keys ``"l{l}.drop"`` (N, h), p = 0.3, and
``"head.drop"`` (N, k), p = 0.5. The reference draws nothing: ``training=True`` needs ``masks``
(masks of ones = dropout off); the torch backend draws from torch's default generator when
``masks`` is None.

Fusion (``fuse`` of :mod:`refimpl._gnn_heads`), parameter keys:

* ``"global"`` (official code): ONE ``fuse.w`` (R,) shared by every layer — the code's single
  ``aggregation_weights`` parameter of the model, used in each layer's loop — initialised to
  ones; ``beta = softmax(w)``.
* ``"concat"``: per layer ``l{l}.fuse.W`` (R h, h), ``l{l}.fuse.b`` (h,) (the clustering code's
  fusion, used here inside the classifier: ours); beta None.
* ``"semantic"`` / ``"node"`` (reconstructed, HAN-style, arXiv 1903.07293): per layer
  ``l{l}.fuse.W`` (h, A), ``l{l}.fuse.b`` (A,), ``l{l}.fuse.q`` (A,), attention width
  A = ``ATTN_DIM`` = 128 at init (HAN's default; the forward takes the width from the params).

``aux = {"beta": [beta of layer 0, ..., layer L-1] (None for concat), "running": {key: array}
(empty when training=False)}``.

Edge attributes and split isolation (``split_relations``, host preprocessing)
----------------------------------------------------------------------------
The code standardises twice and keeps only the edges inside the current split (train, val or
test pass)::

    keep_e = node_mask[src_e] & node_mask[dst_e]
    a      = (edge_attr[keep] - mu_all) / (sd_all + 1e-8)     # whole-graph stats, every edge
    z      = (a - mean(a)) / (sd(a) + 1e-8)                   # the split's stats (per forward)

with column means and **unbiased** (ddof = 1, ``torch.std``) standard deviations. The second
standardisation happens inside ``WeightedGCNConv.forward`` in the code; it depends on the split
only, so it is done once here and the forward takes ``z`` as the edge attribute. Node indices
stay global (N unchanged): nodes outside the split keep their features and get no messages.
A split keeping exactly one edge of a relation is refused (the code's unbiased std is NaN).

Clustering encoder (``cluster_encoder_forward``; F = x.shape[1], hidden c = 64, emb 32)::

    S = leaky_relu_0.01(gat_layer(x, spatial, spatial.W, .a_src, .a_dst, .b,
                                  edge_attr = spatial edge_attr, W_e, a_e,
                                  negative_slope=0.2, concat=True, add_loops=True, fill="mean"))
    T = elu(gcn_layer(x, temporal, temporal.W, temporal.b))    # loops, normalised, unweighted
    C = relu(gin_layer(x, causal, causal.W1, .b1, .W2, .b2, eps=0))     # MLP F -> c -> c
    e = [S | T | C] fuse.W + fuse.b                          (N, 32)  the embedding
    recon = relu(e dec.W1 + dec.b1) dec.W2 + dec.b2          (N, F)

(heads 1; the ReLU of the decoder is in the notebook's ``torch.nn.Sequential``: official code,
not reconstructed). Only the spatial relation's attributes are used (raw, not standardised);
the temporal and causal dicts may omit ``edge_attr``. Loss (``cluster_encoder_loss``)::

    loss = mean_{i,f} (recon_if - x_if)^2 + lam mean_{i,j} (1 - cos(e_i, e_j)),
    cos(e_i, e_j) = e_i . e_j / (max(|e_i|, 1e-8) max(|e_j|, 1e-8))       (torch's eps)

over all N^2 ordered pairs (i = j included), lam = 0.1 in the code.

Initialisation (official code's effective init; ``rng`` a ``numpy.random.Generator``)
------------------------------------------------------------------------------------
PdM (``PowerGridGNN``): ``WeightedGCNConv._init_weights`` first sets the edge MLP's weights to
Kaiming-normal(fan_out) and biases to 0.1, then ``PowerGridGNN._init_weights`` re-initialises
EVERY ``torch.nn.Linear`` of the model (the edge MLPs included) with
``kaiming_normal_(weight, nonlinearity="relu")`` — mode fan_in — and leaves the biases. Net
effect, drawn in this order per (l, r), then fusion, then head:

* ``edge.W1`` ~ N(0, 2 / D_r), ``edge.W2`` ~ N(0, 2 / 64), ``edge.b1`` = ``edge.b2`` = 0.1;
* ``gcn.W`` ~ U(-s, s), s = sqrt(6 / (F_l + h)) (PyG's glorot: ``GCNConv.lin`` is a PyG
  ``Linear``, not a ``torch.nn.Linear``, so the Kaiming pass skips it), ``gcn.b`` = 0;
* ``bn.weight`` = 1, ``bn.bias`` = 0, ``bn.running_mean`` = 0, ``bn.running_var`` = 1;
* ``res.W`` ~ N(0, 2 / F_l), ``res.b`` ~ U(-1/sqrt(F_l), 1/sqrt(F_l)) (torch.nn.Linear's default
  bias) — only where F_l != h (layer 0 when in_dim != hidden);
* ``fuse.w`` = 1 (global); concat ``W`` ~ N(0, 2 / (R h)), ``b`` ~ U(+-1/sqrt(R h));
  semantic / node ``W`` ~ N(0, 2 / h), ``b`` ~ U(+-1/sqrt(h)), ``q`` ~ N(0, 2 / A) (as
  ``torch.nn.Linear`` layers under the same Kaiming pass: ours, these modules are not in the code);
* ``head.W1`` ~ N(0, 2 / h), ``head.b1`` ~ U(+-1/sqrt(h)), ``head.bn.*`` as above,
  ``head.W2`` ~ N(0, 2 / k), ``head.b2`` ~ U(+-1/sqrt(k)).

Clustering (``OperationalGNN``): library defaults — PyG glorot for GAT's ``lin`` (W), ``lin_edge``
(W_e) and ``att_src``/``att_dst``/``att_edge`` (shape (1, 1, c): s = sqrt(6 / (1 + c))), zero
GAT bias; GCN glorot W, zero bias; every ``torch.nn.Linear`` (GIN MLP, fusion, decoder) with
PyTorch's default U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight and bias.

Weights are stored (in, out) (``H W``; PyTorch's ``Linear.weight`` is ``W.T``). Everything
computes in float64 and returns float64 arrays (the loss as a Python float). Every float input
of one call (x, edge attributes, params, masks) has one dtype (float32 or float64).
"""

from __future__ import annotations

import numbers

import numpy as np

from refimpl import _validate as V
from refimpl._gnn_heads import edge_mlp_weights, fuse
from refimpl._gnn_layers import gat_layer, gcn_layer, gin_layer

__all__ = [
    "cluster_encoder_forward",
    "cluster_encoder_init",
    "cluster_encoder_loss",
    "pdm_classifier_forward",
    "pdm_classifier_init",
    "split_relations",
]

FUSIONS = ("global", "concat", "semantic", "node")
VARIANTS = ("code", "logits")
EDGE_HIDDEN = 64          # the code's edge MLP width: Linear(D_r, 64) -> ReLU -> Linear(64, 1)
ATTN_DIM = 128            # attention width of the reconstructed semantic / node fusion at init
BN_EPS = 1e-5             # torch.nn.BatchNorm1d defaults
BN_MOMENTUM = 0.1
P_LAYER_DROP = 0.3        # F.dropout(x, p=0.3) after each fused layer
P_HEAD_DROP = 0.5         # nn.Dropout(0.5) in the head
STD_EPS = 1e-8            # (attr - mean) / (std + 1e-8), twice
LEAKY_SLOPE = 0.01        # F.leaky_relu's default
COS_EPS = 1e-8            # torch.cosine_similarity's default eps
N_RELATIONS_ENCODER = 3   # the encoder's spatial, temporal, causal branches


# --------------------------------------------------------------------------- validation
# Shared with the torch backend (backends/torch/gnn_models.py): everything here reads shapes,
# dtype names and dict keys only — no array values, so no host read on a device.


def _dtype_of(x, name):
    V.float_array(x, name, ndims=(2,))
    return V.dtype_name(x)


def _check_float(a, name, shape, dtype, like_name):
    """``a`` a float array of exactly ``shape`` and the call's one float ``dtype``."""
    V.float_array(a, name)
    if V.dtype_name(a) != dtype:
        raise TypeError(f"{name} must have the dtype of {like_name} ({dtype}), "
                        f"got {V.dtype_name(a)}")
    if tuple(int(s) for s in a.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(a.shape)}")


def _int_dtype(x) -> bool:
    dt = V.dtype_name(x)
    return dt.startswith(("int", "uint"))


def _check_relations(relations, dtype, n_expected, expected_from, attr_dims=None,
                     attr_required=True):
    """Structure of ``relations`` (no values read). ``attr_dims[r]``: the width D_r the params
    expect (None: any); ``attr_required[r]``: whether relation r must carry ``edge_attr``."""
    if not isinstance(relations, (list, tuple)):
        raise TypeError(f"relations must be a list of dicts {{'edge_index', 'edge_attr'}}, got "
                        f"{type(relations).__name__}")
    if len(relations) != n_expected:
        raise ValueError(f"relations must have {n_expected} entries ({expected_from}), got "
                         f"{len(relations)}")
    if isinstance(attr_required, bool):
        attr_required = (attr_required,) * n_expected
    out = []
    for r, rel in enumerate(relations):
        name = f"relations[{r}]"
        if not isinstance(rel, dict) or "edge_index" not in rel:
            raise TypeError(f"{name} must be a dict with keys 'edge_index' and 'edge_attr', got "
                            f"{type(rel).__name__ if not isinstance(rel, dict) else sorted(rel)}")
        ei = rel["edge_index"]
        if not hasattr(ei, "shape") or not hasattr(ei, "dtype"):
            raise TypeError(f"{name}['edge_index'] must be an array, got {type(ei).__name__}")
        if not _int_dtype(ei):
            raise TypeError(f"{name}['edge_index'] must be an integer array, got "
                            f"{V.dtype_name(ei)}")
        if len(ei.shape) != 2 or int(ei.shape[0]) != 2:
            raise ValueError(f"{name}['edge_index'] must have shape (2, E), got "
                             f"{tuple(ei.shape)}")
        E = int(ei.shape[1])
        ea = rel.get("edge_attr")
        if ea is None:
            if attr_required[r]:
                raise ValueError(f"{name} needs 'edge_attr' of shape (E, D) = ({E}, D)")
        else:
            V.float_array(ea, f"{name}['edge_attr']", ndims=(2,))
            if V.dtype_name(ea) != dtype:
                raise TypeError(f"{name}['edge_attr'] must have the dtype of x ({dtype}), got "
                                f"{V.dtype_name(ea)}")
            D = int(ea.shape[1])
            want = None if attr_dims is None else attr_dims[r]
            if int(ea.shape[0]) != E or (want is not None and D != want):
                shown = "D" if want is None else str(want)
                raise ValueError(f"{name}['edge_attr'] must have shape (E, {shown}) = ({E}, "
                                 f"{shown}) to match edge_index and the params, got "
                                 f"{tuple(ea.shape)}")
        out.append(E)
    return out


def _params_dict(params):
    if not isinstance(params, dict):
        raise TypeError(f"params must be a dict of arrays with dotted keys, got "
                        f"{type(params).__name__}")
    return params


def _check_keys(params, expected, dtype):
    """Every expected key present with its shape and the call's dtype; no other key."""
    for key, shape in expected.items():
        if key not in params:
            raise ValueError(f"params is missing key {key!r}")
        _check_float(params[key], f"params[{key!r}]", shape, dtype, "x")
    extra = sorted(set(params) - set(expected))
    if extra:
        raise ValueError(f"params has unexpected keys {extra} (built for another fusion, "
                         f"number of relations or layers?)")


def _pdm_layout(params, in_dim, fusion):
    """``(hidden, n_layers, R, attn)`` read from the params' shapes (keys ``l{l}.r{r}.gcn.W``)."""
    _params_dict(params)
    if "l0.r0.gcn.W" not in params:
        raise ValueError("params is missing key 'l0.r0.gcn.W'")
    W = params["l0.r0.gcn.W"]
    V.float_array(W, "params['l0.r0.gcn.W']", ndims=(2,))
    hidden = int(W.shape[1])
    n_layers = 0
    while f"l{n_layers}.r0.gcn.W" in params:
        n_layers += 1
    R = 0
    while f"l0.r{R}.gcn.W" in params:
        R += 1
    attn = None
    if fusion in ("semantic", "node"):
        if "l0.fuse.W" not in params:
            raise ValueError("params is missing key 'l0.fuse.W'")
        Wf = params["l0.fuse.W"]
        V.float_array(Wf, "params['l0.fuse.W']", ndims=(2,))
        attn = int(Wf.shape[1])
    return hidden, n_layers, R, attn


def _pdm_shapes(in_dim, edge_dims, hidden, n_layers, fusion, attn):
    """The parameter layout: ``{key: shape}`` in the init's draw order."""
    R = len(edge_dims)
    k = hidden // 2
    out = {}
    for l in range(n_layers):
        f_in = in_dim if l == 0 else hidden
        for r, D in enumerate(edge_dims):
            p = f"l{l}.r{r}."
            out[p + "edge.W1"] = (D, EDGE_HIDDEN)
            out[p + "edge.b1"] = (EDGE_HIDDEN,)
            out[p + "edge.W2"] = (EDGE_HIDDEN, 1)
            out[p + "edge.b2"] = (1,)
            out[p + "gcn.W"] = (f_in, hidden)
            out[p + "gcn.b"] = (hidden,)
            for s in ("weight", "bias", "running_mean", "running_var"):
                out[p + "bn." + s] = (hidden,)
            if f_in != hidden:
                out[p + "res.W"] = (f_in, hidden)
                out[p + "res.b"] = (hidden,)
        if fusion == "concat":
            out[f"l{l}.fuse.W"] = (R * hidden, hidden)
            out[f"l{l}.fuse.b"] = (hidden,)
        elif fusion in ("semantic", "node"):
            out[f"l{l}.fuse.W"] = (hidden, attn)
            out[f"l{l}.fuse.b"] = (attn,)
            out[f"l{l}.fuse.q"] = (attn,)
    if fusion == "global":
        out["fuse.w"] = (R,)
    out["head.W1"] = (hidden, k)
    out["head.b1"] = (k,)
    for s in ("weight", "bias", "running_mean", "running_var"):
        out["head.bn." + s] = (k,)
    out["head.W2"] = (k, 1)
    out["head.b2"] = (1,)
    return out


def _pdm_check(x, relations, params, fusion, variant, training, masks):
    """Validate a ``pdm_classifier_forward`` call; returns ``(N, hidden, n_layers, R, edge
    counts, dtype)``. Shapes, dtypes and keys only (values are checked by the layers)."""
    dtype = _dtype_of(x, "x")
    N, F = (int(s) for s in x.shape)
    if N < 1:
        raise ValueError(f"x must have at least one node, got shape {(N, F)}")
    V.choice(fusion, "fusion", FUSIONS)
    V.choice(variant, "variant", VARIANTS)
    if not isinstance(training, bool):
        raise TypeError(f"training must be a bool, got {type(training).__name__}")
    hidden, n_layers, R, attn = _pdm_layout(params, F, fusion)
    edge_dims = []
    for r in range(R):
        key = f"l0.r{r}.edge.W1"
        if key not in params:
            raise ValueError(f"params is missing key {key!r}")
        V.float_array(params[key], f"params[{key!r}]", ndims=(2,))
        edge_dims.append(int(params[key].shape[0]))
    counts = _check_relations(relations, dtype, R, "one per relation the params were built "
                              "for: keys 'l0.r*.gcn.W'", attr_dims=edge_dims)
    _check_keys(params, _pdm_shapes(F, edge_dims, hidden, n_layers, fusion, attn), dtype)
    if training and N < 2:
        raise ValueError(f"training=True needs at least 2 nodes for the batch statistics of "
                         f"BatchNorm1d, got N = {N}")
    if masks is not None:
        if not training:
            raise ValueError("masks are dropout keep masks, used only with training=True")
        if not isinstance(masks, dict):
            raise TypeError(f"masks must be a dict of arrays, got {type(masks).__name__}")
        want = {f"l{l}.drop": (N, hidden) for l in range(n_layers)}
        want["head.drop"] = (N, hidden // 2)
        for key, shape in want.items():
            if key not in masks:
                raise ValueError(f"masks is missing key {key!r} (keys: "
                                 f"{', '.join(map(repr, want))})")
            _check_float(masks[key], f"masks[{key!r}]", shape, dtype, "x")
        extra = sorted(set(masks) - set(want))
        if extra:
            raise ValueError(f"masks has unexpected keys {extra}")
    return N, hidden, n_layers, R, counts, dtype


def _encoder_check(x, relations, params):
    """Validate a ``cluster_encoder_forward`` call (shapes, dtypes, keys)."""
    dtype = _dtype_of(x, "x")
    N, F = (int(s) for s in x.shape)
    if N < 1:
        raise ValueError(f"x must have at least one node, got shape {(N, F)}")
    _params_dict(params)
    for key in ("spatial.W", "spatial.W_e", "fuse.W"):
        if key not in params:
            raise ValueError(f"params is missing key {key!r}")
        V.float_array(params[key], f"params[{key!r}]", ndims=(2,))
    hidden = int(params["spatial.W"].shape[1])
    edge_dim = int(params["spatial.W_e"].shape[0])
    emb = int(params["fuse.W"].shape[1])
    _check_relations(relations, dtype, N_RELATIONS_ENCODER, "spatial, temporal, causal",
                     attr_dims=(edge_dim, None, None), attr_required=(True, False, False))
    _check_keys(params, _encoder_shapes(F, edge_dim, hidden, emb), dtype)
    return N, F, dtype


def _encoder_shapes(in_dim, edge_dim, hidden, emb):
    return {
        "spatial.W": (in_dim, hidden), "spatial.a_src": (1, hidden),
        "spatial.a_dst": (1, hidden), "spatial.W_e": (edge_dim, hidden),
        "spatial.a_e": (1, hidden), "spatial.b": (hidden,),
        "temporal.W": (in_dim, hidden), "temporal.b": (hidden,),
        "causal.W1": (in_dim, hidden), "causal.b1": (hidden,),
        "causal.W2": (hidden, hidden), "causal.b2": (hidden,),
        "fuse.W": (3 * hidden, emb), "fuse.b": (emb,),
        "dec.W1": (emb, hidden), "dec.b1": (hidden,),
        "dec.W2": (hidden, in_dim), "dec.b2": (in_dim,),
    }


def _loss_check(x, emb, recon, lam):
    dtype = _dtype_of(x, "x")
    N, F = (int(s) for s in x.shape)
    if N < 1:
        raise ValueError(f"x must have at least one node, got shape {(N, F)}")
    V.float_array(emb, "emb", ndims=(2,))
    if V.dtype_name(emb) != dtype:
        raise TypeError(f"emb must have the dtype of x ({dtype}), got {V.dtype_name(emb)}")
    if int(emb.shape[0]) != N:
        raise ValueError(f"emb must have shape (N, d) with N = x.shape[0] = {N}, got "
                         f"{tuple(emb.shape)}")
    _check_float(recon, "recon", (N, F), dtype, "x")
    if isinstance(lam, bool) or not isinstance(lam, numbers.Real) or not np.isfinite(lam):
        raise ValueError(f"lam must be a finite real number, got {lam!r}")
    return float(lam)


def _init_args(rng, in_dim, hidden):
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    V.positive_int(in_dim, "in_dim")
    V.positive_int(hidden, "hidden", minimum=2)


# --------------------------------------------------------------------------- init


def _kaiming_fan_in(rng, fan_in, fan_out):
    """``torch.nn.init.kaiming_normal_(w, nonlinearity="relu")`` (mode fan_in): N(0, 2/fan_in),
    returned (fan_in, fan_out) (the transpose of PyTorch's (out, in) weight)."""
    return rng.normal(0.0, np.sqrt(2.0 / fan_in), size=(fan_in, fan_out))


def _glorot(rng, fan_in, fan_out, shape=None):
    """PyG's ``glorot``: U(-s, s), s = sqrt(6 / (size(-2) + size(-1))) of the stored tensor."""
    s = np.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-s, s, size=shape if shape is not None else (fan_in, fan_out))


def _torch_linear_default(rng, fan_in, size):
    """torch.nn.Linear's default weight / bias init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    s = 1.0 / np.sqrt(fan_in)
    return rng.uniform(-s, s, size=size)


def pdm_classifier_init(rng, in_dim, edge_dims, hidden=256, n_layers=2, fusion="global",
                        variant="code"):
    """Parameters of the code's ``PowerGridGNN`` (module docstring, "Initialisation"): one flat
    dict of float64 arrays with dotted keys, e.g. ``"l0.r1.edge.W1"``, ``"l0.r1.gcn.W"``,
    ``"l0.r1.bn.running_mean"``, ``"l0.r0.res.W"`` (layer 0 when in_dim != hidden),
    ``"fuse.w"`` (global) or ``"l0.fuse.W"`` (other fusions), ``"head.W1"``. ``edge_dims``: the
    attribute width D_r of each relation (spatial, temporal, causal order). ``variant`` does not
    change the parameters (the head is the same; it is validated and accepted so that the init
    and the forward take the same settings)."""
    _init_args(rng, in_dim, hidden)
    V.positive_int(n_layers, "n_layers")
    V.choice(fusion, "fusion", FUSIONS)
    V.choice(variant, "variant", VARIANTS)
    if not isinstance(edge_dims, (list, tuple)) or len(edge_dims) < 1:
        raise ValueError(f"edge_dims must be a non-empty list of ints (one attribute width per "
                         f"relation), got {edge_dims!r}")
    edge_dims = [V.positive_int(d, f"edge_dims[{r}]") for r, d in enumerate(edge_dims)]
    R = len(edge_dims)
    k = hidden // 2
    P = {}
    for l in range(n_layers):
        f_in = in_dim if l == 0 else hidden
        for r, D in enumerate(edge_dims):
            p = f"l{l}.r{r}."
            P[p + "edge.W1"] = _kaiming_fan_in(rng, D, EDGE_HIDDEN)
            P[p + "edge.b1"] = np.full(EDGE_HIDDEN, 0.1)
            P[p + "edge.W2"] = _kaiming_fan_in(rng, EDGE_HIDDEN, 1)
            P[p + "edge.b2"] = np.full(1, 0.1)
            P[p + "gcn.W"] = _glorot(rng, f_in, hidden)
            P[p + "gcn.b"] = np.zeros(hidden)
            P[p + "bn.weight"] = np.ones(hidden)
            P[p + "bn.bias"] = np.zeros(hidden)
            P[p + "bn.running_mean"] = np.zeros(hidden)
            P[p + "bn.running_var"] = np.ones(hidden)
            if f_in != hidden:
                P[p + "res.W"] = _kaiming_fan_in(rng, f_in, hidden)
                P[p + "res.b"] = _torch_linear_default(rng, f_in, hidden)
        if fusion == "concat":
            P[f"l{l}.fuse.W"] = _kaiming_fan_in(rng, R * hidden, hidden)
            P[f"l{l}.fuse.b"] = _torch_linear_default(rng, R * hidden, hidden)
        elif fusion in ("semantic", "node"):
            P[f"l{l}.fuse.W"] = _kaiming_fan_in(rng, hidden, ATTN_DIM)
            P[f"l{l}.fuse.b"] = _torch_linear_default(rng, hidden, ATTN_DIM)
            P[f"l{l}.fuse.q"] = _kaiming_fan_in(rng, ATTN_DIM, 1)[:, 0]
    if fusion == "global":
        P["fuse.w"] = np.ones(R)
    P["head.W1"] = _kaiming_fan_in(rng, hidden, k)
    P["head.b1"] = _torch_linear_default(rng, hidden, k)
    P["head.bn.weight"] = np.ones(k)
    P["head.bn.bias"] = np.zeros(k)
    P["head.bn.running_mean"] = np.zeros(k)
    P["head.bn.running_var"] = np.ones(k)
    P["head.W2"] = _kaiming_fan_in(rng, k, 1)
    P["head.b2"] = _torch_linear_default(rng, k, 1)
    return P


def cluster_encoder_init(rng, in_dim, edge_dim=8, hidden=64, emb=32):
    """Parameters of the code's ``OperationalGNN`` with library-default init (module docstring):
    keys ``spatial.{W, a_src, a_dst, W_e, a_e, b}`` (GAT, heads 1; ``a_*`` (1, hidden)),
    ``temporal.{W, b}`` (GCN), ``causal.{W1, b1, W2, b2}`` (GIN MLP), ``fuse.{W, b}`` (3 hidden
    -> emb), ``dec.{W1, b1, W2, b2}`` (emb -> hidden -> in_dim). Float64, drawn in that order."""
    _init_args(rng, in_dim, hidden)
    V.positive_int(edge_dim, "edge_dim")
    V.positive_int(emb, "emb")
    c = hidden
    att = lambda: _glorot(rng, 1, c, shape=(1, c))
    P = {
        "spatial.W": _glorot(rng, in_dim, c),
        "spatial.a_src": att(),
        "spatial.a_dst": att(),
        "spatial.W_e": _glorot(rng, edge_dim, c),
        "spatial.a_e": att(),
        "spatial.b": np.zeros(c),
        "temporal.W": _glorot(rng, in_dim, c),
        "temporal.b": np.zeros(c),
    }
    for w, b, fi, fo in (("causal.W1", "causal.b1", in_dim, c), ("causal.W2", "causal.b2", c, c),
                         ("fuse.W", "fuse.b", 3 * c, emb), ("dec.W1", "dec.b1", emb, c),
                         ("dec.W2", "dec.b2", c, in_dim)):
        P[w] = _torch_linear_default(rng, fi, (fi, fo))
        P[b] = _torch_linear_default(rng, fi, fo)
    order = list(_encoder_shapes(in_dim, edge_dim, c, emb))
    return {k: P[k] for k in order}


# --------------------------------------------------------------------------- forward


def _f64(a):
    return np.asarray(a, dtype=np.float64)


def _batch_norm(G, P, prefix, training, running):
    """BatchNorm1d (eps 1e-5, momentum 0.1): batch statistics (biased variance) in training,
    whose running update (unbiased variance) goes to ``running``; running statistics otherwise."""
    gamma, beta = P[prefix + "weight"], P[prefix + "bias"]
    if training:
        N = G.shape[0]
        m = G.mean(axis=0)
        v = ((G - m) ** 2).mean(axis=0)
        running[prefix + "running_mean"] = ((1 - BN_MOMENTUM) * P[prefix + "running_mean"]
                                            + BN_MOMENTUM * m)
        running[prefix + "running_var"] = ((1 - BN_MOMENTUM) * P[prefix + "running_var"]
                                           + BN_MOMENTUM * v * N / (N - 1))
    else:
        m, v = P[prefix + "running_mean"], P[prefix + "running_var"]
    return (G - m) / np.sqrt(v + BN_EPS) * gamma + beta


def _fuse_params(P, l, fusion):
    if fusion == "global":
        return {"w": P["fuse.w"]}
    names = ("W", "b") if fusion == "concat" else ("W", "b", "q")
    return {n: P[f"l{l}.fuse.{n}"] for n in names}


def _relu(a):
    return np.maximum(a, 0.0)


def pdm_classifier_forward(x, relations, params, fusion="global", variant="code", training=False,
                           masks=None):
    """``(out (N,), aux)`` of the code's ``PowerGridGNN`` (module docstring): ``out`` the
    probabilities (variant "code") or logits (variant "logits") of every node; ``aux["beta"]``
    the fusion weights per layer (None for concat), ``aux["running"]`` the updated BatchNorm
    running statistics in training (``{}`` otherwise). ``relations`` are the split's edges with
    standardised attributes (:func:`split_relations`). ``training=True`` needs ``masks``
    (``{"l0.drop": (N, hidden), ..., "head.drop": (N, hidden // 2)}``, keep masks scaled by
    1/(1-p); ones turn dropout off): the reference draws no random numbers."""
    x = V.host_array(x, "x")
    params = _params_dict(params)
    P = {k: V.host_array(v, f"params[{k!r}]") for k, v in params.items()}
    rels = []
    if isinstance(relations, (list, tuple)):
        for r, rel in enumerate(relations):
            if isinstance(rel, dict):
                rel = {k: (V.host_array(v, f"relations[{r}][{k!r}]") if v is not None else None)
                       for k, v in rel.items()}
            rels.append(rel)
    else:
        rels = relations
    if masks is not None and isinstance(masks, dict):
        masks = {k: V.host_array(v, f"masks[{k!r}]") for k, v in masks.items()}
    N, hidden, n_layers, R, counts, _ = _pdm_check(x, rels, P, fusion, variant, training, masks)
    if training and masks is None:
        raise ValueError("training=True needs masks in the reference (it draws no random "
                         "numbers): pass the dropout keep masks, scaled by 1/(1-p) (ones turn "
                         "dropout off)")
    P = {k: _f64(v) for k, v in P.items()}
    H = _f64(x)
    running, betas = {}, []
    for l in range(n_layers):
        stack = []
        for r in range(R):
            p = f"l{l}.r{r}."
            if counts[r] == 0:                        # the code's empty-edge branch: zeros
                stack.append(np.zeros((N, hidden)))
                continue
            ei, z = rels[r]["edge_index"], _f64(rels[r]["edge_attr"])
            w = edge_mlp_weights(z, P[p + "edge.W1"], P[p + "edge.b1"], P[p + "edge.W2"],
                                 P[p + "edge.b2"])
            G = gcn_layer(H, ei, P[p + "gcn.W"], P[p + "gcn.b"], edge_weight=w,
                          add_loops=False, normalize=True)
            B = _batch_norm(G, P, p + "bn.", training, running)
            res = H @ P[p + "res.W"] + P[p + "res.b"] if p + "res.W" in P else H
            stack.append(B + res)
        Hf, beta = fuse(np.stack(stack), fusion, _fuse_params(P, l, fusion))
        betas.append(None if beta is None else _f64(beta))
        H = _relu(_f64(Hf))
        if training:
            H = H * _f64(masks[f"l{l}.drop"])
    a = H @ P["head.W1"] + P["head.b1"]
    a = _relu(_batch_norm(a, P, "head.bn.", training, running))
    if training:
        a = a * _f64(masks["head.drop"])
    z = (a @ P["head.W2"] + P["head.b2"])[:, 0]
    out = 1.0 / (1.0 + np.exp(-z)) if variant == "code" else z
    return out, {"beta": betas, "running": running}


def cluster_encoder_forward(x, relations, params):
    """``(emb (N, emb), recon (N, in_dim))`` of the code's ``OperationalGNN`` (module
    docstring): GAT (spatial, edge attributes, loops with mean fill) -> leaky_relu(0.01), GCN
    (temporal) -> ELU, GIN (causal) -> ReLU, concatenation -> Linear = emb; decoder
    Linear -> ReLU -> Linear = recon."""
    x = V.host_array(x, "x")
    params = _params_dict(params)
    P = {k: V.host_array(v, f"params[{k!r}]") for k, v in params.items()}
    rels = relations
    if isinstance(relations, (list, tuple)):
        rels = [({k: (V.host_array(v, f"relations[{r}][{k!r}]") if v is not None else None)
                  for k, v in rel.items()} if isinstance(rel, dict) else rel)
                for r, rel in enumerate(relations)]
    _encoder_check(x, rels, P)
    P = {k: _f64(v) for k, v in P.items()}
    X = _f64(x)
    S, _ = gat_layer(X, rels[0]["edge_index"], P["spatial.W"], P["spatial.a_src"],
                     P["spatial.a_dst"], P["spatial.b"], edge_attr=_f64(rels[0]["edge_attr"]),
                     W_e=P["spatial.W_e"], a_e=P["spatial.a_e"], negative_slope=0.2,
                     concat=True, add_loops=True, fill="mean")
    S = _f64(S)
    S = np.where(S > 0, S, LEAKY_SLOPE * S)
    T = _f64(gcn_layer(X, rels[1]["edge_index"], P["temporal.W"], P["temporal.b"]))
    T = np.where(T > 0, T, np.expm1(np.minimum(T, 0.0)))          # ELU, alpha 1
    C = _relu(_f64(gin_layer(X, rels[2]["edge_index"], P["causal.W1"], P["causal.b1"],
                             P["causal.W2"], P["causal.b2"], eps=0.0)))
    emb = np.concatenate([S, T, C], axis=1) @ P["fuse.W"] + P["fuse.b"]
    recon = _relu(emb @ P["dec.W1"] + P["dec.b1"]) @ P["dec.W2"] + P["dec.b2"]
    return emb, recon


def cluster_encoder_loss(x, emb, recon, lam=0.1):
    """``mean (recon - x)^2 + lam mean_{i,j} (1 - cos(e_i, e_j))`` over all N^2 ordered pairs,
    with torch's ``cosine_similarity`` (norms clamped at 1e-8). A Python float."""
    x, emb, recon = (V.host_array(a, n) for a, n in ((x, "x"), (emb, "emb"), (recon, "recon")))
    lam = _loss_check(x, emb, recon, lam)
    x, emb, recon = _f64(x), _f64(emb), _f64(recon)
    mse = float(np.mean((recon - x) ** 2))
    unit = emb / np.maximum(np.linalg.norm(emb, axis=1), COS_EPS)[:, None]
    cos = unit @ unit.T                                          # (N, N) cosine similarities
    return mse + lam * float(np.mean(1.0 - cos))


# --------------------------------------------------------------------------- split isolation


def split_relations(relations, node_mask):
    """The code's split isolation and double standardisation (module docstring) on the host:
    for each relation keep the edges whose two endpoints have ``node_mask`` True, standardise
    the kept attributes with the whole relation's column means / unbiased stds (+ 1e-8), then
    again with the kept edges' own. Returns new relation dicts ``{"edge_index" (2, E') (input
    integer dtype, global node ids), "edge_attr" (E', D) float64}``, in input order."""
    node_mask = V.host_array(node_mask, "node_mask")
    if node_mask.ndim != 1 or node_mask.dtype != np.bool_:
        raise TypeError(f"node_mask must be a 1-D bool array (N,), got dtype {node_mask.dtype} "
                        f"and shape {node_mask.shape}")
    N = int(node_mask.shape[0])
    if not isinstance(relations, (list, tuple)) or len(relations) < 1:
        raise ValueError(f"relations must be a non-empty list of dicts {{'edge_index', "
                         f"'edge_attr'}}, got {type(relations).__name__}")
    out = []
    for r, rel in enumerate(relations):
        if not isinstance(rel, dict) or "edge_index" not in rel or rel.get("edge_attr") is None:
            raise TypeError(f"relations[{r}] must be a dict with keys 'edge_index' and "
                            f"'edge_attr'")
        ei = V.host_array(rel["edge_index"], f"relations[{r}]['edge_index']")
        ea = V.host_array(rel["edge_attr"], f"relations[{r}]['edge_attr']")
        name = f"relations[{r}]"
        if not _int_dtype(ei):
            raise TypeError(f"{name}['edge_index'] must be an integer array, got {ei.dtype.name}")
        if ei.ndim != 2 or ei.shape[0] != 2:
            raise ValueError(f"{name}['edge_index'] must have shape (2, E), got {ei.shape}")
        V.float_array(ea, f"{name}['edge_attr']", ndims=(2,))
        E = ei.shape[1]
        if ea.shape[0] != E:
            raise ValueError(f"{name}['edge_attr'] must have shape (E, D) with E = "
                             f"edge_index.shape[1] = {E}, got {ea.shape}")
        if E and (ei.min() < 0 or ei.max() >= N):
            raise ValueError(f"{name}['edge_index'] has node indices outside [0, {N}): "
                             f"min {int(ei.min())}, max {int(ei.max())} (N = node_mask.shape[0])")
        if not np.isfinite(ea).all():
            raise ValueError(f"{name}['edge_attr'] must be finite")
        keep = node_mask[ei[0]] & node_mask[ei[1]] if E else np.zeros(0, dtype=bool)
        n_keep = int(keep.sum())
        if n_keep == 1:
            raise ValueError(f"{name} keeps a single edge in the split: the code's unbiased "
                             f"standard deviation of its attributes is undefined (NaN)")
        a = _f64(ea[keep])
        if n_keep:
            full = _f64(ea)
            a = (a - full.mean(axis=0)) / (full.std(axis=0, ddof=1) + STD_EPS)
            a = (a - a.mean(axis=0)) / (a.std(axis=0, ddof=1) + STD_EPS)
        out.append({"edge_index": ei[:, keep], "edge_attr": a})
    return out
