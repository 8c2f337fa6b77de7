"""refimpl against the implementations users compare with, timed in the same run.

- Soft-DTW from points, forward + backward (``softdtw.md`` sec. 12 anchors): ours is
  ``sdtw_cost`` -> ``soft_dtw_grad`` -> ``sdtw_cost_vjp``; pysdtw is ``SoftDTW(X, Y).sum()``
  and ``backward()`` (its CUDA kernel on a GPU, its CPU path otherwise). GPU sizes are the
  issue's B = 64 at 512^2 and 2048^2 (pysdtw handles 2048 only by looping inside a block).
- Log-domain Sinkhorn, 100 iterations with no early stop (``ot.md`` sec. 6): ours
  ``sinkhorn_log(tol=0)``; POT ``ot.sinkhorn(method="sinkhorn_log", stopThr=0)`` on torch
  tensors (CUDA on a GPU) and on NumPy arrays. GPU size n = m = 10,000 fp32.
- DPO through a linear head, forward + backward (issue 3, ``preference.md`` sec. 9):
  ours ``linear_dpo_loss_grad`` (chunked; impl ``<backend>``) and ``logits_sam_dpo_grad``
  (impl ``<backend>-logits-sam``, rho = 1e-3) vs plain torch that materialises the logits
  (``torch-materialised``: ``H W^T``, ``log_softmax``, gather, autograd) and Liger-Kernel's
  ``LigerFusedLinearDPOLoss`` (``liger``: NLL off, summed log-probs, reference log-probs
  precomputed, i.e. ``use_ref_model=False``). CPU size B = 4, T = 128, d = 256, V = 8192
  fp32; GPU size B = 8, T = 1024, d = 4096, V = 128,256 bf16. Antibody's weighted token
  cross-entropy (issue 7) runs at the same size beside them (impl ``<backend>-weighted-ce``:
  ``weighted_token_ce_grad`` over the same 2B sequences, Dirichlet sample weights), so its cost
  reads against the fused DPO kernel it shares the streaming log-sum-exp with.
- DWA-KD's entropy-weighted KD term, forward + backward (issue 4): ``L = sum_i w_i Div(z_s,i,
  z_t,i)`` with ``w = entropy_weights(z_s, mask)`` (detached) and the skewed reverse KL at
  tau = 2 — ours ``entropy_weights`` + ``kd_divergence_grad`` (fused row kernels on
  cupy/numba_cuda, a row-blocked custom autograd function on torch) vs plain torch autograd
  (``torch-plain``: log-softmaxes, mixture, sums, ``backward``). CPU (B, N, V) = (4, 16, 8192)
  fp32; GPU (8, 512, 50257) fp32 (GPT-2's vocabulary). Span aggregation needs no peer class:
  the torch backend's ``span_sum`` is plain torch (``index_add_``), so the registry's
  ``SpanSumGPU`` compares the CuPy/Numba kernels with it.
- Inf-SSM's code distance, forward + backward (issue 5, ``inf_ssm.md`` sec. 7): ours
  ``infssm_distance_grad`` (the fused O(n^2) kernel, O(m) memory) vs ``torch-code-path``, a
  plain torch transcription of the official code's construction (the (m, 2n, 2n) matrix P, the
  product G12 G21 and the traces, autograd). CPU m = 4096, n = 16 fp64; GPU m = 1,210,368
  (one Vim-small step: 128 images x 197 tokens x 48 scans), n = 16 fp32.
- Inf-SSM's Grams against SciPy's dense solvers, per system (``SteinPerSystemCPU``): the
  closed-form cross-Gram (``stein_cross_gram_diag``) and the O(n^2) code distance
  (``infssm_distance``) batched over m systems, against ``solve_discrete_lyapunov`` on the 2n
  joint system and ``solve_sylvester`` on the cross block, looped over the same m systems;
  n in {16, 64, 256}, m = 1024, 256, 16 (enough systems to amortise the closed form's per-call
  overhead). Every solver does the same m systems at a given n, so the
  ratio of two timings is the ratio of per-system costs.
- Graph layers, forward + backward (issue 9, ``gnn_pdm.md`` sec. 9): ours ``gat_layer_vjp``
  (8 heads of 8 channels, self-loops, bias) and ``gcn_layer_vjp`` (self-loops, normalised) vs
  torch_geometric's ``GATConv(64, 8, heads=8)`` and ``GCNConv(64, 64)`` (``pyg``: forward,
  ``backward`` of the same cotangent, gradients w.r.t. x and the weights). CPU N = 10^4,
  E = 10^5, F = 64 fp64; GPU N = 10^6, E = 10^7, F = 64 fp32, with peak device memory (PyG's
  GATConv gathers E x heads x C messages; ours never does).
- CRPL's exact OT cluster loss (issue 10, ``clip_uda_ot.md`` sec. 6): ours ``ot_cluster_loss``
  (cost on the device, exact solve on the host, plan and envelope gradients back) vs POT's
  ``ot.emd2`` on the same cosine cost (``pot``: NumPy arrays on the CPU, torch tensors on a GPU).
  B = 30 target images, K in {12, 65, 345} classes, D = 1024; CPU fp64, GPU fp32.

Peers are test/bench-only dependencies; a missing one is skipped with the reason.
"""

