r"""Causal discovery with the discrete score on CuPy arrays (causal_discrete.md sec. 1, 2, 4, 7, 8).

Same functions, signatures and results as :mod:`refimpl.causal_discrete` for the registry ops:
``discrete_score_plugin``, ``gsm_marginal_loss``, ``leaf_statistic``, ``ci_test_batch``,
``stein_hessian_diag``. Paper: Vo et al., arXiv 2601.16249 (no official code exists: the leaf
statistic and the CI pruning are RECONSTRUCTED, see the reference modules); SCORE: Rolland et
al., arXiv 2203.04413. Array inputs are ``cupy.ndarray`` (``X``, ``S_all``, ``weights``; other
array kinds are a ``TypeError`` naming the argument). ``cards`` and ``candidates`` are host
values (Python ints / sequences) or CuPy integer arrays (read back once, see below); a NumPy
array there is refused like any foreign array. ``X`` may have any integer dtype. Outputs:
float64 for the integer-only ops (``discrete_score_plugin``; ``ci_test_batch``'s stat and
p-value, its dof int64); the input's dtype (float32 / float64) for ``gsm_marginal_loss`` (0-d),
``leaf_statistic`` and ``stein_hessian_diag``. Everything runs on the current device and stream.

Kernels (``_kernels.py``, module ``causal_discrete``; ``THREADS`` threads per block, at most
``GRID_CAP`` blocks, grid-stride loops). Counting is done by SORTING int64 keys (``cupy.sort`` /
``cupy.argsort``: CUB radix sorts) and reading the sorted array: every count is a difference
of two lower bounds, found by galloping from the thread's own sorted position (steps 1, 2, 4,
... then a binary search; a singleton segment costs one read per bound). No atomics anywhere,
no shared-memory or per-thread tables (any cards), segments of any length (a segment may span
any number of blocks), nothing of size prod K.

- ``discrete_score_plugin`` (spec sec. 1, 8 "GPU design"): mixed-radix row codes
  ``code = sum_k X[:, k] stride_k`` (int64, ``stride_k = prod_{l > k} K_l``; d CuPy passes),
  then per node i: ``cd_keys`` moves digit x_i to the least significant place,
  ``key2 = key_-i K_i + x_i`` (``key_-i`` the code with digit i removed, so ``key2 < prod K``)
  and packs the row index in, ``key2 n + r`` (while ``prod K n < 2^63``: one keys-only sort;
  otherwise ``cupy.argsort`` and a gather); ``cupy.sort``; then ``cd_plugin``, the fused
  segment-count / score kernel: one thread per sorted position finds its x_-i segment
  ``[lb(g K), lb(g K + K))`` and the per-category counts ``N(y, x_-i) = lb(g K + y + 1) -
  lb(g K + y)`` (K + 1 galloping lower bounds) and writes the whole row ``S[row, i, :]``:
  ``p_hat = (N(y, x_-i) + alpha) / (N(x_-i) + alpha K_i)``, ``S = 1 / p_hat`` (the reference's
  operations in its order), ``kind="concrete"``: ``S_obs / S - 1``; NaN beyond K_i. Per node:
  O(n) int64 scratch (keys, sorted keys; + the permutation on the argsort path) and one sort.
  When ``prod K >= 2^62`` (as the reference) the x_-i key is built by a chain over the other
  columns that replaces the running code by its dense rank (``argsort`` + ``cumsum`` of the
  "new value" flags, no host read) before it would overflow: O(d) passes per node.
- ``leaf_statistic`` / ``gsm_marginal_loss`` (spec sec. 1, 2): one row kernel ``cd_row_phi``,
  one thread per (row, node) element (a warp reads 32 consecutive rows of Kmax values), reads
  only ``S_all[r, i, :K_i]`` and writes phi (n, d) in the input dtype: ``sum_y S``; the entropy
  of ``q_y = (1/S_y) / sum (1/S)``; ``S[r, i, X_ri]``; or the GSM term ``S_obs^2 - 2 sum_y S``.
  Then CuPy reductions: the two-pass weighted population variance
  ``sum_r w_r (phi_r - sum_r' w_r' phi_r')^2`` with ``w = weights / sum(weights)`` (uniform
  ``1 / n`` by default), and ``J = mean_r sum_i term``. No (n, d, Kmax) temporary; X is used
  as int64 (a copy only when it has another dtype; modes that read X).
- ``ci_test_batch`` (spec sec. 4): stratum code z of ``cond`` (mixed radix; dense-ranked as
  above when ``prod K_Z >= 2^62``, and whenever ``prod K_Z > n`` so that the key bound is
  ``min(n, prod K_Z)``), ``zx = z K_i + x_i``; all candidates of a chunk in ONE sort of the
  combined keys ``key = (c ZX + zx) KY + X[:, cand_c]`` (``cd_ci_keys``; ``KY`` the largest
  candidate card, ``ZX = NZ K_i``); candidate c owns sorted positions ``[c n, (c + 1) n)``.
  ``cd_ci_stat``: the thread at the first position of each (candidate, stratum) segment
  computes that stratum's G² (or Pearson chi², cells with ``N = 0`` but ``E > 0`` included)
  and its adjusted dof ``(r_z - 1)(c_z - 1)`` from counts recomputed by binary searches inside
  the segment (``O(K_i K_c log |segment|)`` per stratum); the other positions write 0; a CuPy
  row sum per candidate. Chunks of at most ``CI_CHUNK_KEYS`` keys (and a key bound below
  2^63). ``df="full"``: host arithmetic on the cards (``V.full_dof``, with the reference's
  int64 overflow error, checked before any device work). ``p = gammaincc(dof / 2,
  max(stat, 0) / 2)`` (``cupyx.scipy.special.gammaincc``, the chi² survival function as
  ``scipy.stats.chi2.sf``; a rounding-level negative G² gives 1 there too), ``p = 1`` where
  ``dof == 0``.
- ``stein_hessian_diag`` (spec sec. 7): a library path, no kernel. ``G = X X^T`` (cuBLAS),
  ``D2 = max(|x_a|^2 + |x_b|^2 - (G + G^T), 0)`` (``G + G^T`` instead of ``2 G`` makes D2, hence
  K, exactly symmetric); the bandwidth ``s`` = median of the n(n-1)/2 distances of the pairs
  a < b (the reference's ``pdist``; mean of the two middle values for an even count): the
  distance matrix with its diagonal set to -1 is sorted as one vector (``cupy.sort``), where
  every pair appears twice after the n diagonal entries, so the k-th smallest pair distance is
  entry ``n + 2k`` (no index arrays, no host read of a size). ``K = exp(-D2 / (2 s^2)) / s``
  in place; ONE GEMM ``K [X, X^2]`` and the row sums give ``gK`` and ``g2K`` (the reference's
  expansion: the n x n x d difference tensor is never formed); ``cupy.linalg.cholesky``
  (cuSOLVER potrf) of ``K + eta I`` and two ``cupyx.scipy.linalg.solve_triangular`` (cuBLAS
  trsm) per factor, the right-hand sides stacked ``[gK, g2K]`` in one solve when
  ``eta_G == eta_H``; ``H = -G^2 + F``. Peak memory O(n^2 + n d): D2/K, the factor, the sort
  buffers of the median (freed before the factorisation). Computed in the input dtype.
  Distances from the expanded Gram differ from the reference's ``pdist`` differences by the
  usual cancellation (relative ``eps |x|^2 / |x_a - x_b|^2``).

Host reads (documented; nothing else synchronises):

- ``discrete_score_plugin``, ``gsm_marginal_loss``, ``leaf_statistic``, ``ci_test_batch``: ONE
  device-to-host read per call (:class:`_Reads`) of an int64 vector holding the per-column
  min and max of X computed on the device (2 d integers, the range check of
  ``V.discrete_data``), ``cards`` when it is a CuPy array (d), ``candidates`` when it is a CuPy
  array (k), and the weight statistics ``(all finite, min, sum)`` (3 float64 bit-cast to
  int64) when ``weights`` is given. Malformed inputs fall back to one read per item before the
  validator raises its message.
- ``stein_hessian_diag``: one read of ``(all finite, s)`` (2 float64) for the validation and
  the bandwidth check, and one read of the cuSOLVER status per Cholesky factorisation (one, or
  two when ``eta_G != eta_H``; ``cupyx.errstate(linalg="raise")`` around
  ``cupy.linalg.cholesky``), so that a failed factorisation raises the reference's ValueError
  (``eta_G`` first).
- Host-to-device uploads (not reads): the cards (d int64) for ``cd_row_phi``, the candidate
  indices and cards (k int64 each) and the ``df="full"`` dofs (k) for ``ci_test_batch``.

Unverified without a GPU: these sources compile with NVRTC for sm_90 and run on the CPU
emulator of ``tests/cuda_emulator.py`` (real kernels; NumPy in place of CuPy, LAPACK/SciPy in
place of cuSOLVER/cuBLAS/``cupyx.scipy``); timings, the CUB sort paths, cuSOLVER's potrf
verdict on borderline matrices (float32 ``K + eta I`` at n = 4096) and ``cupyx``'s
``gammaincc`` against SciPy are checked only by the ``gpu`` tests.
"""

