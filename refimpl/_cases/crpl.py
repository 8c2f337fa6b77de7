"""Registry cases, tolerances and reference VJPs of the crpl family (CRPL, arXiv 2506.11493;
spec clip_uda_ot.md, reference refimpl._crpl).

Synthetic CLIP-like data (a reconstructed setting, as the demo's): class directions
``mu_k = normalise(c0 + 0.5 r_k)`` (a shared component, pairwise cosine ~0.8); pre-norm features
``u = s_d (mu_y + o_d + eta g) / sqrt(1 + eta^2 D)`` per domain d (norm scale s_d in [0.8, 1.2],
offset o_d of norm <= 0.3, g ~ N(0, I), eta = 0.12 for D >= 64, 0.3 below), ``z = u / ||u||``;
text embeddings ``normalise(mu_k + 0.3 xi)``, ||xi|| ~ 1 (T_base, T_S, T_Si, T_T perturbed
independently). ``||u|| ~ 1`` keeps
``gamma * D`` in the range where the source weights are mixed but the expanded distance loses
no more than float32 rounding. Costs of the OT cases are tie-free (continuous random unit
vectors). Labels, domains and pseudo-labels are int64 and stay so (the harness casts only float
arrays); counts are float arrays (exact integers).

Scales: tiny B = 4, K = 3, D = 5, S = 2 (Numba simulator: <= 3 cases per op); small B = 30,
K = 65, D = 1024, S = 3 (+ the variants: source-combined mode, the step where the last centroid
becomes available (n_pseudo 2 -> 3), use_ot False, the baseline integer-label branch, variant
"paper"); bench B = 30 at a few of K in {12, 65, 345}, D in {1024, 512}, S in {1, 3}, built
lazily (CPU every dtype, GPU float32).
"""

from __future__ import annotations

import numpy as np

from refimpl._cases import Case

PAPER = "2506.11493"

# dtype -> output name ("*" = default) -> (rtol, atol)
# float32 gradients w.r.t. the text embeddings are scale (= 100) x softmax differences summed
# over the batch, entries up to ~30: an entry near 0 carries the float32 error of those terms
# (measured 7e-5 on the Numba backend, tiny crpl case, largest entry 10; float64 agrees to 1e-13),
# so they get atol 2e-4 in float32.
TOL = {
    "float64": {"*": (1e-10, 1e-10)},
    "float32": {"*": (5e-4, 1e-5), **{g: (5e-4, 2e-4) for g in ("dT_S", "dT_Si", "dT_T", "dT",
                                                                  "dZ")}},
}

DTYPES = ("float32", "float64")

TINY = (4, 3, 5, 2)        # (B, K, D, S)
SMALL = (30, 65, 1024, 3)
# (K, D, S): DomainNet RN101 (345, 512), OfficeHome RN50 (65, 1024), ImageCLEF (12, 1024)
BENCH = ((12, 1024, 3), (65, 1024, 3), (345, 512, 1), (345, 512, 3))
BENCH_B = 30


def _check_scale(scale):
    if scale not in ("tiny", "small", "bench"):
        raise ValueError(f"unknown scale {scale!r}; expected 'tiny', 'small' or 'bench'")


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _noise(rng, shape, D):
    """Gaussian noise of expected norm ~1 along the last axis (sd 1/sqrt(D))."""
    return rng.normal(0.0, 1.0 / np.sqrt(D), shape)