import numpy as np

import backends
from refimpl import _harness as H

D = 8          # feature size of the Soft-DTW point sets
GAMMA = 0.1
EPS = 0.05
ITERS = 100
SIZES = {
    "softdtw": {"cpu": [(8, 64)], "gpu": [(64, 512), (64, 2048)]},
    "sinkhorn": {"cpu": [500], "gpu": [10_000]},
    "dpo": {"cpu": [(4, 128, 256, 8192)], "gpu": [(8, 1024, 4096, 128256)]},
    "kd": {"cpu": [(4, 16, 8192)], "gpu": [(8, 512, 50257)]},
    "inf_ssm": {"cpu": [(4096, 16)], "gpu": [(1_210_368, 16)]},
    "gat": {"cpu": [(10_000, 100_000, 64)], "gpu": [(1_000_000, 10_000_000, 64)]},
    "gcn": {"cpu": [(10_000, 100_000, 64)], "gpu": [(1_000_000, 10_000_000, 64)]},
    "crpl_ot": {"cpu": [(30, 12, 1024), (30, 65, 1024), (30, 345, 1024)],
                "gpu": [(30, 12, 1024), (30, 65, 1024), (30, 345, 1024)]},
}
GAT_HEADS, GAT_C = 8, 8
KD = dict(kind="skewed_reverse_kl", tau=2.0)
DPO_CHUNKS = {"cpu": dict(vocab_chunk=2048), "gpu": dict(token_chunk=8192, vocab_chunk=8192)}
BETA, RHO = 0.1, 1e-3
OURS = {"cpu": ["numpy", "torch"], "gpu": ["torch", "cupy", "numba_cuda"]}


def _torch_device(where):
    import torch

    if where == "gpu" and not torch.cuda.is_available():
        raise NotImplementedError("torch sees no CUDA device")
    return torch.device("cuda" if where == "gpu" else "cpu")


def _ours(name, where, dtype):
    name = name.split("-")[0]  # "<backend>-logits-sam", "<backend>-weighted-ce"
    bk = backends.get(name) if backends.reason(name) is None else None
    if bk is None:
        raise NotImplementedError(backends.reason(name))
    if name == "numba_cuda" and backends.simulator():
        raise NotImplementedError("the CUDA simulator is not timed")
    if dtype not in bk.DTYPES or H.on_gpu(bk) != (where == "gpu"):
        raise NotImplementedError(f"{name} on {bk.describe()} does not run {where} {dtype}")
    return bk


