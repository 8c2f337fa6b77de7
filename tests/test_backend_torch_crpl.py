"""Torch backend of the crpl family (CRPL, arXiv 2506.11493; spec clip_uda_ot.md): signatures
equal to the reference's; every function against the float64 NumPy reference
(:mod:`refimpl.crpl`) on the registry's tiny and small cases in float64 (1e-10) and float32
(registry TOL: rtol 5e-4, atol 1e-5); the OT value against POT's ``ot.emd2`` and its gradients
against torch autograd through ``ot.emd2``; autograd through ``crpl_loss`` (the custom
``_OTCluster`` Function) against the reference's explicit ``crpl_loss_grad``;
``torch.autograd.gradcheck`` where the function is smooth (not through the LP); exactly one
packed host read per call besides the documented OT transfer (counted, and every other
tensor-to-host conversion trapped); bad input raising the reference's exception with the
reference's message."""

import inspect

import numpy as np
import pytest

import backends

torch = pytest.importorskip("torch")
if backends.reason("torch") is not None:
    pytest.skip(f"backend torch: {backends.reason('torch')}", allow_module_level=True)

from torch_testing import close_to, npy, raises_like_reference, tt

from backends.torch import crpl as C
from refimpl import crpl as R
from refimpl._cases import crpl as cases

F64, F32 = torch.float64, torch.float32
TOL = {F64: (1e-10, 1e-10), F32: (1e-5, 5e-4)}          # (atol, rtol) = registry TOL
assert_close = close_to(TOL)


def _cases(op, scale):
    rng = np.random.default_rng(7)
    return [(c.label, c.inputs()) for c in getattr(cases, f"cases_{op}")(rng, scale)]


def _t(kw, dtype):
    """Registry kwargs as CPU tensors: float arrays in ``dtype``, ints kept, lists mapped."""
    out = {}
    for k, v in kw.items():
        if isinstance(v, np.ndarray):
            out[k] = tt(v, dtype)
        elif isinstance(v, list):
            out[k] = [tt(x, dtype) for x in v]
        else:
            out[k] = v
    return out


def _up(kw_t):
    """The values the torch call was given, as the reference's float64 / int64 inputs."""
    out = {}
    for k, v in kw_t.items():
        if isinstance(v, torch.Tensor):
            a = npy(v)
            out[k] = a.astype(np.float64) if a.dtype.kind == "f" else a
        elif isinstance(v, list):
            out[k] = [npy(x).astype(np.float64) for x in v]
        else:
            out[k] = v
    return out


def _params(*ops, scales=("tiny", "small")):
    return [pytest.param(op, scale, label, kw, id=f"{op}-{scale}-{label}")
            for op in ops for scale in scales for label, kw in _cases(op, scale)]


DTYPES = [pytest.param(F64, id="f64"), pytest.param(F32, id="f32")]


def unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


# --------------------------------------------------------------------------- signatures


def test_signatures_equal_reference():
    assert set(C.__all__) == set(R.__all__)
    for name in R.__all__:
        assert inspect.signature(getattr(C, name)) == inspect.signature(getattr(R, name)), name


# --------------------------------------------------------------------------- vs the reference


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op,scale,label,kw", _params("update_class_centroids"))
def test_update_class_centroids(op, scale, label, kw, dtype):
    kt = _t(kw, dtype)
    m, c = C.update_class_centroids(**kt)
    rm, rc = R.update_class_centroids(**_up(kt))
    assert m.dtype == c.dtype == dtype
    assert_close(m, rm, dtype)
    np.testing.assert_array_equal(npy(c), rc)          # counts: exact integers
    assert_close(kt["means"], kw["means"].astype(npy(kt["means"]).dtype), dtype, 0, 0)  # unchanged