class World:
    """Class directions, domain shifts and the four kinds of text embeddings of one case.

    CLIP-like geometry: the class directions share a common component (pairwise cosine ~0.8,
    as CLIP's text embeddings lie in a narrow cone); images carry isotropic noise of sd eta per
    coordinate, so that at scale 100 the zero-shot CE is ~1-3 and accuracy ~30-80 %% (losses
    and gradients far from 0 or saturation)."""

    def __init__(self, rng, K, D, S):
        self.rng, self.K, self.D, self.S = rng, K, D, S
        c0 = _unit(rng.normal(size=D))
        self.mu = _unit(c0 + 0.5 * _unit(rng.normal(size=(K, D))))
        self.eta = 0.3 if D < 64 else 0.12
        # domains 0..S-1 are the sources, S the target (offset largest)
        self.scale_d = rng.uniform(0.8, 1.2, S + 1)
        off = _unit(rng.normal(size=(S + 1, D)))
        self.off = 0.3 * off * np.linspace(0.6, 1.0, S + 1)[:, None]
        self.T_base = self.text()
        self.T_S = self.text()
        self.T_Si = np.stack([self.text() for _ in range(max(S, 1))])
        self.T_T = self.text()

    def text(self):
        return _unit(self.mu + 0.3 * _noise(self.rng, (self.K, self.D), self.D))

    def images(self, n, domain, labels=None):
        """``(u, z, labels)`` of n images of ``domain`` (S = the target); ``||u|| ~ s_d``."""
        if labels is None:
            labels = self.rng.integers(0, self.K, n)
        labels = np.asarray(labels, dtype=np.int64)
        x = self.mu[labels] + self.off[domain] + self.eta * self.rng.normal(size=(n, self.D))
        u = self.scale_d[domain] * x / np.sqrt(1.0 + self.eta ** 2 * self.D)
        return u, _unit(u), labels

    def source_batch(self, n):
        """``(u, z, y, dom)``: n source images, balanced over the S domains (each present)."""
        dom = np.arange(n, dtype=np.int64) % self.S
        self.rng.shuffle(dom)
        u = np.empty((n, self.D))
        y = self.rng.integers(0, self.K, n).astype(np.int64)
        for i in range(self.S):
            rows = dom == i
            u[rows] = self.images(int(rows.sum()), i, y[rows])[0]
        return u, _unit(u), y, dom

    def centroids(self, n_steps, n, missing=()):
        """``(means, counts)`` after ``n_steps`` source batches of n images through
        :func:`update_class_centroids`; the (i, k) in ``missing`` never seen (their images are
        relabelled to another class of the domain)."""
        from refimpl._crpl import update_class_centroids

        means, counts = np.zeros((self.S, self.K, self.D)), np.zeros((self.S, self.K))
        for _ in range(n_steps):
            u, _, y, dom = self.source_batch(n)
            for i, k in missing:
                y[(dom == i) & (y == k)] = (k + 1) % self.K
            means, counts = update_class_centroids(means, counts, u, y, dom)
        return means, counts

    def full_centroids(self, n_steps, n):
        """:meth:`centroids` with every (i, k) seen (empty ones filled by one more batch)."""
        return _full_counts(self, *self.centroids(n_steps, n), n)[1]


def _full_counts(world, means, counts, n):
    """Fill every still-empty (i, k) with one image (the step where the last centroid appears
    when called on a single missing pair). Returns the batch and the updated state."""
    from refimpl._crpl import update_class_centroids

    empty = np.argwhere(counts == 0)
    dom = empty[:, 0].astype(np.int64)
    y = empty[:, 1].astype(np.int64)
    u = np.concatenate([world.images(1, int(i), [int(k)])[0] for i, k in empty]) if len(empty) \
        else np.zeros((0, world.D))
    extra_u, _, extra_y, extra_dom = world.source_batch(n)
    u, y, dom = np.concatenate([u, extra_u]), np.concatenate([y, extra_y]), \
        np.concatenate([dom, extra_dom])
    return dict(feats=u, labels=y, domains=dom), update_class_centroids(means, counts, u, y, dom)


def _label(B, K, D, S, tag=""):
    return f"B{B}_K{K}_D{D}_S{S}" + (f"_{tag}" if tag else "")


# --------------------------------------------------------------------------- centroids


def cases_update_class_centroids(rng, scale):
    """``update_class_centroids(means, counts, feats, labels, domains)``: the first step from
    zeros, a later step, and the step where the last empty (i, k) is filled."""
    _check_scale(scale)
    if scale == "bench":
        out = []
        for K, D, S in BENCH[:3]:
            def build(K=K, D=D, S=S):
                w = World(rng, K, D, S)
                means, counts = w.centroids(3, BENCH_B * S)
                u, _, y, dom = w.source_batch(BENCH_B * S)
                return dict(means=means, counts=counts, feats=u, labels=y, domains=dom)
            out.append(Case(_label(BENCH_B * S, K, D, S), build))
        return out
    B, K, D, S = TINY if scale == "tiny" else SMALL
    n = 2 * B if scale == "tiny" else B * S
    w = World(rng, K, D, S)
    u, _, y, dom = w.source_batch(n)
    zeros = dict(means=np.zeros((S, K, D)), counts=np.zeros((S, K)), feats=u, labels=y,
                 domains=dom)
    means, counts = w.centroids(2, n, missing=((S - 1, K - 1),))
    batch, _ = _full_counts(w, means, counts, n)
    last = dict(means=means, counts=counts, **batch)
    out = [Case(_label(n, K, D, S, "first_step"), zeros),
           Case(_label(n, K, D, S, "last_centroid_step"), last)]
    if scale == "small":
        means, counts = w.centroids(3, n)
        u, _, y, dom = w.source_batch(n)
        out.append(Case(_label(n, K, D, S, "later_step"),
                        dict(means=means, counts=counts, feats=u, labels=y, domains=dom)))
    return out