def _peer_module(name):
    try:
        if name == "pysdtw":
            import pysdtw as mod
        elif name == "liger":
            from liger_kernel import chunked_loss as mod
        elif name in ("torch-materialised", "torch-plain", "torch-code-path"):
            import torch as mod
        elif name == "pyg":
            import torch_geometric.nn as mod
        else:
            import ot as mod
        if name.endswith("torch") or name in ("pysdtw", "liger", "pyg"):
            import torch  # noqa: F401
    except ImportError as exc:
        raise NotImplementedError(f"peer {name} is not installed: {exc}")
    return mod


def _sync_torch(where):
    if where == "gpu":
        import torch

        torch.cuda.synchronize()


def _peak_torch(where):
    import torch

    return torch.cuda.max_memory_allocated() if where == "gpu" else None


class _Peers:
    where = "cpu"
    family = ""
    peers = ()
    timeout = 900

    def setup(self, impl, size, dtype):
        rng = np.random.default_rng(0)
        self.sync, self.peak = (lambda: None), (lambda: None)
        self.impl = impl
        if impl in self.peers:
            self.call = self.make_peer(impl, size, dtype, rng)
            self.sync = lambda: _sync_torch(self.where)
        else:
            bk = _ours(impl, self.where, dtype)
            self.call = self.make_ours(bk, size, dtype, rng)
            self.sync, self.bk = bk.synchronize, bk
        for _ in range(2):  # past JIT, context and handle creation
            self.call()

    def run(self, impl, size, dtype):
        self.call()


def _points(rng, B, N, dtype):
    return (rng.normal(size=(B, N, D)) / np.sqrt(D)).astype(dtype)


class SoftDtwPointsFull(_Peers):
    family = "softdtw"
    peers = ("pysdtw",)

    def make_ours(self, bk, size, dtype, rng):
        B, N = size
        X, Y = bk.asarray(_points(rng, B, N, dtype)), bk.asarray(_points(rng, B, N, dtype))

        def call():
            C = bk.sdtw_cost(X, Y)
            _, E = bk.soft_dtw_grad(C, GAMMA)
            out = bk.sdtw_cost_vjp(X, Y, E)
            bk.synchronize()
            return out

        return call

    def make_peer(self, impl, size, dtype, rng):
        pysdtw = _peer_module(impl)
        import torch

        dev = _torch_device(self.where)
        B, N = size
        X = torch.as_tensor(_points(rng, B, N, dtype), device=dev).requires_grad_()
        Y = torch.as_tensor(_points(rng, B, N, dtype), device=dev)
        fn = pysdtw.SoftDTW(gamma=GAMMA, use_cuda=dev.type == "cuda")

        def call():
            X.grad = None
            fn(X, Y).sum().backward()
            _sync_torch(self.where)

        return call


class SinkhornLogPeer(_Peers):
    family = "sinkhorn"
    peers = ("pot-numpy", "pot-torch")

    @staticmethod
    def _cost(rng, n, dtype):
        x, y = rng.random((n, 2)), rng.random((n, 2))
        C = ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1)
        return (C / C.max()).astype(dtype)

    def make_ours(self, bk, n, dtype, rng):
        C = bk.asarray(self._cost(rng, n, dtype))

        def call():
            out = bk.sinkhorn_log(None, None, C, EPS, max_iter=ITERS, tol=0.0)
            bk.synchronize()
            return out

        return call

    def make_peer(self, impl, n, dtype, rng):
        ot = _peer_module(impl)
        C = self._cost(rng, n, dtype)
        a = np.full(n, 1.0 / n, dtype=dtype)
        if impl == "pot-torch":
            import torch

            dev = _torch_device(self.where)
            C, a = torch.as_tensor(C, device=dev), torch.as_tensor(a, device=dev)
        elif self.where == "gpu":
            raise NotImplementedError("POT on NumPy is a CPU peer")

        def call():
            out = ot.sinkhorn(a, a, C, EPS, method="sinkhorn_log", numItermax=ITERS, stopThr=0.0,
                              warn=False)
            _sync_torch(self.where if impl == "pot-torch" else "cpu")
            return out

        return call