def test_centroids_running_mean_equals_batch_mean():
    """Invariant: the running means after several batches are the plain means of every feature
    seen per (domain, class) (independent of the update formula)."""
    rng = np.random.default_rng(3)
    S, K, D = 2, 3, 4
    means, counts = torch.zeros(S, K, D, dtype=F64), torch.zeros(S, K, dtype=F64)
    allu, ally, alld = [], [], []
    for _ in range(4):
        u = rng.normal(size=(7, D))
        y, d = rng.integers(0, K, 7), rng.integers(0, S, 7)
        means, counts = C.update_class_centroids(means, counts, tt(u), tt(y), tt(d))
        allu.append(u), ally.append(y), alld.append(d)
    u, y, d = np.concatenate(allu), np.concatenate(ally), np.concatenate(alld)
    for i in range(S):
        for k in range(K):
            rows = (d == i) & (y == k)
            assert npy(counts)[i, k] == rows.sum()
            if rows.any():
                np.testing.assert_allclose(npy(means)[i, k], u[rows].mean(0), atol=1e-12)
            else:
                assert (npy(means)[i, k] == 0).all()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op,scale,label,kw", _params("crpl_reference_probs"))
def test_crpl_reference_probs(op, scale, label, kw, dtype):
    kt = _t(kw, dtype)
    p = C.crpl_reference_probs(**kt)
    assert p.dtype == dtype and not p.requires_grad
    assert_close(p, R.crpl_reference_probs(**_up(kt)), dtype)


def _script_probs(z, u, Tb, TS, TSi, cen, cnt, gamma, scale):
    """A loop transcription of the script's block (per image, class and source)."""
    B, K = z.shape[0], Tb.shape[0]
    S = TSi.shape[0]
    n_pseudo = 3 if (cnt > 0).all() else 2
    out = np.zeros((B, K))
    for b in range(B):
        l = np.zeros(K)
        for k in range(K):
            d = np.array([u[b] @ u[b] + cen[i, k] @ cen[i, k] - 2 * u[b] @ cen[i, k]
                          for i in range(S)])
            w = np.exp(-gamma * d - (-gamma * d).max())
            w /= w.sum()
            l[k] = z[b] @ Tb[k] + z[b] @ TS[k]
            if n_pseudo == 3:
                l[k] += sum(w[i] * (z[b] @ TSi[i, k]) for i in range(S))
            l[k] /= n_pseudo
        e = np.exp(scale * l - (scale * l).max())
        out[b] = e / e.sum()
    return out


