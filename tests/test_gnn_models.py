"""The gnn family's two models (arXiv 2507.07298; official code CEL-lab/Multilayer_GNN @6910437):
the NumPy reference (refimpl._gnn_models) and the torch backend (backends.torch.gnn_models).

Oracles:
(1) a line-by-line torch / PyG transcription of the notebooks' ``WeightedGCNConv`` +
    ``PowerGridGNN`` (Predictive_Maintenance.ipynb cells 7-8: GCNConv without loops, the edge
    MLP, BatchNorm1d, residual Linear, the global softmax fusion, the head; the split masks and
    both standardisations inside the model) and of ``OperationalGNN`` + its loss
    (Substation_Clustering.ipynb cells 5-6: GATConv, GCNConv, GINConv), with our weights
    copied in, float64: outputs equal to 1e-10 in eval and training mode (fixed dropout masks
    applied identically), running statistics equal to BatchNorm1d's; our init's distributions
    equal the notebook modules' (Kolmogorov-Smirnov, per parameter);
(2) the torch models equal the reference (float64 1e-10, float32 1e-4 relative);
(3) autograd gradients of the torch model (loss = focal_bce on a few nodes) equal central
    finite differences of the reference forward;
(4) split_relations: the kept edges are exactly those inside the split, attributes have column
    mean 0 and unbiased std 1 - O(1e-8);
(5) bad input: the reference's error, and the same type and message from the torch backend.
"""

import numpy as np
import pytest
from scipy import stats

torch = pytest.importorskip("torch")
pytest.importorskip("torch_geometric")

import torch.nn.functional as F
from finite_diff import central
from torch import nn
from torch_geometric.data import HeteroData
from torch_geometric.nn import GATConv, GCNConv, GINConv
from torch_testing import npy, raises_like_reference

from refimpl import _gnn_heads as RH
from refimpl import _gnn_models as M

pytestmark = [pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta state"),
              pytest.mark.filterwarnings("ignore:Sparse invariant checks are implicitly")]

F64, F32 = torch.float64, torch.float32
ETYPES = ("spatial", "temporal", "causal")
DIMS = (8, 2, 4)


def _tm():
    """The torch models (imported when a test needs them: the module builds on
    backends.torch.gnn)."""
    return pytest.importorskip("backends.torch.gnn_models")


# --------------------------------------------------------------------------- test graph