def _dpo_inputs(rng, size):
    """Hidden states, head, labels (every token a completion token), reference log-probs."""
    B, T, d, V = size
    H = rng.normal(size=(2 * B, T, d)).astype(np.float32)
    W = (rng.normal(size=(V, d)) / np.sqrt(d)).astype(np.float32)
    labels = rng.integers(0, V, size=(2 * B, T))
    return H, W, labels, np.zeros(2 * B, dtype=np.float32)


class DpoHeadFull(_Peers):
    family = "dpo"
    peers = ("torch-materialised", "liger")

    def make_ours(self, bk, size, dtype, rng):
        hid, head, labels, ref = _dpo_inputs(rng, size)
        hid, head = H.to_backend(bk, hid, dtype), H.to_backend(bk, head, dtype)
        labels, ref = bk.asarray(labels), bk.asarray(ref)
        mask = bk.asarray(np.ones(labels.shape, dtype=bool))
        chunks = DPO_CHUNKS[self.where]
        sam = self.impl.endswith("-logits-sam")
        wce = self.impl.endswith("-weighted-ce")
        if wce:  # Antibody's sample weights over the same 2B sequences
            w = H.to_backend(bk, rng.dirichlet(np.ones(labels.shape[0])), dtype)

        def call():
            if sam:
                out = bk.logits_sam_dpo_grad(hid, head, labels, mask, ref, BETA, RHO, **chunks)
            elif wce:
                out = bk.weighted_token_ce_grad(hid, head, labels, w, **chunks)
            else:
                out = bk.linear_dpo_loss_grad(hid, head, labels, mask, ref, BETA, **chunks)
            bk.synchronize()
            return out

        return call

    def make_peer(self, impl, size, dtype, rng):
        mod = _peer_module(impl)
        import torch

        dev = _torch_device(self.where)
        tdt = getattr(torch, dtype)
        hid, head, labels, ref = (torch.as_tensor(x, device=dev) for x in _dpo_inputs(rng, size))
        hid, head = hid.to(tdt).requires_grad_(), head.to(tdt).requires_grad_()
        B = labels.shape[0] // 2
        if impl == "liger":
            fn = mod.LigerFusedLinearDPOLoss(beta=BETA, compute_nll_loss=False,
                                             compiled=dev.type == "cuda", use_ref_model=False,
                                             average_log_prob=False)

            def loss():
                out = fn(head, hid, labels)
                return out[0] if isinstance(out, tuple) else out
        else:
            def loss():
                logp = torch.log_softmax((hid @ head.T).float(), dim=-1)
                lp = logp.gather(-1, labels[..., None])[..., 0].sum(-1)
                h = (lp[:B] - ref[:B]) - (lp[B:] - ref[B:])
                return -torch.nn.functional.logsigmoid(BETA * h).mean()

        def call():
            hid.grad = head.grad = None
            loss().backward()
            _sync_torch(self.where)

        return call


def _kd_inputs(rng, size):
    B, N, V = size
    z_s = (2 * rng.normal(size=(B, N, V))).astype(np.float32)
    z_t = (2 * rng.normal(size=(B, N, V))).astype(np.float32)
    return z_s, z_t, np.ones((B, N), dtype=bool)