@pytest.mark.parametrize("last_seen", [False, True])
def test_probs_switch_when_last_centroid_appears(last_seen):
    """The 2 -> 3 term switch (a device flag) against a loop transcription of the script."""
    rng = np.random.default_rng(5)
    B, K, D, S = 4, 3, 5, 2
    z, u = unit(rng.normal(size=(B, D))), 0.5 * rng.normal(size=(B, D))
    Tb, TS, TSi = (unit(rng.normal(size=s)) for s in ((K, D), (K, D), (S, K, D)))
    cen, cnt = 0.5 * rng.normal(size=(S, K, D)), rng.integers(1, 4, (S, K)).astype(float)
    if not last_seen:
        cnt[S - 1, K - 1] = 0.0
    p = C.crpl_reference_probs(*map(tt, (z, u, Tb, TS, TSi, cen, cnt)))
    np.testing.assert_allclose(npy(p), _script_probs(z, u, Tb, TS, TSi, cen, cnt, 10.0, 100.0),
                               atol=1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op,scale,label,kw", _params("soft_cross_entropy"))
def test_soft_cross_entropy(op, scale, label, kw, dtype):
    kt = _t(kw, dtype)
    up = _up(kt)
    loss = C.soft_cross_entropy(**kt)
    g = C.soft_cross_entropy_grad(**kt)
    assert loss.shape == () and loss.dtype == g.dtype == dtype
    assert_close(loss, R.soft_cross_entropy(**up), dtype)
    assert_close(g, R.soft_cross_entropy_grad(**up), dtype)
    # autograd of the loss is the explicit gradient
    x = kt["logits"].clone().requires_grad_(True)
    (ga,) = torch.autograd.grad(C.soft_cross_entropy(x, kt["p"]), x)
    assert_close(ga, g, dtype)


def test_soft_cross_entropy_gradcheck_and_onehot():
    rng = np.random.default_rng(1)
    logits = tt(rng.normal(size=(4, 3))).requires_grad_(True)
    p = torch.softmax(tt(rng.normal(size=(4, 3))), -1)
    assert torch.autograd.gradcheck(lambda x: C.soft_cross_entropy(x, p), (logits,))
    y = torch.as_tensor([0, 2, 1, 2])
    onehot = torch.nn.functional.one_hot(y, 3).to(F64)
    assert_close(C.soft_cross_entropy(logits.detach(), onehot),
                 torch.nn.functional.cross_entropy(logits.detach(), y))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op,scale,label,kw", _params("ot_cluster_loss"))
def test_ot_cluster_loss(op, scale, label, kw, dtype):
    kt = _t(kw, dtype)
    got = C.ot_cluster_loss(**kt)
    want = R.ot_cluster_loss(**_up(kt))
    assert got[0].shape == () and all(x.dtype == dtype for x in got)
    B, K = kt["Z"].shape[0], kt["T"].shape[0]
    for g, w in zip(got, want):
        assert_close(g, np.asarray(w), dtype)
    P = npy(got[1]).astype(np.float64)
    atol = 1e-12 if dtype == F64 else 1e-6
    np.testing.assert_allclose(P.sum(1), np.full(B, 1 / B), atol=atol)
    np.testing.assert_allclose(P.sum(0), np.full(K, 1 / K), atol=atol)


@pytest.mark.parametrize("op,scale,label,kw", _params("ot_cluster_loss", scales=("tiny",)))
def test_ot_against_pot_and_autograd_through_emd2(op, scale, label, kw):
    """L_W equals POT's ot.emd2; autograd through ``_OTCluster`` and the returned dT, dZ equal
    torch autograd through ot.emd2 on float64 tensors (POT attaches the envelope gradient)."""
    ot = pytest.importorskip("ot")
    Z, T = tt(kw["Z"]), tt(kw["T"])
    L_W, _, dT, dZ = C.ot_cluster_loss(Z, T)
    Zp, Tp = Z.clone().requires_grad_(True), T.clone().requires_grad_(True)
    B, K = Z.shape[0], T.shape[0]
    a = torch.full((B,), 1.0 / B, dtype=F64)
    b = torch.full((K,), 1.0 / K, dtype=F64)
    Lp = ot.emd2(a, b, 1.0 - Zp @ Tp.T, numItermax=500000)
    gZ, gT = torch.autograd.grad(Lp, (Zp, Tp))
    assert_close(L_W, Lp.detach())
    assert_close(dT, gT)
    assert_close(dZ, gZ)
    Za, Ta = Z.clone().requires_grad_(True), T.clone().requires_grad_(True)
    aZ, aT = torch.autograd.grad(C.ot_cluster_loss(Za, Ta)[0], (Za, Ta))
    assert_close(aZ, gZ)
    assert_close(aT, gT)


def test_ot_finite_differences_in_T():
    """On a tie-free cost the plan is locally constant: central differences of L_W in T match
    ``-P^T Z``."""
    rng = np.random.default_rng(11)
    Z, T = unit(rng.normal(size=(6, 4))), unit(rng.normal(size=(3, 4)))
    _, _, dT, _ = C.ot_cluster_loss(tt(Z), tt(T))
    h, fd = 1e-6, np.zeros_like(T)
    for k in range(3):
        for d in range(4):
            E = np.zeros_like(T)
            E[k, d] = h
            # T +- h E stays unit-norm to 1e-6 (inside the validators' 1e-4)
            fd[k, d] = (float(C.ot_cluster_loss(tt(Z), tt(T + E))[0])
                        - float(C.ot_cluster_loss(tt(Z), tt(T - E))[0])) / (2 * h)
    np.testing.assert_allclose(npy(dT), fd, atol=1e-8)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op,scale,label,kw", _params("crpl_target_loss"))
def test_crpl_target_loss(op, scale, label, kw, dtype):
    kt = _t(kw, dtype)
    up = _up(kt)
    L, hard = C.crpl_target_loss(**kt)
    rL, rhard = R.crpl_target_loss(**up)
    assert L.shape == () and L.dtype == dtype and hard.dtype == torch.int64
    assert_close(L, rL, dtype)
    np.testing.assert_array_equal(npy(hard), rhard)
    # autograd w.r.t. T_T equals the registry's reference VJP
    Tt = kt["T_T"].clone().requires_grad_(True)
    (g,) = torch.autograd.grad(C.crpl_target_loss(**{**kt, "T_T": Tt})[0], Tt)
    assert_close(g, cases.vjp_crpl_target_loss(up, 1.0)["dT_T"], dtype)


@pytest.mark.parametrize("op,scale,label,kw", _params("crpl_target_loss", scales=("tiny",)))
def test_crpl_target_loss_gradcheck(op, scale, label, kw):
    kt = _t(kw, F64)
    Tt = kt["T_T"].clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda T: C.crpl_target_loss(**{**kt, "T_T": T})[0], (Tt,))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op,scale,label,kw", _params("crpl_loss"))
