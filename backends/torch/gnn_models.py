r"""The official code's two models (``PowerGridGNN``, ``OperationalGNN``) on torch tensors, built
from the torch backend's graph layers and heads (:mod:`backends.torch.gnn`).

Same functions, signatures, equations, parameter keys and messages as the reference
:mod:`refimpl._gnn_models` (read its docstring for the models; spec ``gnn_pdm.md`` sec. 3).
Paper arXiv 2507.07298; official code ``CEL-lab/Multilayer_GNN`` @6910437
(``Predictive_Maintenance.ipynb`` cells 7-9, ``Substation_Clustering.ipynb`` cells 5-6).
``pdm_classifier_init``, ``cluster_encoder_init`` and ``split_relations`` exist in the
reference only (host-side NumPy preprocessing); :func:`to_torch_params` moves a params dict
(or any dict of arrays) onto a device.

Inputs are torch tensors on one device; every float input of a call (x, edge attributes,
params, masks) has one dtype (float32 or float64) and the results have it too. Both forwards
are plain autograd graphs of the backend's differentiable layers, so ``loss.backward()`` gives
the gradient w.r.t. every float param tensor that requires it (the training loop uses the
params dict's tensors as AdamW leaves)::

    PdM, per layer l and relation r:
      w    = gnn.edge_mlp_weights(z_r, edge.W1, edge.b1, edge.W2, edge.b2)      (E_r,)
      G    = gnn.gcn_layer(H, edge_index_r, gcn.W, gcn.b, edge_weight=w,
                           add_loops=False, normalize=True)
      H_r  = F.batch_norm(G, ...) + (H res.W + res.b  or  H);   0 when relation r has no edge
      H    = dropout_0.3(relu(gnn.fuse(stack(H_r), fusion, ...)[0]))
    head:  z = dropout_0.5(relu(BN(H W1 + b1))) W2 + b2;  out = sigmoid(z) ("code") or z

    encoder: S = leaky_relu_0.01(gnn.gat_layer(x, spatial, ..., edge_attr, W_e, a_e)[0]);
             T = elu(gnn.gcn_layer(x, temporal, W, b));  C = relu(gnn.gin_layer(x, causal, ...))
             emb = [S | T | C] fuse.W + fuse.b;  recon = relu(emb dec.W1 + dec.b1) dec.W2 + dec.b2

BatchNorm is ``torch.nn.functional.batch_norm`` (eps 1e-5, momentum 0.1): in training it
normalises with the batch statistics (biased variance) and updates COPIES of the running
statistics with PyTorch's rule (unbiased variance); the copies (detached) are returned in
``aux["running"]`` for the caller to merge (``params[k] = aux["running"][k]`` or ``.copy_``),
the params themselves are never modified. Dropout: ``H * masks[key]`` when ``masks`` is given
(keep masks scaled by 1/(1-p), keys ``"l{l}.drop"`` and ``"head.drop"``), else
``torch.nn.functional.dropout`` drawing from torch's default generator (seed it with
``torch.manual_seed``; on CUDA the default CUDA generator of the device).

The encoder's loss: ``mean (recon - x)^2 + lam mean_{i,j} (1 - cos(e_i, e_j))`` computed
without the N x N matrix: with ``u_i = e_i / max(|e_i|, 1e-8)``,
``mean_{i,j} u_i . u_j = |sum_i u_i|^2 / N^2`` (the same sum as the reference's explicit
matrix mean, regrouped). Returned as a 0-d tensor.

Host reads (documented)
-----------------------
The model-level validation (the reference's ``_pdm_check`` / ``_encoder_check`` /
``_loss_check``) reads shapes, dtypes and dict keys only — no device value. The value checks
(edge indices in range, non-negative edge weights, ...) are those of the layer functions of
:mod:`backends.torch.gnn`, each of which reads its flags with ONE packed device-to-host copy
per call (the loop count that sizes a self-loop edge list travels in that read; see that
module): a PdM forward calls ``edge_mlp_weights`` and ``gcn_layer`` once per (layer, relation
with edges) — 2 L R reads, 12 for the code's 2 layers and 3 relations — and ``fuse`` (no read)
once per layer; an encoder forward calls ``gat_layer``, ``gcn_layer`` and ``gin_layer`` once
each (3 reads). Nothing else in this module reads the device: ``cluster_encoder_loss`` reads
nothing, ``to_torch_params`` is an explicit host-to-device copy (device-to-host only when
given tensors). The tests count the reads.

Cost (measured 2026-11-22 on this project's 2-core CPU machine, heavily shared: process CPU
time, one torch thread; 347 nodes, 8 features, 3 relations with 23,378 / 38,188 / 10,136 random
edges, hidden 256, 2 layers, training mode, global fusion): forward + backward ~125-130 ms
float32 / ~220-230 ms float64 on the whole graph, ~65-70 / ~100 ms on a 60 % node split
(26,722 edges left); the evaluation forward ~50 / ~88 ms (whole graph). Freezing the edge MLPs
saves ~50 ms of the float32 step: most of the backward is the edge-weight gradient of the GCN
aggregation, ``dw_e = <dH[dst_e], (H W)[src_e]>`` (an E x hidden gather-product per layer and
relation inside :mod:`backends.torch.gnn`).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from backends.torch import device as _default_device
from backends.torch import gnn as G
from backends.torch import native as _native
from refimpl import _gnn_models as _ref
from refimpl._gnn_models import (
    BN_EPS,
    BN_MOMENTUM,
    COS_EPS,
    LEAKY_SLOPE,
    P_HEAD_DROP,
    P_LAYER_DROP,
)

__all__ = [
    "cluster_encoder_forward",
    "cluster_encoder_loss",
    "pdm_classifier_forward",
    "to_torch_params",
]

_DTYPES = {"float32": torch.float32, "float64": torch.float64}


def to_torch_params(params, dtype=None, device=None, requires_grad=False):
    """The NumPy params dict of :func:`pdm_classifier_init` / :func:`cluster_encoder_init` (or
    a dict of dropout masks: any dict of arrays) as a dict of tensors with the same keys (an explicit
    host-to-device copy). ``dtype``: ``torch.float32`` / ``torch.float64`` or their names (None:
    float64, the reference's); ``device``: None -> :func:`backends.torch.device`.
    ``requires_grad=True`` makes every float tensor except the BatchNorm running statistics a
    leaf that requires grad (what an optimiser takes)."""
    if not isinstance(params, dict):
        raise TypeError(f"params must be a dict of arrays with dotted keys, got "
                        f"{type(params).__name__}")
    if isinstance(dtype, str):
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(map(repr, _DTYPES))}, got "
                             f"{dtype!r}")
        dtype = _DTYPES[dtype]
    dtype = torch.float64 if dtype is None else dtype
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
    dev = _default_device() if device is None else torch.device(device)
    out = {}
    for k, v in params.items():
        a = np.ascontiguousarray(v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else v)
        if a.dtype.kind == "f":
            t = torch.as_tensor(a, device=dev).to(dtype)
            if requires_grad and "running_" not in k:
                t.requires_grad_(True)
        else:
            t = torch.as_tensor(a, device=dev)
        out[k] = t
    return out


def _native_call(x, relations, params, masks=None):
    _native(x=x)
    if isinstance(params, dict):
        _native(**{f"params[{k!r}]": v for k, v in params.items()})
    if isinstance(relations, (list, tuple)):
        for r, rel in enumerate(relations):
            if isinstance(rel, dict):
                _native(**{f"relations[{r}][{k!r}]": v for k, v in rel.items()})
    if isinstance(masks, dict):
        _native(**{f"masks[{k!r}]": v for k, v in masks.items()})


def _batch_norm(Gm, P, prefix, training, running):
    """``F.batch_norm`` with the params' running statistics (eval) or batch statistics, the
    updated running statistics going to ``running`` (training; copies, the params untouched)."""
    rm, rv = P[prefix + "running_mean"], P[prefix + "running_var"]
    if training:
        rm, rv = rm.detach().clone(), rv.detach().clone()
        running[prefix + "running_mean"] = rm
        running[prefix + "running_var"] = rv
    return F.batch_norm(Gm, rm, rv, P[prefix + "weight"], P[prefix + "bias"], training=training,
                        momentum=BN_MOMENTUM, eps=BN_EPS)


def _dropout(H, masks, key, p, training):
    if not training:
        return H
    if masks is not None:
        return H * masks[key]
    return F.dropout(H, p=p, training=True)


def pdm_classifier_forward(x, relations, params, fusion="global", variant="code", training=False,
                           masks=None):
    """``(out (N,), aux)`` of the code's ``PowerGridGNN`` on tensors (the reference's
    :func:`refimpl._gnn_models.pdm_classifier_forward`): ``out`` probabilities (variant
    "code") or logits ("logits"); ``aux["beta"]`` the fusion weights per layer (None for
    concat); ``aux["running"]`` the updated BatchNorm running statistics (detached copies) in
    training, ``{}`` otherwise. ``training=True`` without ``masks`` draws dropout from torch's
    default generator."""
    _native_call(x, relations, params, masks)
    N, hidden, n_layers, R, counts, _ = _ref._pdm_check(x, relations, params, fusion, variant,
                                                        training, masks)
    P = params
    H = x
    running, betas = {}, []
    for l in range(n_layers):
        stack = []
        for r in range(R):
            p = f"l{l}.r{r}."
            if counts[r] == 0:                        # the code's empty-edge branch: zeros
                stack.append(x.new_zeros((N, hidden)))
                continue
            ei, z = relations[r]["edge_index"], relations[r]["edge_attr"]
            w = G.edge_mlp_weights(z, P[p + "edge.W1"], P[p + "edge.b1"], P[p + "edge.W2"],
                                   P[p + "edge.b2"])
            Gm = G.gcn_layer(H, ei, P[p + "gcn.W"], P[p + "gcn.b"], edge_weight=w,
                             add_loops=False, normalize=True)
            B = _batch_norm(Gm, P, p + "bn.", training, running)
            res = torch.addmm(P[p + "res.b"], H, P[p + "res.W"]) if p + "res.W" in P else H
            stack.append(B + res)
        Hf, beta = G.fuse(torch.stack(stack), fusion, _ref._fuse_params(P, l, fusion))
        betas.append(beta)
        H = _dropout(torch.relu(Hf), masks, f"l{l}.drop", P_LAYER_DROP, training)
    a = torch.addmm(P["head.b1"], H, P["head.W1"])
    a = torch.relu(_batch_norm(a, P, "head.bn.", training, running))
    a = _dropout(a, masks, "head.drop", P_HEAD_DROP, training)
    z = torch.addmm(P["head.b2"], a, P["head.W2"])[:, 0]
    out = torch.sigmoid(z) if variant == "code" else z
    return out, {"beta": betas, "running": running}


def cluster_encoder_forward(x, relations, params):
    """``(emb (N, emb), recon (N, in_dim))`` of the code's ``OperationalGNN`` on tensors (the
    reference's :func:`refimpl._gnn_models.cluster_encoder_forward`)."""
    _native_call(x, relations, params)
    _ref._encoder_check(x, relations, params)
    P = params
    S, _ = G.gat_layer(x, relations[0]["edge_index"], P["spatial.W"], P["spatial.a_src"],
                       P["spatial.a_dst"], P["spatial.b"], edge_attr=relations[0]["edge_attr"],
                       W_e=P["spatial.W_e"], a_e=P["spatial.a_e"], negative_slope=0.2,
                       concat=True, add_loops=True, fill="mean")
    S = F.leaky_relu(S, LEAKY_SLOPE)
    T = F.elu(G.gcn_layer(x, relations[1]["edge_index"], P["temporal.W"], P["temporal.b"]))
    C = torch.relu(G.gin_layer(x, relations[2]["edge_index"], P["causal.W1"], P["causal.b1"],
                               P["causal.W2"], P["causal.b2"], eps=0.0))
    emb = torch.addmm(P["fuse.b"], torch.cat([S, T, C], dim=1), P["fuse.W"])
    recon = torch.addmm(P["dec.b2"], torch.relu(torch.addmm(P["dec.b1"], emb, P["dec.W1"])),
                        P["dec.W2"])
    return emb, recon


def cluster_encoder_loss(x, emb, recon, lam=0.1):
    """``mean (recon - x)^2 + lam mean_{i,j} (1 - cos(e_i, e_j))`` as a 0-d tensor, the
    cosine term as ``1 - |sum_i u_i|^2 / N^2`` with ``u_i = e_i / max(|e_i|, 1e-8)`` (no N x N
    matrix; module docstring)."""
    _native(x=x, emb=emb, recon=recon)
    lam = _ref._loss_check(x, emb, recon, lam)
    N = emb.shape[0]
    mse = torch.mean((recon - x) ** 2)
    unit = emb / torch.linalg.vector_norm(emb, dim=1, keepdim=True).clamp_min(COS_EPS)
    s = unit.sum(dim=0)
    return mse + lam * (1.0 - torch.dot(s, s) / (N * N))