class KdWeightedFull(_Peers):
    family = "kd"
    peers = ("torch-plain",)

    def make_ours(self, bk, size, dtype, rng):
        z_s, z_t, mask = (H.to_backend(bk, x, dtype) for x in _kd_inputs(rng, size))

        def call():
            w = bk.entropy_weights(z_s, mask)
            div, dz = bk.kd_divergence_grad(z_s, z_t, **KD)
            out = (w * div).sum(), w[..., None] * dz
            bk.synchronize()
            return out

        return call

    def make_peer(self, impl, size, dtype, rng):
        torch = _peer_module(impl)
        dev = _torch_device(self.where)
        z_s, z_t, mask = (torch.as_tensor(x, device=dev) for x in _kd_inputs(rng, size))
        z_s = z_s.to(getattr(torch, dtype)).requires_grad_()
        z_t = z_t.to(getattr(torch, dtype))
        lam, tau = 0.1, KD["tau"]

        def call():
            z_s.grad = None
            zs = z_s.float()
            with torch.no_grad():                     # entropy weights: tau = 1, detached
                p1 = torch.softmax(zs, -1)
                ent = -(p1 * torch.log(p1 + 1e-9)).sum(-1) * mask
                w = mask.sum(-1, keepdim=True) * ent / (ent.sum(-1, keepdim=True) + 1e-9)
            lp = torch.log_softmax(zs / tau, -1)
            lq = torch.log_softmax(z_t.float() / tau, -1)
            p = lp.exp()
            mix = torch.log((1 - lam) * lq.exp() + lam * p)
            ((w * (p * (lp - mix)).sum(-1)).sum()).backward()
            _sync_torch(self.where)

        return call


def _systems(rng, size, dtype):
    """Two batches of single-output diagonal systems in the official code's regime:
    a = tanh(U(0, 1) / 2), c ~ U(-1, 1)."""
    m, n = size
    a, b = (np.tanh(rng.random((m, n)) / 2).astype(dtype) for _ in range(2))
    c, e = (rng.uniform(-1, 1, (m, n)).astype(dtype) for _ in range(2))
    return a, c, b, e


class InfSsmDistanceFull(_Peers):
    family = "inf_ssm"
    peers = ("torch-code-path",)

    def make_ours(self, bk, size, dtype, rng):
        args = [H.to_backend(bk, x, dtype) for x in _systems(rng, size, dtype)]

        def call():
            out = bk.infssm_distance_grad(*args)
            bk.synchronize()
            return out

        return call

    def make_peer(self, impl, size, dtype, rng):
        torch = _peer_module(impl)
        from backends.torch.inf_ssm import _code_path_distance

        dev = _torch_device(self.where)
        leaves = [torch.as_tensor(x, device=dev).requires_grad_() for x in _systems(rng, size, dtype)]

        def call():
            for x in leaves:
                x.grad = None
            _code_path_distance(*leaves).sum().backward()
            _sync_torch(self.where)

        return call


def _graph_inputs(rng, size, out_width, dtype):
    """A random graph (``refimpl._cases.gnn.random_graph``), features and the cotangent."""
    from refimpl._cases.gnn import random_graph

    N, E, F = size
    X = rng.standard_normal((N, F)).astype(dtype)
    return X, random_graph(rng, N, E), rng.standard_normal((N, out_width)).astype(dtype)


class _GraphLayerFull(_Peers):
    peers = ("pyg",)
    out_width = 64

    def make_ours(self, bk, size, dtype, rng):
        X, ei, G = _graph_inputs(rng, size, self.out_width, dtype)
        kw = {k: H.to_backend(bk, v, dtype) for k, v in self.layer_params(rng, size[2], dtype).items()}
        X, ei, G = (H.to_backend(bk, a, dtype) for a in (X, ei, G))
        fn = getattr(bk, self.op)

        def call():
            out = fn(X=X, edge_index=ei, G=G, **kw)
            bk.synchronize()
            return out

        return call

    def make_peer(self, impl, size, dtype, rng):
        pyg = _peer_module(impl)
        import torch

        dev = _torch_device(self.where)
        X, ei, G = _graph_inputs(rng, size, self.out_width, dtype)
        conv = self.peer_layer(pyg, size[2]).to(device=dev, dtype=getattr(torch, dtype))
        x = torch.as_tensor(X, device=dev).requires_grad_()
        ei, G = torch.as_tensor(ei, device=dev), torch.as_tensor(G, device=dev)

        def call():
            x.grad = None
            conv.zero_grad(set_to_none=True)
            conv(x, ei).backward(G)
            _sync_torch(self.where)

        return call