def test_crpl_loss_and_grad(op, scale, label, kw, dtype):
    kt = _t(kw, dtype)
    up = _up(kt)
    L, parts = C.crpl_loss(**kt)
    rL, rparts, rgrads = R.crpl_loss_grad(**up)
    assert L.shape == () and L.dtype == dtype
    assert_close(L, rL, dtype)
    for k in ("L_src", "L_W", "L_T"):
        assert parts[k].dtype == dtype
        assert_close(parts[k], rparts[k], dtype)
    # the parts sum to the total with the weights
    lam_W, lam_T = kw.get("lam_W", 0.5), kw.get("lam_T", 0.5)
    assert_close(L, npy(parts["L_src"]) + lam_W * npy(parts["L_W"]) + lam_T * npy(parts["L_T"]),
                 dtype)
    # autograd through crpl_loss (custom _OTCluster for L_W) == the reference's explicit grads
    names = [n for n in ("T_S", "T_Si", "T_T") if kt[n] is not None]
    leaves = {n: kt[n].clone().requires_grad_(True) for n in names}
    grads = torch.autograd.grad(C.crpl_loss(**{**kt, **leaves})[0], list(leaves.values()))
    assert set(rgrads) == {"d" + n for n in names}
    for n, g in zip(names, grads):
        assert_close(g, rgrads["d" + n], dtype)
    # crpl_loss_grad
    gL, gparts, ggrads = C.crpl_loss_grad(**kt)
    assert_close(gL, rL, dtype)
    assert set(ggrads) == set(rgrads)
    for k, v in rgrads.items():
        assert ggrads[k].dtype == dtype and not ggrads[k].requires_grad
        assert_close(ggrads[k], v, dtype)
    for k in rparts:
        assert_close(gparts[k], rparts[k], dtype)


@pytest.mark.parametrize("op,scale,label,kw", _params("crpl_loss", scales=("tiny",)))
def test_crpl_loss_gradcheck_without_ot(op, scale, label, kw):
    kt = _t({**kw, "use_ot": False}, F64)
    names = [n for n in ("T_S", "T_Si", "T_T") if kt[n] is not None]
    leaves = tuple(kt[n].clone().requires_grad_(True) for n in names)

    def f(*xs):
        return C.crpl_loss(**{**kt, **dict(zip(names, xs))})[0]

    assert torch.autograd.gradcheck(f, leaves)
    _, parts = C.crpl_loss(**kt)
    assert float(parts["L_W"]) == 0.0


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("threshold", [0.0, 0.4, 0.9])
def test_clip_pseudo_labels(dtype, threshold):
    for _, kw in _cases("crpl_target_loss", "small")[:1]:
        z = tt(kw["z"], dtype)
        Tb = tt(kw["T_T"], dtype)
        got = C.clip_pseudo_labels(z, Tb, threshold)
        assert got.dtype == torch.int64
        np.testing.assert_array_equal(npy(got), R.clip_pseudo_labels(npy(z).astype(np.float64),
                                                                      npy(Tb).astype(np.float64),
                                                                      threshold))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op,scale,label,kw", _params("target_accuracy"))
def test_target_accuracy(op, scale, label, kw, dtype):
    kt = _t(kw, dtype)
    acc = C.target_accuracy(**kt)
    assert acc.shape == () and acc.dtype == dtype
    assert_close(acc, R.target_accuracy(**_up(kt)), dtype)