from __future__ import annotations

import math
import numbers

import cupy
import numpy as np

from backends.cupy import _kernels
from backends.cupy import native as _native
from refimpl import _validate as V

__all__ = [
    "discrete_score_plugin", "gsm_marginal_loss", "leaf_statistic", "ci_test_batch",
    "stein_hessian_diag",
]

THREADS = 256                # threads per block of every kernel of this module
GRID_CAP = 4096              # at most this many blocks; grid-stride loops beyond
CI_CHUNK_KEYS = 1 << 24      # at most this many (candidate, row) keys per CI sort
_CODE_LIMIT = 1 << 62        # mixed-radix codes while prod(cards) < this (as the reference)
_I64_MAX = (1 << 63) - 1
_SCORE_KINDS = ("marginal", "concrete")
_MODES = {"invariance_sum": 0, "invariance_entropy": 1, "var_score": 2}
_GSM_MODE = 3


def _library():
    """``(cupyx.scipy.special, cupyx.scipy.linalg, cupyx.errstate)``, imported on first use
    (``cupyx.scipy.linalg`` loads cuBLAS)."""
    import cupyx
    import cupyx.scipy.linalg
    import cupyx.scipy.special

    return cupyx.scipy.special, cupyx.scipy.linalg, cupyx.errstate