class GatLayerFull(_GraphLayerFull):
    family = "gat"
    op = "gat_layer_vjp"

    @staticmethod
    def layer_params(rng, F, dtype):
        h, C = GAT_HEADS, GAT_C
        return dict(W=rng.standard_normal((F, h * C)).astype(dtype) / np.sqrt(F),
                    a_src=rng.standard_normal((h, C)).astype(dtype),
                    a_dst=rng.standard_normal((h, C)).astype(dtype),
                    b=np.zeros(h * C, dtype))

    @staticmethod
    def peer_layer(pyg, F):
        return pyg.GATConv(F, GAT_C, heads=GAT_HEADS)


class GcnLayerFull(_GraphLayerFull):
    family = "gcn"
    op = "gcn_layer_vjp"

    @staticmethod
    def layer_params(rng, F, dtype):
        return dict(W=rng.standard_normal((F, 64)).astype(dtype) / np.sqrt(F),
                    b=np.zeros(64, dtype))

    @staticmethod
    def peer_layer(pyg, F):
        return pyg.GCNConv(F, 64)


def _unit_rows(rng, n, d, dtype):
    x = rng.standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(dtype)


class CrplOtLoss(_Peers):
    family = "crpl_ot"
    peers = ("pot",)

    def make_ours(self, bk, size, dtype, rng):
        B, K, D = size
        Z, T = (H.to_backend(bk, _unit_rows(rng, n, D, dtype), dtype) for n in (B, K))

        def call():
            out = bk.ot_cluster_loss(Z, T)
            bk.synchronize()
            return out

        return call

    def make_peer(self, impl, size, dtype, rng):
        ot = _peer_module(impl)
        B, K, D = size
        Z, T = _unit_rows(rng, B, D, dtype), _unit_rows(rng, K, D, dtype)
        if self.where == "gpu":
            import torch

            dev = _torch_device(self.where)
            Z, T = torch.as_tensor(Z, device=dev), torch.as_tensor(T, device=dev)
            a = torch.full((B,), 1.0 / B, device=dev, dtype=Z.dtype)
            b = torch.full((K,), 1.0 / K, device=dev, dtype=Z.dtype)
        else:
            a, b = np.full(B, 1.0 / B), np.full(K, 1.0 / K)

        def call():
            val = ot.emd2(a, b, 1 - Z @ T.T, numItermax=500_000)
            _sync_torch(self.where)
            return val

        return call


class SteinPerSystemCPU:
    """Seconds for m systems of size n (the same m for every solver at a given n)."""

    params = [["closed_form_cross_gram", "closed_form_distance", "scipy_lyapunov_2n",
               "scipy_sylvester"], [16, 64, 256]]
    param_names = ["solver", "n"]
    SYSTEMS = {16: 1024, 64: 256, 256: 16}
    timeout = 900

    def setup(self, solver, n):
        import scipy.linalg as sl

        from refimpl import inf_ssm

        a, c, b, e = _systems(np.random.default_rng(0), (self.SYSTEMS[n], n), np.float64)
        if solver == "closed_form_cross_gram":
            self.call = lambda: inf_ssm.stein_cross_gram_diag(a, c, b, e)
        elif solver == "closed_form_distance":
            self.call = lambda: inf_ssm.infssm_distance(a, c, b, e)
        elif solver == "scipy_lyapunov_2n":   # all three blocks G11, G12, G22 in one solve
            def call():
                for k in range(len(a)):
                    A = np.diag(np.concatenate([a[k], b[k]]))
                    C = np.concatenate([c[k], e[k]])[None, :]
                    sl.solve_discrete_lyapunov(A.T, C.T @ C)
            self.call = call
        else:                                 # G12 = A1^T G12 A2 + c e^T as a Sylvester equation
            def call():
                for k in range(len(a)):
                    A2inv = np.diag(1.0 / b[k])
                    Q = np.outer(c[k], e[k])
                    sl.solve_sylvester(np.diag(a[k]), -A2inv, -Q @ A2inv)
            self.call = call

    def time_systems(self, solver, n):
        self.call()