def test_target_accuracy_undercount_and_stack():
    """31 samples, batch 30, all correct: "code" gives 31 / 60, "exact" 1; an (M, K, D) stack
    averages as the list does."""
    rng = np.random.default_rng(2)
    T = unit(rng.normal(size=(4, 6)))
    y = rng.integers(0, 4, 31)
    z = tt(T[y] + 1e-3 * rng.normal(size=(31, 6)))
    Tt_, yt = tt(T), tt(y)
    assert float(C.target_accuracy(z, Tt_, yt)) == pytest.approx(31 / 60, abs=1e-15)
    assert float(C.target_accuracy(z, Tt_, yt, variant="exact")) == 1.0
    Ts = [tt(unit(T + 0.1 * rng.normal(size=T.shape))) for _ in range(3)]
    assert float(C.target_accuracy(z, Ts, yt)) == float(C.target_accuracy(z, torch.stack(Ts), yt))


# --------------------------------------------------------------------------- host reads


_TRAPPED = ("item", "tolist", "numpy", "cpu", "__bool__", "__float__", "__int__", "__index__")


@pytest.fixture
def host_reads(monkeypatch):
    """Counts ``read_packed`` calls and OT host solves; any other tensor-to-host conversion
    outside them is recorded in ``other``."""
    state = {"packed": 0, "ot": 0, "other": [], "inside": 0}
    real_read, real_emd = C.read_packed, C._ot.emd

    def allowed(fn, key):
        def wrapper(*a, **k):
            state[key] += 1
            state["inside"] += 1
            try:
                return fn(*a, **k)
            finally:
                state["inside"] -= 1
        return wrapper

    monkeypatch.setattr(C, "read_packed", allowed(real_read, "packed"))
    monkeypatch.setattr(C._ot, "emd", allowed(real_emd, "ot"))
    for name in _TRAPPED:
        real = getattr(torch.Tensor, name)

        def trap(self, *a, _real=real, _name=name, **k):
            if not state["inside"]:
                state["other"].append(_name)
            return _real(self, *a, **k)
        monkeypatch.setattr(torch.Tensor, name, trap)
    return state


def test_host_read_trap_detects_a_read(host_reads):
    """The trap is not vacuous: a stray conversion outside the allowed reads is recorded."""
    bool(torch.ones(()))
    torch.zeros(2).tolist()
    assert host_reads["other"] == ["__bool__", "tolist"]


def _one_case(op):
    return _t(_cases(op, "tiny")[0][1], F64)


@pytest.mark.parametrize("op", ["update_class_centroids", "crpl_reference_probs",
                                "soft_cross_entropy", "soft_cross_entropy_grad",
                                "ot_cluster_loss", "crpl_target_loss", "crpl_loss",
                                "crpl_loss_grad", "target_accuracy", "clip_pseudo_labels"])
def test_one_host_read_per_call(op, host_reads):
    if op == "clip_pseudo_labels":
        kw = _one_case("crpl_target_loss")
        kw = {"z": kw["z"], "T_base": kw["T_T"]}
    else:
        kw = _one_case(op)
    out = getattr(C, op)(**kw)
    assert host_reads["packed"] == 1, host_reads
    uses_ot = op == "ot_cluster_loss" or (op.startswith("crpl_loss") and kw.get("use_ot", True))
    assert host_reads["ot"] == (1 if uses_ot else 0), host_reads
    assert host_reads["other"] == [], host_reads
    del out


def test_autograd_backward_reads_nothing(host_reads):
    """The backward of crpl_loss (custom _OTCluster included) never reads the device."""
    kt = _one_case("crpl_loss")
    T = kt["T_T"].clone().requires_grad_(True)
    L, _ = C.crpl_loss(**{**kt, "T_T": T})
    before = dict(host_reads)
    L.backward()
    assert host_reads["packed"] == before["packed"] and host_reads["ot"] == before["ot"]
    assert host_reads["other"] == []


# --------------------------------------------------------------------------- bad input


def _base():
    rng = np.random.default_rng(9)
    B, K, D, S = 4, 3, 5, 2
    d = {"z": unit(rng.normal(size=(B, D))), "u": rng.normal(size=(B, D)),
         "T": unit(rng.normal(size=(K, D))), "T_Si": unit(rng.normal(size=(S, K, D))),
         "cen": rng.normal(size=(S, K, D)), "cnt": np.ones((S, K)),
         "y": np.array([0, 1, 2, 0]), "dom": np.array([0, 1, 0, 1])}
    d["p"] = R.crpl_reference_probs(d["z"], d["u"], d["T"], d["T"])
    return d