def _launch(template: str, dtype, total: int, args: tuple) -> None:
    blocks = max(1, min(-(-int(total) // THREADS), GRID_CAP))
    _kernels.launch(_kernels.kernel_name(template, dtype), (blocks,), (THREADS,), args)


# --------------------------------------------------------------------------- host reads


def _int_array(x) -> bool:
    return isinstance(x, cupy.ndarray) and x.dtype.kind in "iu"


def _foreign(**values) -> None:
    """Refuse array objects of another kind among the host-value arguments (``cards``,
    ``candidates``); Python ints, NumPy scalars and sequences pass."""
    _native(**{k: v for k, v in values.items()
               if not isinstance(v, (cupy.ndarray, list, tuple, numbers.Integral, np.generic))
               and (hasattr(v, "shape") or hasattr(v, "__array__"))})


class _Reads:
    """The host values of one call, from ONE device-to-host read: column mins/maxs of X,
    ``cards`` / ``candidates`` when they are CuPy arrays, the weight statistics."""

    def __init__(self, X, cards, candidates=None, weights=None):
        parts, names = [], []
        if _int_array(X) and X.ndim == 2 and X.shape[0] >= 1 and X.shape[1] >= 1:
            parts += [X.min(axis=0).astype(np.int64), X.max(axis=0).astype(np.int64)]
            names += ["min", "max"]
        if _int_array(cards):
            parts.append(cards.reshape(-1).astype(np.int64))
            names.append("cards")
        if _int_array(candidates):
            parts.append(candidates.reshape(-1).astype(np.int64))
            names.append("candidates")
        if (isinstance(weights, cupy.ndarray) and weights.dtype.kind == "f" and weights.ndim == 1
                and weights.size > 0):
            w = weights.astype(np.float64)
            st = cupy.stack([cupy.isfinite(w).all().astype(np.float64), w.min(), w.sum()])
            parts.append(st.view(np.int64))
            names.append("wstats")
        vals = {}
        if parts:
            flat = cupy.asnumpy(cupy.concatenate(parts))       # the one device-to-host read
            off = 0
            for name, p in zip(names, parts):
                vals[name] = flat[off:off + p.size]
                off += p.size
        self._vals = vals
        self._weights = weights
        self.cards = self._host(cards, vals.get("cards"))
        self.candidates = self._host(candidates, vals.get("candidates"))

    @staticmethod
    def _host(v, read):
        if isinstance(v, cupy.ndarray):
            return read.reshape(tuple(v.shape)) if read is not None else cupy.asnumpy(v)
        return v

    def colrange(self, X):
        if "min" in self._vals:
            return self._vals["min"], self._vals["max"]
        return cupy.asnumpy(X.min(axis=0)), cupy.asnumpy(X.max(axis=0))   # not reached

    def wstats(self, w):
        if "wstats" in self._vals and w is self._weights:
            ok, lo, tot = self._vals["wstats"].view(np.float64).tolist()
            return bool(ok), lo, tot
        w64 = w.astype(np.float64)                                         # not reached
        ok, lo, tot = cupy.asnumpy(cupy.stack([cupy.isfinite(w64).all().astype(np.float64),
                                               w64.min(), w64.sum()])).tolist()
        return bool(ok), lo, tot


def _discrete(X, cards, candidates=None, weights=None, **arrays):
    """Native checks, the one host read, ``V.discrete_data``: ``(reads, n, d, cards int64)``."""
    _native(X=X, **arrays, weights=weights)
    _foreign(cards=cards, candidates=candidates)
    r = _Reads(X, cards, candidates, weights)
    n, d, c = V.discrete_data(X, r.cards, colrange=r.colrange)
    return r, n, d, c


# --------------------------------------------------------------------------- codes


def _column(X, k):
    return X[:, k].astype(np.int64)


def _dense_rank(z):
    """The dense rank of every entry of the int64 vector z (0 for its smallest value), by
    ``argsort`` and a ``cumsum`` of the "new value" flags: no host read of the count."""
    order = cupy.argsort(z)
    zs = z[order]
    flag = cupy.zeros(z.size, dtype=np.int64)
    flag[1:] = zs[1:] != zs[:-1]
    out = cupy.empty_like(z)
    out[order] = cupy.cumsum(flag)
    return out


def _pattern_code(X, cards, cols, n: int):
    """``(code int64 (n,), bound)``: equal codes iff equal rows of ``X[:, cols]``, all codes
    ``< bound``. Mixed radix; the running code is replaced by its dense rank (bound n) before
    ``bound * K`` would reach 2^62."""
    code = cupy.zeros(n, dtype=np.int64)
    bound = 1
    for k in cols:
        K = int(cards[k])
        if bound * K >= _CODE_LIMIT:
            code = _dense_rank(code)
            bound = n
        code = code * K + _column(X, k)
        bound *= K
    return code, bound


# --------------------------------------------------------------------------- plug-in score


def discrete_score_plugin(X, cards, alpha=1.0, kind="marginal"):
    """Plug-in discrete score with Dirichlet pseudo-count ``alpha`` > 0:
    ``S[r, i, y] = (N(x_-i) + alpha K_i) / (N(y, x_-i) + alpha)`` at ``x_-i = X[r, -i]``
    (``kind="concrete"``: ``S_obs / S - 1``). Returns (n, d, Kmax) float64, NaN beyond K_i.
    Per node one sort and one fused segment-count kernel (module docstring)."""
    _, n, d, c = _discrete(X, cards)
    alpha = V.positive_float(alpha, "alpha")
    V.choice(kind, "kind", _SCORE_KINDS)
    Kmax = int(c.max())
    S = cupy.empty((n, d, Kmax), dtype=np.float64)
    prod = math.prod(int(k) for k in c)
    fast = prod < _CODE_LIMIT
    if fast:
        code = cupy.zeros(n, dtype=np.int64)
        for k in range(d):
            code *= int(c[k])
            code += _column(X, k)
    dummy = cupy.zeros(1, dtype=np.int64)
    for i in range(d):
        K = int(c[i])
        if fast:
            bound = prod
            packn = n if bound * n <= _I64_MAX else 0
            stride = math.prod(int(k) for k in c[i + 1:])
            keys = cupy.empty(n, dtype=np.int64)
            _launch("cd_keys", np.float64, n, (code, np.int64(n), np.int64(stride), np.int32(K),
                                               np.int64(packn), keys))
        else:
            # column i last: key2 = key_-i K_i + x_i (a dense rank never follows x_i)
            keys, bound = _pattern_code(X, c, [k for k in range(d) if k != i] + [i], n)
            packn = n if bound * n <= _I64_MAX else 0
            if packn:
                keys = keys * n + cupy.arange(n, dtype=np.int64)
        if packn:
            sk, perm = cupy.sort(keys), dummy
        else:
            perm = cupy.ascontiguousarray(cupy.argsort(keys).astype(np.int64, copy=False))
            sk = cupy.ascontiguousarray(keys[perm])
        del keys
        _launch("cd_plugin", np.float64, n,
                (sk, perm, np.int64(n), np.int64(packn), np.int32(K), np.int32(Kmax), np.int32(d),
                 np.int32(i), np.float64(alpha), np.int32(kind == "concrete"), S))
    return S


# --------------------------------------------------------------------------- loss, leaf statistic


def _row_phi(S_all, X, c, n, d, mode):
    """``cd_row_phi``: the (n, d) per-element quantity of ``mode`` in S_all's dtype."""
    dt = S_all.dtype
    Kmax = int(S_all.shape[2])
    S = cupy.ascontiguousarray(S_all)
    Xl = (cupy.ascontiguousarray(X, dtype=np.int64) if mode in (2, _GSM_MODE)
          else cupy.zeros(1, dtype=np.int64))
    cards_d = cupy.asarray(np.ascontiguousarray(c, dtype=np.int64))     # host -> device (d,)
    out = cupy.empty((n, d), dtype=dt)
    _launch("cd_row_phi", dt, n * d, (S, Xl, cards_d, np.int64(n), np.int32(d), np.int32(Kmax),
                                      np.int32(mode), out))
    return out


def gsm_marginal_loss(S_all, X, cards):
    """``J = mean_r sum_i [S[r, i, X_ri]^2 - 2 sum_{y < K_i} S[r, i, y]]``; 0-d, S_all's dtype.
    Entries beyond K_i are not read."""
    _, n, d, c = _discrete(X, cards, S_all=S_all)
    V.score_array(S_all, n, d, int(c.max()))
    terms = _row_phi(S_all, X, c, n, d, _GSM_MODE)
    return (terms.sum(axis=1).sum() / n).astype(S_all.dtype, copy=False).reshape(())


def leaf_statistic(S_all, X, cards, criterion="invariance_sum", weights=None):
    """Per-node leaf statistic ``Var_w[phi_j]`` (population variance, weights normalised;
    criterion "invariance_sum" | "invariance_entropy" | "var_score"). Returns (d,), S_all's
    dtype. Leaf = argmin."""
    r, n, d, c = _discrete(X, cards, weights=weights, S_all=S_all)
    V.score_array(S_all, n, d, int(c.max()))
    V.leaf_criterion(criterion)
    V.row_weights(weights, n, S_all, stats=r.wstats)
    dt = S_all.dtype
    phi = _row_phi(S_all, X, c, n, d, _MODES[criterion])
    if weights is None:
        w = cupy.full((n, 1), 1.0 / n, dtype=dt)
    else:
        w = (weights / weights.sum()).astype(dt, copy=False)[:, None]
    m = (w * phi).sum(axis=0)
    dev = phi - m
    return (w * (dev * dev)).sum(axis=0).astype(dt, copy=False)


# --------------------------------------------------------------------------- CI tests


def ci_test_batch(X, cards, i, candidates, cond=(), test="g2", df="adjusted"):
    """Test ``X_i ⊥ X_c | X_cond`` for every ``c`` in ``candidates``: ``(stat (k,) float64,
    dof (k,) int64, pvalue (k,) float64)``; G² or Pearson chi², adjusted or full dof. All
    candidates of a chunk in one sort and one segment kernel (module docstring)."""
    r, n, d, c = _discrete(X, cards, candidates=candidates)
    i, cand, cond = V.ci_args(d, i, r.candidates, cond, test, df, n)
    k = int(cand.size)
    kx = int(c[i])
    kys = c[cand] if k else np.zeros(0, dtype=np.int64)
    n_strata = math.prod(int(c[q]) for q in cond)
    if df == "full":
        dof_full = np.array([V.full_dof(kx, int(ky), n_strata) for ky in kys], dtype=np.int64)
    if k == 0:
        return (cupy.zeros(0, dtype=np.float64), cupy.zeros(0, dtype=np.int64),
                cupy.ones(0, dtype=np.float64))
    Xl = cupy.ascontiguousarray(X, dtype=np.int64)
    z, NZ = _pattern_code(Xl, c, cond, n)
    if NZ > n:                                   # key bound min(n, prod K_Z)
        z, NZ = _dense_rank(z), n
    zx = cupy.ascontiguousarray(z * kx + Xl[:, i])
    ZX = NZ * kx
    KY = int(kys.max())
    kc_max = max(1, min(k, _I64_MAX // (ZX * KY), max(1, CI_CHUNK_KEYS // n)))
    cand_d = cupy.asarray(cand)                  # host -> device (k,)
    ky_d = cupy.asarray(np.ascontiguousarray(kys, dtype=np.int64))
    stat = cupy.empty(k, dtype=np.float64)
    dof_adj = cupy.empty(k, dtype=np.int64)
    for c0 in range(0, k, kc_max):
        kc = min(kc_max, k - c0)
        m = kc * n
        keys = cupy.empty(m, dtype=np.int64)
        _launch("cd_ci_keys", np.float64, m, (zx, Xl, cand_d[c0:c0 + kc], np.int64(n),
                                              np.int32(d), np.int32(kc), np.int64(ZX),
                                              np.int32(KY), keys))
        sk = cupy.sort(keys)
        del keys
        st = cupy.empty(m, dtype=np.float64)
        dz = cupy.empty(m, dtype=np.int64)
        _launch("cd_ci_stat", np.float64, m, (sk, np.int64(m), np.int64(n), np.int32(kx),
                                              np.int32(KY), ky_d[c0:c0 + kc],
                                              np.int32(test == "chi2"), st, dz))
        stat[c0:c0 + kc] = st.reshape(kc, n).sum(axis=1)
        dof_adj[c0:c0 + kc] = dz.reshape(kc, n).sum(axis=1)
    dof = dof_adj if df == "adjusted" else cupy.asarray(dof_full)
    special, _, _ = _library()
    p = special.gammaincc(dof / 2.0, cupy.maximum(stat, 0.0) / 2.0)
    pval = cupy.where(dof == 0, 1.0, p).astype(np.float64, copy=False)
    return stat, dof, pval


# --------------------------------------------------------------------------- SCORE


def _cholesky(A, name: str, eta: float):
    """``cupy.linalg.cholesky`` with ``linalg="raise"`` (one read of the cuSOLVER status); a
    failed factorisation is the reference's ValueError."""
    _, _, errstate = _library()
    try:
        with errstate(linalg="raise"):
            return cupy.linalg.cholesky(A)
    except np.linalg.LinAlgError:
        raise V.stein_not_positive_definite(name, eta) from None


def _cho_solve(L, B):
    """``(L L^T)^-1 B`` by two triangular solves (cuBLAS trsm)."""
    _, linalg, _ = _library()
    Y = linalg.solve_triangular(L, B, lower=True, check_finite=False)
    return linalg.solve_triangular(L, Y, trans="T", lower=True, overwrite_b=True,
                                   check_finite=False)


def stein_hessian_diag(X, eta_G=1e-3, eta_H=1e-3):
    """SCORE's Stein estimate of the diagonal of the Hessian of ``log p`` at the samples:
    float (n, d) -> (n, d) in X's dtype (library path: cuBLAS GEMMs, cuSOLVER Cholesky,
    triangular solves; module docstring)."""
    _native(X=X)
    box = {}

    def finite(Xv):
        """Device: finiteness of X, D2 and the median pair distance; one read of both."""
        Xc = cupy.ascontiguousarray(Xv)
        n = Xc.shape[0]
        G = Xc @ Xc.T
        sq = (Xc * Xc).sum(axis=1)
        D2 = sq[:, None] + sq[None, :]
        D2 -= G + G.T
        del G
        cupy.maximum(D2, 0, out=D2)
        dist = cupy.sqrt(D2)
        dist.reshape(-1)[:: n + 1] = -1                  # the n diagonal entries sort first
        flat = cupy.sort(dist.reshape(-1))
        del dist
        m = n * (n - 1) // 2
        s = (flat[n + 2 * ((m - 1) // 2)].astype(np.float64)
             + flat[n + 2 * (m // 2)].astype(np.float64)) / 2.0
        del flat
        ok = cupy.isfinite(Xc).all().astype(np.float64)
        flag, sv = cupy.asnumpy(cupy.stack([ok, s])).tolist()   # the one read
        box.update(X=Xc, D2=D2, s=sv)
        return bool(flag)

    n, d, eta_G, eta_H = V.stein_args(X, eta_G, eta_H, finite=finite)
    s = box["s"]
    V.stein_bandwidth(s)
    Xc, K = box["X"], box["D2"]
    box.clear()
    dt = Xc.dtype
    K /= -(2.0 * s * s)
    cupy.exp(K, out=K)
    K /= s
    kk = K.sum(axis=1)[:, None]                          # row sums (n, 1)
    X2 = Xc * Xc
    KXX = K @ cupy.concatenate([Xc, X2], axis=1)         # K X and K X^2, one GEMM
    KX, KX2 = KXX[:, :d], KXX[:, d:]
    s2 = s * s
    s4 = s2 * s2
    gK = -(Xc * kk - KX) / s2
    g2K = -kk / s2 + (X2 * kk - 2.0 * Xc * KX + KX2) / s4
    del KXX, KX, KX2, X2
    Kd = K.reshape(-1)[:: n + 1]                         # the diagonal (a view)
    diag = Kd.copy()
    Kd[...] = diag + eta_G
    L = _cholesky(K, "eta_G", eta_G)
    if eta_H == eta_G:
        del K
        Y = _cho_solve(L, cupy.concatenate([gK, g2K], axis=1))
        Gs, F = Y[:, :d], Y[:, d:]
    else:
        Gs = _cho_solve(L, gK)
        del L
        Kd[...] = diag + eta_H
        LH = _cholesky(K, "eta_H", eta_H)
        del K
        F = _cho_solve(LH, g2K)
    return (F - Gs * Gs).astype(dt, copy=False)