def _variant(base, where):
    """A concrete class for one device kind: params (implementation, size, dtype)."""
    dtypes = {"dpo": {"cpu": ["float32"], "gpu": ["bfloat16"]},
              "kd": {"cpu": ["float32"], "gpu": ["float32"]}}.get(
        base.family, {"cpu": ["float64"], "gpu": ["float32"]})[where]
    ours = OURS[where]
    if base.family in ("dpo", "kd"):  # float32/bf16 only: the registry's classes time NumPy
        ours = [n for n in ours if n != "numpy"]
    if base.family == "dpo":
        ours = ours + [f"{n}-{v}" for v in ("logits-sam", "weighted-ce") for n in ours]
    attrs = dict(where=where, params=[ours + list(base.peers), SIZES[base.family][where], dtypes],
                 param_names=["impl", "size", "dtype"])
    name = {"softdtw": "soft_dtw_points", "sinkhorn": "sinkhorn_log", "dpo": "dpo_head",
            "kd": "entropy_weighted_kd", "inf_ssm": "infssm_distance", "gat": "gat_layer_h8",
            "gcn": "gcn_layer", "crpl_ot": "ot_cluster_loss"}[base.family]
    full = base.family not in ("sinkhorn", "crpl_ot")  # the OT value and plan: forward only
    method = (f"time_full_{name}" if full else
              f"time_{name}_{ITERS}it" if base.family == "sinkhorn" else f"time_{name}")
    attrs[method] = _Peers.run
    if where == "gpu":
        def track(self, impl, size, dtype):
            if impl in self.peers:
                import torch

                torch.cuda.reset_peak_memory_stats()
                self.call()
                return _peak_torch(self.where)
            self.bk.reset_peak_memory()
            self.call()
            return self.bk.peak_memory()

        track.unit = "bytes"
        attrs[f"track_peak_gpu_bytes_{name}"] = track
    return type(base.__name__ + where.upper(), (base,), attrs)


SoftDtwPointsFullCPU = _variant(SoftDtwPointsFull, "cpu")
SoftDtwPointsFullGPU = _variant(SoftDtwPointsFull, "gpu")
SinkhornLogPeerCPU = _variant(SinkhornLogPeer, "cpu")
SinkhornLogPeerGPU = _variant(SinkhornLogPeer, "gpu")
DpoHeadFullCPU = _variant(DpoHeadFull, "cpu")
DpoHeadFullGPU = _variant(DpoHeadFull, "gpu")
KdWeightedFullCPU = _variant(KdWeightedFull, "cpu")
KdWeightedFullGPU = _variant(KdWeightedFull, "gpu")
InfSsmDistanceFullCPU = _variant(InfSsmDistanceFull, "cpu")
InfSsmDistanceFullGPU = _variant(InfSsmDistanceFull, "gpu")
GatLayerFullCPU = _variant(GatLayerFull, "cpu")
GatLayerFullGPU = _variant(GatLayerFull, "gpu")
GcnLayerFullCPU = _variant(GcnLayerFull, "cpu")
GcnLayerFullGPU = _variant(GcnLayerFull, "gpu")
del SoftDtwPointsFull, SinkhornLogPeer, DpoHeadFull, KdWeightedFull, InfSsmDistanceFull
CrplOtLossCPU = _variant(CrplOtLoss, "cpu")
CrplOtLossGPU = _variant(CrplOtLoss, "gpu")
del GatLayerFull, GcnLayerFull, CrplOtLoss