def _both(fn, *args, **kw):
    """(reference call, torch call) of ``fn`` on the same args (NumPy / float64 tensors)."""
    def conv(v):       # dtype kept (torch.as_tensor), lists of arrays mapped
        if isinstance(v, list):
            return [conv(x) for x in v]
        return torch.as_tensor(v) if isinstance(v, np.ndarray) else v
    return (lambda: getattr(R, fn)(*args, **kw),
            lambda: getattr(C, fn)(*map(conv, args), **{k: conv(v) for k, v in kw.items()}))


def _bad_inputs():
    d = _base()
    z, u, T, TSi, cen, cnt, y, dom, p = (d[k] for k in
                                         ("z", "u", "T", "T_Si", "cen", "cnt", "y", "dom", "p"))
    z_bad = z.copy()
    z_bad[1] *= 1.3
    cnt_neg = cnt.copy()
    cnt_neg[0, 1] = -1
    return {
        "z_not_unit": ("crpl_reference_probs", (z_bad, u, T, T), {}),
        "T_not_unit": ("ot_cluster_loss", (z, 2 * T), {}),
        "empty_batch": ("crpl_reference_probs", (z[:0], u[:0], T, T), {}),
        "K_mismatch": ("crpl_reference_probs", (z, u, T, T[:2]), {}),
        "gamma": ("crpl_reference_probs", (z, u, T, T, TSi, cen, cnt), {"gamma": 0.0}),
        "scale_inf": ("crpl_target_loss", (z, T, p), {"scale": float("inf")}),
        "variant": ("crpl_reference_probs", (z, u, T, T), {"variant": "pdf"}),
        "counts_negative": ("crpl_reference_probs", (z, u, T, T, TSi, cen, cnt_neg), {}),
        "u_nan": ("crpl_reference_probs", (z, np.where(u > 1, np.nan, u), T, T), {}),
        "centroids_missing": ("crpl_reference_probs", (z, u, T, T, TSi), {}),
        "labels_range": ("update_class_centroids", (cen, cnt, u, y + 1, dom), {}),
        "domains_range": ("update_class_centroids", (cen, cnt, u, y, dom - 1), {}),
        "missing_domain": ("crpl_loss", (z, y, np.zeros(4, np.int64), z, T, TSi, T, p), {}),
        "y_src_range": ("crpl_loss", (z, y + 3, dom, z, T, TSi, T, p), {}),
        "p_label_range": ("crpl_target_loss", (z, T, np.array([0, -2, 1, 1])), {}),
        "p_shape": ("crpl_target_loss", (z, T, p[:, :2]), {}),
        "p_dtype": ("crpl_target_loss", (z, T, p.astype(np.float32)), {}),
        "use_ot_type": ("crpl_target_loss", (z, T, p), {"use_ot": 1}),
        "sce_shape": ("soft_cross_entropy", (p, p[:3]), {}),
        "sce_nan": ("soft_cross_entropy_grad", (np.full((2, 3), np.nan), np.ones((2, 3)) / 3), {}),
        "acc_labels": ("target_accuracy", (z, T, y + 1), {}),
        "acc_batch_size": ("target_accuracy", (z, T, y), {"batch_size": 0}),
        "acc_list_K": ("target_accuracy", (z, [T, T[:2]], y), {}),
        "threshold": ("clip_pseudo_labels", (z, T), {"threshold": 1.5}),
        "lam_W": ("crpl_loss", (z, y, dom, z, T, TSi, T, p), {"lam_W": -1.0}),
    }


@pytest.mark.parametrize("case", list(_bad_inputs()))
def test_bad_input_messages_equal_reference(case):
    fn, args, kw = _bad_inputs()[case]
    raises_like_reference(*_both(fn, *args, **kw))


def test_numpy_input_refused():
    d = _base()
    with pytest.raises(TypeError, match="z is a numpy.ndarray; the torch backend takes"):
        C.crpl_reference_probs(d["z"], tt(d["u"]), tt(d["T"]), tt(d["T"]))
    with pytest.raises(TypeError, match=r"T_list\[1\] is a numpy.ndarray"):
        C.target_accuracy(tt(d["z"]), [tt(d["T"]), d["T"]], tt(d["y"]))