# --------------------------------------------------------------------------- reference probs


def _probs_kw(w, B, state=None, combined=False, **kw):
    u, z, _ = w.images(B, w.S)
    out = dict(z=z, u=u, T_base=w.T_base, T_S=w.T_S)
    if not combined:
        means, counts = state
        out.update(T_Si=w.T_Si, centroids=means, counts=counts)
    out.update(kw)
    return out


def cases_crpl_reference_probs(rng, scale):
    """``crpl_reference_probs(z, u, T_base, T_S, T_Si, centroids, counts, ...)``: multi-source
    with every centroid (n_pseudo = 3), the step where the last centroid first appears (its
    counts after the update), one centroid still missing (n_pseudo = 2), source-combined mode,
    the "paper" variant, another gamma / scale."""
    _check_scale(scale)
    if scale == "bench":
        out = []
        for K, D, S in BENCH:
            def build(K=K, D=D, S=S):
                w = World(rng, K, D, S)
                return _probs_kw(w, BENCH_B, w.full_centroids(2, BENCH_B * S))
            label = _label(BENCH_B, K, D, S)
            out += [Case(label, build, "cpu"), Case(label, build, "gpu", ("float32",))]
        return out
    B, K, D, S = TINY if scale == "tiny" else SMALL
    n = 2 * B if scale == "tiny" else B * S
    w = World(rng, K, D, S)
    means, counts = w.centroids(2, n, missing=((S - 1, K - 1),))
    _, last = _full_counts(w, means, counts, n)
    out = [Case(_label(B, K, D, S, "last_centroid_step"), _probs_kw(w, B, last)),
           Case(_label(B, K, D, S, "missing_centroid"), _probs_kw(w, B, (means, counts))),
           Case(_label(B, K, D, 0, "source_combined"), _probs_kw(w, B, combined=True))]
    if scale == "small":
        full = w.full_centroids(2, n)
        out += [Case(_label(B, K, D, S, "full"), _probs_kw(w, B, full)),
                Case(_label(B, K, D, S, "paper"), _probs_kw(w, B, full, variant="paper")),
                Case(_label(B, K, D, S, "paper_missing"),
                     _probs_kw(w, B, (means, counts), variant="paper")),
                Case(_label(B, K, D, S, "gamma1_scale30"),
                     _probs_kw(w, B, full, gamma=1.0, scale=30.0))]
    return out


# --------------------------------------------------------------------------- soft CE