def make_graph(seed=0, N=40, F_in=12, dims=DIMS):
    """x (N, F), three relations (random directed edges; the temporal one with a duplicate edge
    and a self-loop; the causal one only among training nodes, so that the val / test splits
    have no causal edge — the code's empty-relation branch), and 24/8/8 split masks."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(N, F_in))
    perm = rng.permutation(N)
    masks = {m: np.zeros(N, dtype=bool) for m in ("train", "val", "test")}
    masks["train"][perm[:24]] = True
    masks["val"][perm[24:32]] = True
    masks["test"][perm[32:]] = True
    rels = []
    for r, (E, D) in enumerate(zip((300, 400, 60), dims)):
        if r == 2:
            tr = perm[:24]
            ei = np.stack([rng.choice(tr, E), rng.choice(tr, E)])
        else:
            ei = rng.integers(0, N, size=(2, E))
        if r == 1:
            ei[:, 1] = ei[:, 0]                       # a duplicate edge
            ei[:, 2] = (5, 5)                         # a self-loop
        attr = rng.normal(loc=rng.uniform(-3, 3, D), scale=rng.uniform(0.5, 4, D), size=(E, D))
        rels.append({"edge_index": ei.astype(np.int64), "edge_attr": attr})
    return x, rels, masks


def perturb_pdm(P, rng):
    """Non-trivial BatchNorm affine / running statistics and fusion weights (init has 1 / 0)."""
    P = dict(P)
    for k in list(P):
        if k.endswith("bn.weight"):
            P[k] = rng.uniform(0.5, 1.5, P[k].shape)
        elif k.endswith(("bn.bias", "running_mean")):
            P[k] = rng.normal(0, 0.3, P[k].shape)
        elif k.endswith("running_var"):
            P[k] = rng.uniform(0.5, 2.0, P[k].shape)
        elif k.endswith("gcn.b") or k == "fuse.w":
            P[k] = rng.normal(0, 0.5, P[k].shape)
    return P


def draw_masks(rng, N, hidden, n_layers):
    m = {f"l{l}.drop": (rng.random((N, hidden)) >= M.P_LAYER_DROP) / (1 - M.P_LAYER_DROP)
         for l in range(n_layers)}
    m["head.drop"] = (rng.random((N, hidden // 2)) >= M.P_HEAD_DROP) / (1 - M.P_HEAD_DROP)
    return m


def t(a, dtype=F64):
    a = np.asarray(a)
    return torch.as_tensor(a) if a.dtype.kind in "iub" else torch.as_tensor(a).to(dtype)


def t_rels(rels, dtype=F64):
    return [{k: t(v, dtype) for k, v in r.items()} for r in rels]


# --------------------------------------------------------------------------- the notebooks,
# transcribed (test-only oracle; the fixed-mask dropout is the one addition)


class MaskedDropout(nn.Module):
    """nn.Dropout(p), or ``x * masks[key]`` when the owner holds fixed keep masks."""

    def __init__(self, p, key, owner):
        super().__init__()
        self.p, self.key, self.owner = p, key, [owner]

    def forward(self, x):
        masks = self.owner[0].fixed_masks
        if self.training and masks is not None:
            return x * masks[self.key]
        return F.dropout(x, p=self.p, training=self.training)


class NbWeightedGCNConv(nn.Module):
    """Predictive_Maintenance.ipynb cell 7."""

    def __init__(self, in_channels, out_channels, edge_attr_dim):
        super().__init__()
        self.gcn = GCNConv(in_channels, out_channels, add_self_loops=False)
        self.edge_mlp = nn.Sequential(nn.Linear(edge_attr_dim, 64), nn.ReLU(), nn.Linear(64, 1),
                                      nn.Sigmoid())
        self.batch_norm = nn.BatchNorm1d(out_channels)
        self.residual_proj = (nn.Linear(in_channels, out_channels)
                              if in_channels != out_channels else nn.Identity())
        for layer in self.edge_mlp:
            if isinstance(layer, nn.Linear):
                nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")
                nn.init.constant_(layer.bias, 0.1)

    def forward(self, x, edge_index, edge_attr):
        if edge_index.size(1) == 0:
            return self.residual_proj(x)
        edge_attr = (edge_attr - edge_attr.mean(dim=0)) / (edge_attr.std(dim=0) + 1e-8)
        weights = self.edge_mlp(edge_attr).squeeze()
        out = self.gcn(x, edge_index, edge_weight=weights + 1e-8)
        out = self.batch_norm(out)
        return out + self.residual_proj(x)


class NbPowerGridGNN(nn.Module):
    """Predictive_Maintenance.ipynb cell 8 (dropouts through MaskedDropout)."""

    def __init__(self, in_channels, hidden_dim, edge_dims, num_layers=3):
        super().__init__()
        self.fixed_masks = None
        self.edge_types = list(edge_dims.keys())
        self.layers = nn.ModuleList()
        current_dim = in_channels
        for _ in range(num_layers):
            self.layers.append(nn.ModuleDict({
                et: NbWeightedGCNConv(current_dim, hidden_dim, edge_dims[et])
                for et in self.edge_types}))
            current_dim = hidden_dim
        self.layer_drops = nn.ModuleList(
            [MaskedDropout(0.3, f"l{l}.drop", self) for l in range(num_layers)])
        self.head = nn.Sequential(
            nn.Linear(hidden_dim, hidden_dim // 2), nn.BatchNorm1d(hidden_dim // 2), nn.ReLU(),
            MaskedDropout(0.5, "head.drop", self), nn.Linear(hidden_dim // 2, 1), nn.Sigmoid())
        self.aggregation_weights = nn.Parameter(torch.ones(len(self.edge_types)))
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")

    def _register_edge_stats(self, data):
        for et in self.edge_types:
            attr = data["substation", et, "substation"].edge_attr
            self.register_buffer(f"{et}_mean", attr.mean(dim=0))
            self.register_buffer(f"{et}_std", attr.std(dim=0) + 1e-8)

    def forward(self, data, mode="train"):
        x = data["substation"].x
        edge_masks = self._get_edge_masks(data, mode)
        for layer, drop in zip(self.layers, self.layer_drops):
            messages = []
            for et in self.edge_types:
                edge_data = data["substation", et, "substation"]
                idx, attr = edge_data.edge_index, edge_data.edge_attr
                mask = edge_masks[et]
                idx, attr = idx[:, mask], attr[mask]
                if idx.shape[1] == 0:
                    messages.append(x.new_zeros(x.size(0), layer[et].gcn.out_channels))
                else:
                    attr = (attr - getattr(self, f"{et}_mean")) / getattr(self, f"{et}_std")
                    messages.append(layer[et](x, idx, attr))
            x = torch.stack(messages, dim=0)
            x = torch.sum(x * F.softmax(self.aggregation_weights, dim=0)[:, None, None], dim=0)
            x = F.relu(x)
            x = drop(x)
        return self.head(x)

    def _get_edge_masks(self, data, mode="train"):
        masks = {}
        split_mask = getattr(data["substation"], f"{mode}_mask").bool()
        for et in self.edge_types:
            edge_index = data["substation", et, "substation"].edge_index
            masks[et] = split_mask[edge_index[0]] & split_mask[edge_index[1]]
        return masks


class NbOperationalGNN(nn.Module):
    """Substation_Clustering.ipynb cell 5."""

    def __init__(self, in_dim, hidden_dim=64, out_dim=32):
        super().__init__()
        self.spatial_conv = GATConv(in_dim, hidden_dim, heads=1, edge_dim=8)
        self.temporal_conv = GCNConv(in_dim, hidden_dim)
        self.causal_conv = GINConv(nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.ReLU(),
                                                 nn.Linear(hidden_dim, hidden_dim)))
        self.fuse = nn.Linear(hidden_dim * 3, out_dim)
        self.decoder = nn.Sequential(nn.Linear(out_dim, hidden_dim), nn.ReLU(),
                                     nn.Linear(hidden_dim, in_dim))

    def forward(self, g):
        x = g["substation"].x
        s = g["substation", "spatial", "substation"]
        x_spatial = F.leaky_relu(self.spatial_conv(x, s.edge_index, s.edge_attr))
        x_temporal = F.elu(self.temporal_conv(x, g["substation", "temporal",
                                                   "substation"].edge_index))
        x_causal = F.relu(self.causal_conv(x, g["substation", "causal", "substation"].edge_index))
        embeddings = self.fuse(torch.cat([x_spatial, x_temporal, x_causal], dim=-1))
        return embeddings, self.decoder(embeddings)


def nb_cluster_loss(x, emb, recon):
    """Substation_Clustering.ipynb cell 6."""
    loss = F.mse_loss(recon, x)
    sim = torch.cosine_similarity(emb.unsqueeze(1), emb.unsqueeze(0), dim=-1)
    return loss + 0.1 * (1 - sim).mean()


def hetero(x, rels, masks=None):
    g = HeteroData()
    g["substation"].x = t(x)
    for et, rel in zip(ETYPES, rels):
        g["substation", et, "substation"].edge_index = t(rel["edge_index"])
        g["substation", et, "substation"].edge_attr = t(rel["edge_attr"])
    for m, v in (masks or {}).items():
        setattr(g["substation"], f"{m}_mask", t(v))
    return g


def _copy(param, a, transpose=False):
    a = t(a)
    param.copy_(a.T if transpose else a.reshape(param.shape))


@torch.no_grad()
def load_pdm(model, P, n_layers):
    for l in range(n_layers):
        for r, et in enumerate(ETYPES):
            m, p = model.layers[l][et], f"l{l}.r{r}."
            _copy(m.edge_mlp[0].weight, P[p + "edge.W1"], True)
            _copy(m.edge_mlp[0].bias, P[p + "edge.b1"])
            _copy(m.edge_mlp[2].weight, P[p + "edge.W2"], True)
            _copy(m.edge_mlp[2].bias, P[p + "edge.b2"])
            _copy(m.gcn.lin.weight, P[p + "gcn.W"], True)
            _copy(m.gcn.bias, P[p + "gcn.b"])
            for s in ("weight", "bias", "running_mean", "running_var"):
                _copy(getattr(m.batch_norm, s), P[p + "bn." + s])
            if p + "res.W" in P:
                _copy(m.residual_proj.weight, P[p + "res.W"], True)
                _copy(m.residual_proj.bias, P[p + "res.b"])
    _copy(model.aggregation_weights, P["fuse.w"])
    _copy(model.head[0].weight, P["head.W1"], True)
    _copy(model.head[0].bias, P["head.b1"])
    for s in ("weight", "bias", "running_mean", "running_var"):
        _copy(getattr(model.head[1], s), P["head.bn." + s])
    _copy(model.head[4].weight, P["head.W2"], True)
    _copy(model.head[4].bias, P["head.b2"])


@torch.no_grad()
def load_encoder(model, P):
    g = model.spatial_conv
    _copy(g.lin.weight, P["spatial.W"], True)
    _copy(g.att_src, P["spatial.a_src"])
    _copy(g.att_dst, P["spatial.a_dst"])
    _copy(g.lin_edge.weight, P["spatial.W_e"], True)
    _copy(g.att_edge, P["spatial.a_e"])
    _copy(g.bias, P["spatial.b"])
    _copy(model.temporal_conv.lin.weight, P["temporal.W"], True)
    _copy(model.temporal_conv.bias, P["temporal.b"])
    mlp = model.causal_conv.nn
    _copy(mlp[0].weight, P["causal.W1"], True)
    _copy(mlp[0].bias, P["causal.b1"])
    _copy(mlp[2].weight, P["causal.W2"], True)
    _copy(mlp[2].bias, P["causal.b2"])
    _copy(model.fuse.weight, P["fuse.W"], True)
    _copy(model.fuse.bias, P["fuse.b"])
    _copy(model.decoder[0].weight, P["dec.W1"], True)
    _copy(model.decoder[0].bias, P["dec.b1"])
    _copy(model.decoder[2].weight, P["dec.W2"], True)
    _copy(model.decoder[2].bias, P["dec.b2"])


def nb_pdm(x, rels, masks, P, hidden, n_layers):
    model = NbPowerGridGNN(x.shape[1], hidden, dict(zip(ETYPES, DIMS)), num_layers=n_layers)
    model = model.double()
    g = hetero(x, rels, masks)
    model._register_edge_stats(g)
    load_pdm(model, P, n_layers)
    return model, g


# --------------------------------------------------------------------------- (1) the notebooks


@pytest.mark.parametrize("training", [False, True])
@pytest.mark.parametrize("mode", ["train", "val", "test"])
def test_pdm_equals_notebook(mode, training):
    x, rels, masks = make_graph()
    rng = np.random.default_rng(1)
    hidden, L = 16, 2
    P = perturb_pdm(M.pdm_classifier_init(rng, x.shape[1], DIMS, hidden=hidden, n_layers=L),
                    rng)
    model, g = nb_pdm(x, rels, masks, P, hidden, L)
    split = M.split_relations(rels, masks[mode])
    if mode != "train":
        assert split[2]["edge_index"].shape == (2, 0)           # the empty-relation branch
    kw = {}
    if training:
        dm = draw_masks(rng, x.shape[0], hidden, L)
        model.fixed_masks = {k: t(v) for k, v in dm.items()}
        model.train()
        kw = {"training": True, "masks": dm}
    else:
        model.eval()
    want = model(g, mode=mode)[:, 0]
    out, aux = M.pdm_classifier_forward(x, split, P, **kw)
    np.testing.assert_allclose(out, npy(want), rtol=1e-10, atol=1e-10)
    beta = npy(F.softmax(model.aggregation_weights, dim=0))
    assert len(aux["beta"]) == L
    for b in aux["beta"]:
        np.testing.assert_allclose(b, beta, rtol=1e-12, atol=1e-15)
    if not training:
        assert aux["running"] == {}
        return
    # running statistics: BatchNorm1d's own update (modules that ran); the others unchanged
    bns = {f"l{l}.r{r}.bn.": model.layers[l][et].batch_norm
           for l in range(L) for r, et in enumerate(ETYPES)}
    bns["head.bn."] = model.head[1]
    for p, bn in bns.items():
        for s in ("running_mean", "running_var"):
            if p + s in aux["running"]:
                np.testing.assert_allclose(aux["running"][p + s], npy(getattr(bn, s)),
                                           rtol=1e-12, atol=1e-14)
            else:
                assert mode != "train" and ".r2." in p
                np.testing.assert_array_equal(npy(getattr(bn, s)), P[p + s])
    n_bn = 2 * (L * (3 if mode == "train" else 2) + 1)
    assert len(aux["running"]) == n_bn


def test_pdm_logits_variant_and_all_positive_evaluation():
    """variant "logits" returns the logit whose sigmoid is the "code" output; the code's
    evaluation sigmoid(output) > 0.5 is True for every node."""
    x, rels, masks = make_graph(seed=3)
    P = M.pdm_classifier_init(np.random.default_rng(0), x.shape[1], DIMS, hidden=8)
    split = M.split_relations(rels, masks["test"])
    z0, _ = M.pdm_classifier_forward(x, split, P, variant="logits")
    P["head.b2"] = P["head.b2"] - np.median(z0)         # logits of both signs
    p, _ = M.pdm_classifier_forward(x, split, P, variant="code")
    z, _ = M.pdm_classifier_forward(x, split, P, variant="logits")
    np.testing.assert_allclose(p, 1 / (1 + np.exp(-z)), rtol=1e-14)
    assert (z > 0).any() and (z < 0).any()              # sigmoid(z) > 0.5 separates nodes
    assert np.all(1 / (1 + np.exp(-p)) > 0.5)           # sigmoid(sigmoid(z)) > 0.5 never does


def test_cluster_encoder_equals_notebook():
    x, rels, _ = make_graph(seed=2, dims=(8, 2, 4))
    rels[0]["edge_index"][:, :3] = [[4, 7, 7], [4, 7, 7]]       # existing loops (one repeated)
    keep = rels[0]["edge_index"][1] != 9                        # node 9 without spatial in-edges
    rels[0] = {k: v[..., keep] if k == "edge_index" else v[keep] for k, v in rels[0].items()}
    rng = np.random.default_rng(5)
    P = M.cluster_encoder_init(rng, x.shape[1], edge_dim=8, hidden=16, emb=6)
    P = {k: (rng.normal(0, 0.3, v.shape) if k.endswith("b") else v) for k, v in P.items()}
    model = NbOperationalGNN(x.shape[1], hidden_dim=16, out_dim=6).double()
    load_encoder(model, P)
    g = hetero(x, rels)
    emb_nb, rec_nb = model(g)
    emb, rec = M.cluster_encoder_forward(x, rels, P)
    np.testing.assert_allclose(emb, npy(emb_nb), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(rec, npy(rec_nb), rtol=1e-10, atol=1e-10)
    loss = M.cluster_encoder_loss(x, emb, rec)
    assert isinstance(loss, float)
    np.testing.assert_allclose(loss, float(nb_cluster_loss(t(x), emb_nb, rec_nb).detach()),
                               rtol=1e-12)
    # lam scales only the cosine term; a zero embedding row gets cos 0 (torch's eps clamp)
    e0 = emb.copy()
    e0[0] = 0.0
    for lam in (0.0, 0.7):
        want = F.mse_loss(t(rec), t(x)) + lam * (1 - torch.cosine_similarity(
            t(e0)[:, None], t(e0)[None], dim=-1)).mean()
        np.testing.assert_allclose(M.cluster_encoder_loss(x, e0, rec, lam=lam), float(want),
                                   rtol=1e-12)


def _ks_same(a, b):
    a, b = np.ravel(a), np.ravel(b)
    if np.ptp(b) == 0:                   # constants (set in float32 by the notebook modules)
        return np.allclose(a, b, rtol=1e-7, atol=0)
    return stats.ks_2samp(a, b).pvalue > 1e-4


def test_pdm_init_matches_notebook_distributions():
    """Our init draws each parameter from the distribution the notebook's modules end up with
    (the model-wide kaiming fan_in pass overrides the edge MLPs' fan_out init; GCNConv keeps
    PyG's glorot; torch.nn.Linear default biases; BatchNorm 1 / 0; aggregation weights 1)."""
    hidden, L, F_in = 128, 2, 12
    torch.manual_seed(0)
    model = NbPowerGridGNN(F_in, hidden, dict(zip(ETYPES, DIMS)), num_layers=L).double()
    P = M.pdm_classifier_init(np.random.default_rng(0), F_in, DIMS, hidden=hidden, n_layers=L)
    nb = {}
    for l in range(L):
        for r, et in enumerate(ETYPES):
            m, p = model.layers[l][et], f"l{l}.r{r}."
            nb.update({p + "edge.W1": m.edge_mlp[0].weight.T, p + "edge.b1": m.edge_mlp[0].bias,
                       p + "edge.W2": m.edge_mlp[2].weight.T, p + "edge.b2": m.edge_mlp[2].bias,
                       p + "gcn.W": m.gcn.lin.weight.T, p + "gcn.b": m.gcn.bias})
            for s in ("weight", "bias", "running_mean", "running_var"):
                nb[p + "bn." + s] = getattr(m.batch_norm, s)
            if l == 0:
                nb[p + "res.W"] = m.residual_proj.weight.T
                nb[p + "res.b"] = m.residual_proj.bias
    nb.update({"fuse.w": model.aggregation_weights, "head.W1": model.head[0].weight.T,
               "head.b1": model.head[0].bias, "head.W2": model.head[4].weight.T,
               "head.b2": model.head[4].bias})
    for s in ("weight", "bias", "running_mean", "running_var"):
        nb["head.bn." + s] = getattr(model.head[1], s)
    assert set(nb) == set(P)
    # the model-wide pass really overrides WeightedGCNConv's fan_out init: fan_out would give
    # std sqrt(2 / 1) = 1.41 for edge.W2 (64 entries), fan_in gives sqrt(2 / 64) = 0.18
    assert float(npy(nb["l0.r0.edge.W2"]).std()) < 0.5
    for k, v in nb.items():
        a = npy(v)
        assert P[k].shape == a.shape, k
        if a.size > 1:
            assert _ks_same(P[k], a), k
        elif k.endswith("edge.b2"):                               # the constant 0.1
            np.testing.assert_allclose(P[k], a, rtol=1e-7)
        else:                                    # head.b2: U(+-1/sqrt(k)) of torch.nn.Linear
            assert max(abs(P[k][0]), abs(a[0])) <= 1 / np.sqrt(hidden // 2), k


def test_encoder_init_matches_library_defaults():
    hidden, F_in = 64, 12
    torch.manual_seed(1)
    model = NbOperationalGNN(F_in, hidden_dim=hidden, out_dim=32).double()
    P = M.cluster_encoder_init(np.random.default_rng(1), F_in, edge_dim=8, hidden=hidden, emb=32)
    g, mlp = model.spatial_conv, model.causal_conv.nn
    nb = {"spatial.W": g.lin.weight.T, "spatial.a_src": g.att_src[0], "spatial.a_dst":
          g.att_dst[0], "spatial.W_e": g.lin_edge.weight.T, "spatial.a_e": g.att_edge[0],
          "spatial.b": g.bias, "temporal.W": model.temporal_conv.lin.weight.T,
          "temporal.b": model.temporal_conv.bias, "causal.W1": mlp[0].weight.T,
          "causal.b1": mlp[0].bias, "causal.W2": mlp[2].weight.T, "causal.b2": mlp[2].bias,
          "fuse.W": model.fuse.weight.T, "fuse.b": model.fuse.bias,
          "dec.W1": model.decoder[0].weight.T, "dec.b1": model.decoder[0].bias,
          "dec.W2": model.decoder[2].weight.T, "dec.b2": model.decoder[2].bias}
    assert list(nb) == list(P)
    for k, v in nb.items():
        a = npy(v)
        assert P[k].shape == a.shape, k
        assert _ks_same(P[k], a), k


# --------------------------------------------------------------------------- (4) split


def test_split_relations_keeps_inner_edges_and_standardises():
    _x, rels, masks = make_graph(seed=4)
    rels[1]["edge_index"] = rels[1]["edge_index"].astype(np.int32)
    for m in masks.values():
        split = M.split_relations(rels, m)
        assert len(split) == 3
        for rel, s in zip(rels, split):
            ei = rel["edge_index"]
            want = [e for e in range(ei.shape[1]) if m[ei[0, e]] and m[ei[1, e]]]
            np.testing.assert_array_equal(s["edge_index"], ei[:, want])      # order kept
            assert s["edge_index"].dtype == ei.dtype
            a = s["edge_attr"]
            assert a.dtype == np.float64 and a.shape == (len(want), rel["edge_attr"].shape[1])
            if len(want):
                assert np.abs(a.mean(axis=0)).max() < 1e-12
                np.testing.assert_allclose(a.std(axis=0, ddof=1), 1.0, rtol=0, atol=1e-7)
                # affine-equivalent to the split's own standardisation (up to the 1e-8s)
                raw = rel["edge_attr"][want]
                np.testing.assert_allclose(
                    a, (raw - raw.mean(0)) / raw.std(0, ddof=1), rtol=0, atol=1e-6)


def test_split_relations_constant_column_single_edge_and_empty():
    ei = np.array([[0, 1, 2, 3], [1, 2, 3, 0]])
    attr = np.array([[1.0, 5.0], [2.0, 5.0], [4.0, 5.0], [8.0, 5.0]])
    rel = [{"edge_index": ei, "edge_attr": attr}]
    s = M.split_relations(rel, np.array([True, True, True, False]))
    assert s[0]["edge_index"].shape == (2, 2)
    np.testing.assert_array_equal(s[0]["edge_attr"][:, 1], 0.0)       # constant -> 0, finite
    with pytest.raises(ValueError, match="single edge"):
        M.split_relations(rel, np.array([True, True, False, False]))
    z = M.split_relations(rel, np.array([True, False, True, False]))
    assert z[0]["edge_index"].shape == (2, 0) and z[0]["edge_attr"].shape == (0, 2)
    with pytest.raises(TypeError, match="node_mask"):
        M.split_relations(rel, np.array([1, 0, 1, 0]))
    with pytest.raises(ValueError, match="outside"):
        M.split_relations(rel, np.array([True, True, True]))


# --------------------------------------------------------------------------- (2) torch models


def _pdm_setup(fusion, seed=0, hidden=16, L=2, mode="train"):
    x, rels, masks = make_graph(seed=seed)
    rng = np.random.default_rng(seed + 10)
    P = M.pdm_classifier_init(rng, x.shape[1], DIMS, hidden=hidden, n_layers=L, fusion=fusion)
    P = perturb_pdm(P, rng)
    return x, M.split_relations(rels, masks[mode]), P, draw_masks(rng, x.shape[0], hidden, L)


@pytest.mark.parametrize("dtype", [F64, F32])
@pytest.mark.parametrize("training", [False, True])
@pytest.mark.parametrize("fusion", M.FUSIONS)
def test_torch_pdm_equals_reference(fusion, training, dtype):
    TM = _tm()
    x, split, P, dm = _pdm_setup(fusion, mode="train" if training else "val")
    kw = {"fusion": fusion, "variant": "logits", "training": training,
              "masks": dm if training else None}
    want, aux = M.pdm_classifier_forward(x, split, P, **kw)
    tkw = dict(kw, masks={k: t(v, dtype) for k, v in dm.items()} if training else None)
    got, taux = TM.pdm_classifier_forward(t(x, dtype), t_rels(split, dtype),
                                          TM.to_torch_params(P, dtype, "cpu"), **tkw)
    tol = {"rtol": 1e-10, "atol": 1e-10} if dtype == F64 else {"rtol": 1e-4, "atol": 1e-4}
    assert got.dtype == dtype and got.shape == want.shape
    np.testing.assert_allclose(npy(got), want, **tol)
    for b, tb in zip(aux["beta"], taux["beta"]):
        assert (b is None) == (tb is None)
        if b is not None:
            np.testing.assert_allclose(npy(tb), b, **tol)
    assert sorted(taux["running"]) == sorted(aux["running"])
    for k, v in aux["running"].items():
        assert not taux["running"][k].requires_grad
        np.testing.assert_allclose(npy(taux["running"][k]), v, **tol)


def test_torch_pdm_code_variant_dropout_draw_and_params_untouched():
    TM = _tm()
    x, split, P, _ = _pdm_setup("global")
    TP = TM.to_torch_params(P, F64, "cpu")
    before = {k: v.clone() for k, v in TP.items()}
    want, _ = M.pdm_classifier_forward(x, split, P)                  # variant "code", eval
    got, _ = TM.pdm_classifier_forward(t(x), t_rels(split), TP)
    np.testing.assert_allclose(npy(got), want, rtol=1e-10, atol=1e-10)
    torch.manual_seed(0)
    a, _ = TM.pdm_classifier_forward(t(x), t_rels(split), TP, training=True)
    torch.manual_seed(0)
    b, aux = TM.pdm_classifier_forward(t(x), t_rels(split), TP, training=True)
    torch.manual_seed(1)
    c, _ = TM.pdm_classifier_forward(t(x), t_rels(split), TP, training=True)
    assert torch.equal(a, b) and not torch.equal(a, c)             # the default generator
    for k, v in before.items():
        assert torch.equal(TP[k], v), k                             # running stats: copies
    assert all(k in TP for k in aux["running"])


@pytest.mark.parametrize("dtype", [F64, F32])
def test_torch_encoder_equals_reference(dtype):
    TM = _tm()
    x, rels, _ = make_graph(seed=6)
    P = M.cluster_encoder_init(np.random.default_rng(2), x.shape[1], edge_dim=8, hidden=16,
                               emb=6)
    emb, rec = M.cluster_encoder_forward(x, rels, P)
    loss = M.cluster_encoder_loss(x, emb, rec, lam=0.3)
    tr = t_rels(rels, dtype)
    tr[2].pop("edge_attr")                                      # unused by the GIN branch
    temb, trec = TM.cluster_encoder_forward(t(x, dtype), tr, TM.to_torch_params(P, dtype, "cpu"))
    tloss = TM.cluster_encoder_loss(t(x, dtype), temb, trec, lam=0.3)
    tol = {"rtol": 1e-10, "atol": 1e-10} if dtype == F64 else {"rtol": 1e-4, "atol": 1e-4}
    assert temb.dtype == dtype and tloss.dtype == dtype and tloss.ndim == 0
    np.testing.assert_allclose(npy(temb), emb, **tol)
    np.testing.assert_allclose(npy(trec), rec, **tol)
    np.testing.assert_allclose(float(tloss), loss, **tol)


def test_torch_host_reads_counted(monkeypatch):
    """The models read the device only through the layer functions' validation: one packed
    read per edge_mlp_weights / gcn_layer / gat_layer / gin_layer call, none in fuse, the
    model-level checks or the loss."""
    TM = _tm()
    from backends.torch import gnn as TG
    calls = []
    orig = TG.read_packed
    monkeypatch.setattr(TG, "read_packed", lambda parts: calls.append(len(parts)) or orig(parts))
    x, split, P, dm = _pdm_setup("semantic", hidden=8, mode="val")     # causal relation empty
    TM.pdm_classifier_forward(t(x), t_rels(split), TM.to_torch_params(P, F64, "cpu"),
                              fusion="semantic", training=True,
                              masks={k: t(v) for k, v in dm.items()})
    assert len(calls) == 2 * 2 * 2          # 2 layers x 2 relations with edges x (MLP, GCN)
    calls.clear()
    x, rels, _ = make_graph(seed=6)
    P = M.cluster_encoder_init(np.random.default_rng(2), x.shape[1], hidden=8, emb=4)
    emb, rec = TM.cluster_encoder_forward(t(x), t_rels(rels), TM.to_torch_params(P, F64, "cpu"))
    assert len(calls) == 3
    TM.cluster_encoder_loss(t(x), emb, rec)
    assert len(calls) == 3


def test_to_torch_params():
    TM = _tm()
    P = M.pdm_classifier_init(np.random.default_rng(0), 5, (3,), hidden=4, n_layers=1)
    T = TM.to_torch_params(P, "float32", "cpu", requires_grad=True)
    assert list(T) == list(P)
    for k, v in T.items():
        assert v.dtype == F32 and v.is_leaf
        assert v.requires_grad == ("running_" not in k)
        np.testing.assert_array_equal(npy(v), P[k].astype(np.float32))
    with pytest.raises(ValueError, match="dtype"):
        TM.to_torch_params(P, "float16")


# --------------------------------------------------------------------------- (3) gradients


@pytest.mark.parametrize("fusion,training", [("global", True), ("semantic", False),
                                             ("concat", True), ("node", False)])
def test_torch_autograd_equals_finite_differences(fusion, training):
    """d focal_bce(out[nodes], y) / d param by torch autograd vs central differences of the
    NumPy reference forward + reference focal loss (code variant: the double sigmoid)."""
    TM = _tm()
    from backends.torch import gnn as TG
    x, split, P, dm = _pdm_setup(fusion, seed=1, hidden=8, L=2)
    nodes = np.array([0, 3, 7, 11, 19, 30])
    y = np.array([0.0, 1.0, 1.0, 0.0, 1.0, 0.0])
    masks = dm if training else None

    def ref_loss(Q):
        out, _ = M.pdm_classifier_forward(x, split, Q, fusion=fusion, training=training,
                                          masks=masks)
        return RH.focal_bce(out[nodes], y)

    TP = TM.to_torch_params(P, F64, "cpu", requires_grad=True)
    out, _ = TM.pdm_classifier_forward(t(x), t_rels(split), TP, fusion=fusion,
                                       training=training,
                                       masks={k: t(v) for k, v in dm.items()} if training
                                       else None)
    loss = TG.focal_bce(out[t(nodes)], t(y))
    np.testing.assert_allclose(float(loss.detach()), ref_loss(P), rtol=1e-10)
    loss.backward()
    rng = np.random.default_rng(0)
    fuse_key = "fuse.w" if fusion == "global" else "l1.fuse.W"
    keys = ["l0.r0.edge.W1", "l1.r1.edge.b2", "l0.r2.gcn.W", "l1.r0.gcn.b", "l0.r1.bn.weight",
            "l1.r2.bn.bias", "l0.r0.res.W", fuse_key, "head.W1", "head.bn.bias", "head.b2"]
    for k in keys:
        g = npy(TP[k].grad)
        E = np.zeros_like(P[k])
        for idx in {tuple(rng.integers(0, s) for s in P[k].shape) for _ in range(3)}:
            E[idx] = 1.0
            fd = central(lambda v, k=k: ref_loss({**P, k: v}), P[k], E, h=1e-6)
            np.testing.assert_allclose(g[idx], fd, rtol=1e-5, atol=1e-9, err_msg=k)
            E[idx] = 0.0
    assert TP["l0.r0.bn.running_mean"].grad is None
    # every float param the forward uses is a differentiable leaf (all relations have edges)
    no_grad = [k for k, v in TP.items() if v.requires_grad and v.grad is None]
    assert no_grad == []


# --------------------------------------------------------------------------- (5) bad input


def _bad_cases():
    x, rels, masks = make_graph(seed=7)
    split = M.split_relations(rels, masks["train"])
    P = M.pdm_classifier_init(np.random.default_rng(0), x.shape[1], DIMS, hidden=8)
    Pc = M.pdm_classifier_init(np.random.default_rng(0), x.shape[1], DIMS, hidden=8,
                               fusion="concat")
    dm = draw_masks(np.random.default_rng(0), x.shape[0], 8, 2)
    missing = {k: v for k, v in P.items() if k != "l1.r1.gcn.W"}
    wide = {**P, "l0.r2.gcn.W": np.zeros((x.shape[1] + 1, 8))}
    bad_attr = [dict(r) for r in split]
    bad_attr[1]["edge_attr"] = np.zeros((split[1]["edge_attr"].shape[0], 3))
    float_ei = [dict(r) for r in split]
    float_ei[0]["edge_index"] = split[0]["edge_index"].astype(np.float64)
    return {
        "short relations": ((x, split[:2], P), {}, ValueError, "must have 3 entries"),
        "not a list": ((x, split[0], P), {}, TypeError, "list of dicts"),
        "missing key": ((x, split, missing), {}, ValueError, "missing key 'l1.r1.gcn.W'"),
        "wide W": ((x, split, wide), {}, ValueError, r"must have shape \(12, 8\)"),
        "edge attr width": ((x, bad_attr, P), {}, ValueError, r"\(E, 2\)"),
        "float edge_index": ((x, float_ei, P), {}, TypeError, "integer"),
        "fusion mismatch": ((x, split, Pc), {}, ValueError, "missing key 'fuse.w'"),
        "unexpected keys": ((x, split, {**P, "l0.fuse.W": P["head.W1"]}), {}, ValueError,
                            "unexpected keys"),
        "fusion name": ((x, split, P), {"fusion": "sum"}, ValueError, "fusion must be one of"),
        "variant name": ((x, split, P), {"variant": "prob"}, ValueError, "variant"),
        "masks missing key": ((x, split, P), {"training": True, "masks": {
            k: v for k, v in dm.items() if k != "head.drop"}}, ValueError, "'head.drop'"),
        "masks in eval": ((x, split, P), {"masks": dm}, ValueError, "only with training"),
        "mask shape": ((x, split, P), {"training": True, "masks": {**dm, "l0.drop": dm[
            "l0.drop"][:, :4]}}, ValueError, r"masks\['l0.drop'\] must have shape"),
        "training flag": ((x, split, P), {"training": 1}, TypeError, "training must be a bool"),
        "x 1-D": ((x[:, 0], split, P), {}, ValueError, "x must be 2-D"),
        "x dtype": ((x.astype(np.float32), split, P), {}, TypeError, "dtype"),
    }


@pytest.mark.parametrize("case", list(_bad_cases()))
def test_pdm_bad_input(case):
    args, kw, exc, msg = _bad_cases()[case]
    with pytest.raises(exc, match=msg):
        M.pdm_classifier_forward(*args, **kw)
    TM = _tm()

    def conv(a):
        if isinstance(a, np.ndarray):
            return t(a, F64) if a.dtype.kind in "iub" else torch.as_tensor(a)
        if isinstance(a, dict):
            return {k: conv(v) for k, v in a.items()}
        if isinstance(a, list):
            return [conv(v) for v in a]
        return a

    raises_like_reference(lambda: M.pdm_classifier_forward(*args, **kw),
                          lambda: TM.pdm_classifier_forward(*conv(list(args)), **conv(kw)))


def test_reference_training_needs_masks_and_two_nodes():
    x, split, P, _ = _pdm_setup("global", hidden=8)
    with pytest.raises(ValueError, match="needs masks"):
        M.pdm_classifier_forward(x, split, P, training=True)
    one = [{"edge_index": np.zeros((2, 0), np.int64), "edge_attr": np.zeros((0, d))}
           for d in DIMS]
    with pytest.raises(ValueError, match="at least 2 nodes"):
        M.pdm_classifier_forward(x[:1], one, P, training=True, masks=draw_masks(
            np.random.default_rng(0), 1, 8, 2))
    with pytest.raises(TypeError, match="numpy"):
        M.pdm_classifier_forward(torch.zeros(3, 12, dtype=F64), split, P)


def test_encoder_and_loss_bad_input():
    TM = _tm()
    x, rels, _ = make_graph(seed=8)
    P = M.cluster_encoder_init(np.random.default_rng(0), x.shape[1], hidden=8, emb=4)
    emb, rec = M.cluster_encoder_forward(x, rels, P)
    no_attr = [dict(r) for r in rels]
    no_attr[0].pop("edge_attr")
    cases = [
        ((x, rels[:2], P), ValueError, "spatial, temporal, causal"),
        ((x, no_attr, P), ValueError, "needs 'edge_attr'"),
        ((x, rels, {k: v for k, v in P.items() if k != "dec.b2"}), ValueError, "'dec.b2'"),
        ((x[:, :5], rels, P), ValueError, r"params\['spatial.W'\] must have shape"),
    ]
    for args, exc, msg in cases:
        with pytest.raises(exc, match=msg):
            M.cluster_encoder_forward(*args)
        targs = (t(args[0]), [{k: t(v) for k, v in r.items()} for r in args[1]],
                 {k: t(v) for k, v in args[2].items()})
        raises_like_reference(lambda a=args: M.cluster_encoder_forward(*a),
                              lambda a=targs: TM.cluster_encoder_forward(*a))
    for args, kw, exc, msg in [((x, emb[:5], rec), {}, ValueError, "emb must have shape"),
                               ((x, emb, rec[:, :3]), {}, ValueError, "recon must have shape"),
                               ((x, emb, rec), {"lam": float("nan")}, ValueError, "lam"),
                               ((x, emb.astype(np.float32), rec), {}, TypeError, "dtype")]:
        with pytest.raises(exc, match=msg):
            M.cluster_encoder_loss(*args, **kw)
        targs = tuple(torch.as_tensor(a) for a in args)
        raises_like_reference(lambda a=args, k=kw: M.cluster_encoder_loss(*a, **k),
                              lambda a=targs, k=kw: TM.cluster_encoder_loss(*a, **k))


def test_init_bad_input():
    rng = np.random.default_rng(0)
    with pytest.raises(TypeError, match="Generator"):
        M.pdm_classifier_init(0, 12, DIMS)
    with pytest.raises(ValueError, match="edge_dims"):
        M.pdm_classifier_init(rng, 12, [])
    with pytest.raises(ValueError, match="hidden must be >= 2"):
        M.pdm_classifier_init(rng, 12, DIMS, hidden=1)
    with pytest.raises(ValueError, match="fusion"):
        M.pdm_classifier_init(rng, 12, DIMS, fusion="max")
    with pytest.raises(TypeError, match="edge_dim"):
        M.cluster_encoder_init(rng, 12, edge_dim=2.5)