def _sce_kw(rng, B, K, onehot=False):
    logits = rng.normal(0.0, 3.0, (B, K))
    if onehot:
        p = np.eye(K)[rng.integers(0, K, B)]
    else:
        t = rng.normal(0.0, 2.0, (B, K))
        p = np.exp(t - t.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
    return dict(logits=logits, p=p)


def cases_soft_cross_entropy(rng, scale):
    """``soft_cross_entropy(logits, p)`` (also ``soft_cross_entropy_grad``): soft targets on
    the simplex, one-hot targets, scaled-cosine-sized logits."""
    _check_scale(scale)
    if scale == "bench":
        return [Case(f"B{BENCH_B}_K{K}", (lambda K=K: _sce_kw(rng, BENCH_B, K)))
                for K in (65, 345)]
    B, K = TINY[:2] if scale == "tiny" else SMALL[:2]
    out = [Case(f"B{B}_K{K}", _sce_kw(rng, B, K)),
           Case(f"B{B}_K{K}_onehot", _sce_kw(rng, B, K, onehot=True))]
    if scale == "small":
        kw = _sce_kw(rng, B, K)
        out.append(Case(f"B{B}_K{K}_logits_x30", dict(kw, logits=30.0 * kw["logits"])))
    return out


cases_soft_cross_entropy_grad = cases_soft_cross_entropy


def vjp_soft_cross_entropy(kw, cot):
    """d(cot * SCE)/dlogits = cot * soft_cross_entropy_grad(logits, p)."""
    from refimpl._crpl import soft_cross_entropy_grad

    return {"dlogits": float(np.asarray(cot)) * soft_cross_entropy_grad(kw["logits"], kw["p"])}


# --------------------------------------------------------------------------- exact OT


def _ot_kw(rng, B, K, D, clustered=True):
    if clustered:
        w = World(rng, K, D, 1)
        return dict(Z=w.images(B, 1)[1], T=w.T_T)
    return dict(Z=_unit(rng.normal(size=(B, D))), T=_unit(rng.normal(size=(K, D))))


def cases_ot_cluster_loss(rng, scale):
    """``ot_cluster_loss(Z, T)``: tie-free costs (continuous random unit vectors), clustered
    and unstructured; B = K (the square, assignment-solved case) at small scale."""
    _check_scale(scale)
    if scale == "bench":
        return [Case(_label(BENCH_B, K, D, 1), (lambda K=K, D=D: _ot_kw(rng, BENCH_B, K, D)))
                for K, D in ((12, 1024), (65, 1024), (345, 512))]
    B, K, D, _ = TINY if scale == "tiny" else SMALL
    out = [Case(f"B{B}_K{K}_D{D}_clustered", _ot_kw(rng, B, K, D)),
           Case(f"B{B}_K{K}_D{D}_random", _ot_kw(rng, B, K, D, clustered=False))]
    if scale == "small":
        out += [Case(f"B{B}_K12_D{D}", _ot_kw(rng, B, 12, D)),
                Case(f"B{B}_K{B}_D{D}_square", _ot_kw(rng, B, B, D))]
    return out


# --------------------------------------------------------------------------- target loss


def _target_kw(w, B, baseline=False, **kw):
    from refimpl._crpl import clip_pseudo_labels, crpl_reference_probs

    u, z, _ = w.images(B, w.S)
    if baseline:
        p = clip_pseudo_labels(z, w.T_base)
        p[0] = -1                                       # at least one unlabelled row
    else:
        p = crpl_reference_probs(z, u, w.T_base, w.T_S)
    return dict(z=z, T_T=w.T_T, p=p, **kw)


def cases_crpl_target_loss(rng, scale):
    """``crpl_target_loss(z, T_T, p, scale, use_ot)``: SPL branch with OT (soft + hard CE) and
    without, the baseline integer-label branch (unscaled CE over labelled rows) with and
    without the hard CE."""
    _check_scale(scale)
    if scale == "bench":
        return [Case(_label(BENCH_B, K, D, 0), (lambda K=K, D=D: _target_kw(
            World(rng, K, D, 1), BENCH_B))) for K, D, _ in BENCH[:3]]
    B, K, D, _ = TINY if scale == "tiny" else SMALL
    w = World(rng, K, D, 1)
    out = [Case(_label(B, K, D, 0, "spl_ot"), _target_kw(w, B)),
           Case(_label(B, K, D, 0, "spl_no_ot"), _target_kw(w, B, use_ot=False)),
           Case(_label(B, K, D, 0, "baseline_ot"), _target_kw(w, B, baseline=True))]
    if scale == "small":
        out += [Case(_label(B, K, D, 0, "baseline_no_ot"),
                     _target_kw(w, B, baseline=True, use_ot=False)),
                Case(_label(B, K, D, 0, "spl_scale30"), _target_kw(w, B, scale=30.0))]
    return out


def vjp_crpl_target_loss(kw, cot):
    """d(cot * L_T)/dT_T (hard labels and p held constant)."""
    from refimpl import _crpl as R

    z, T_T, p = kw["z"], kw["T_T"], kw["p"]
    _, _, _, scale, use_ot, baseline = R.V.crpl_target_args(
        z, T_T, p, kw.get("scale", 100.0), kw.get("use_ot", True))
    _, _, dT = R._target(np.asarray(z, np.float64), np.asarray(T_T, np.float64),
                         p if baseline else np.asarray(p, np.float64), scale, use_ot, baseline)
    return {"dT_T": float(np.asarray(cot)) * dT}


# --------------------------------------------------------------------------- full objective


def _loss_kw(w, N, B, combined=False, baseline=False, **kw):
    from refimpl._crpl import clip_pseudo_labels, crpl_reference_probs

    _, z_src, y, dom = w.source_batch(N)
    u, z_tgt, _ = w.images(B, w.S)
    if baseline:
        p = clip_pseudo_labels(z_tgt, w.T_base)
        p[0] = -1
    elif combined:
        p = crpl_reference_probs(z_tgt, u, w.T_base, w.T_S)
    else:
        means, counts = w.full_centroids(1, N)
        p = crpl_reference_probs(z_tgt, u, w.T_base, w.T_S, w.T_Si, means, counts)
    return dict(z_src=z_src, y_src=y, dom_src=None if combined else dom, z_tgt=z_tgt, T_S=w.T_S,
                T_Si=None if combined else w.T_Si, T_T=w.T_T, p=p, **kw)


def cases_crpl_loss(rng, scale):
    """``crpl_loss(z_src, y_src, dom_src, z_tgt, T_S, T_Si, T_T, p, ...)`` (also
    ``crpl_loss_grad``): multi-source CRPL, source-combined, OT off, the baseline branch with
    OT (the ablation's collapse setting), other weights."""
    _check_scale(scale)
    if scale == "bench":
        out = []
        for K, D, S in BENCH:
            def build(K=K, D=D, S=S):
                return _loss_kw(World(rng, K, D, S), BENCH_B * S, BENCH_B)
            label = _label(BENCH_B, K, D, S)
            out += [Case(label, build, "cpu"), Case(label, build, "gpu", ("float32",))]
        return out
    B, K, D, S = TINY if scale == "tiny" else SMALL
    N = 2 * B if scale == "tiny" else B * S
    w = World(rng, K, D, S)
    out = [Case(_label(B, K, D, S, "crpl"), _loss_kw(w, N, B)),
           Case(_label(B, K, D, 0, "source_combined_no_ot"),
                _loss_kw(w, N, B, combined=True, use_ot=False)),
           Case(_label(B, K, D, S, "baseline_ot"), _loss_kw(w, N, B, baseline=True))]
    if scale == "small":
        out += [Case(_label(B, K, D, S, "no_ot"), _loss_kw(w, N, B, use_ot=False)),
                Case(_label(B, K, D, 0, "source_combined"), _loss_kw(w, N, B, combined=True)),
                Case(_label(B, K, D, S, "lam1_0.25_scale50"),
                     _loss_kw(w, N, B, lam_W=1.0, lam_T=0.25, scale=50.0))]
    return out


cases_crpl_loss_grad = cases_crpl_loss


def vjp_crpl_loss(kw, cot):
    """d(cot * L)/d(T_S, T_Si, T_T): cot * crpl_loss_grad(...)[2] ("dT_Si" only with T_Si)."""
    from refimpl._crpl import crpl_loss_grad

    c = float(np.asarray(cot))
    return {k: c * v for k, v in crpl_loss_grad(**kw)[2].items()}


def outputs_crpl_loss(result, kwargs):
    """``(L, parts)`` -> {"L", "L_src", "L_W", "L_T"}."""
    L, parts = result[0], result[1]
    return {"L": L, "L_src": parts["L_src"], "L_W": parts["L_W"], "L_T": parts["L_T"]}


def outputs_crpl_loss_grad(result, kwargs):
    """``(L, parts, grads)`` -> {"L", "L_src", "L_W", "L_T", "dT_S", ("dT_Si",) "dT_T"}."""
    out = outputs_crpl_loss(result, kwargs)
    out.update(result[2])
    return out


# --------------------------------------------------------------------------- evaluation


def _acc_kw(rng, n, K, D, n_prompts=1, **kw):
    w = World(rng, K, D, 1)
    _, z, y = w.images(n, 1)
    T = [w.text() for _ in range(n_prompts)]
    return dict(z=z, T_list=T[0] if n_prompts == 1 else T, labels=y, **kw)


def cases_target_accuracy(rng, scale):
    """``target_accuracy(z, T_list, labels, batch_size, variant)``: the code's undercount on 31
    images with batch 30, the exact count, a list of prompts averaged."""
    _check_scale(scale)
    if scale == "bench":
        return [Case(f"n3000_K{K}_D{D}", (lambda K=K, D=D: _acc_kw(rng, 3000, K, D)))
                for K, D in ((65, 1024), (345, 512))]
    K, D = TINY[1:3] if scale == "tiny" else SMALL[1:3]
    out = [Case(f"n31_K{K}_D{D}_code", _acc_kw(rng, 31, K, D)),
           Case(f"n31_K{K}_D{D}_exact_avg3", _acc_kw(rng, 31, K, D, 3, variant="exact"))]
    if scale == "small":
        out += [Case(f"n100_K{K}_D{D}_code_avg5_bs16", _acc_kw(rng, 100, K, D, 5, batch_size=16)),
                Case(f"n60_K{K}_D{D}_code_full_batches", _acc_kw(rng, 60, K, D))]
    return out
