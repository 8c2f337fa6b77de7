r"""Discrete-score causal discovery with Numba-CUDA kernels (``causal_discrete.md`` secs. 1, 2,
4, 7).

Same functions, signatures and results as the reference (:mod:`refimpl._causal_score`,
:mod:`refimpl._causal_graph`) for the registry ops ``discrete_score_plugin``,
``gsm_marginal_loss``, ``leaf_statistic``, ``ci_test_batch`` and ``stein_hessian_diag``; see the
package docstring for array kinds and the stream. Paper: arXiv 2601.16249 (no official code
exists: the leaf statistic and the CI pruning are RECONSTRUCTED, see the reference's
docstrings); SCORE: arXiv 2203.04413.

Dtypes. ``X`` is an integer CUDA array (int64 is used as it is, strided or not; int8/16/32 and
uint8/16/32/64 are widened once to a C-contiguous int64 copy by ``cd_cast_*``; uint64 codes
>= 2^63 would wrap negative and be refused as negative). ``cards`` is a list, a NumPy array or a
CUDA array (read once, d integers), ``candidates`` likewise (k integers). Float outputs of the
integer-only ops (the plug-in score, the CI statistic and p-value) are float64 (the reference's
dtype; their kernels are launched in the float64 variant only); ``gsm_marginal_loss``,
``leaf_statistic`` and ``stein_hessian_diag`` compute, accumulate and return in the dtype of
their float input (float32 or float64).

Kernels (``cd_*``, in :mod:`._kernels` with the backend's other kernels: built per dtype by
``_kernels._build``, one signature per dtype in ``_kernels._SIGNATURES``, compiled lazily,
launched by :func:`._kernels.launch`; the backend's PTX test compiles them for cc 9.0). This
module is their host glue.

Grouping rows by a pattern (plug-in score, CI strata) — a device LSD radix sort
    Columns are packed into mixed-radix int64 codes per *group* of columns whose cardinality
    product stays below 2^62 (one group for every realistic case: 3^19 ~ 1.2e9); a row order
    sorted lexicographically over all groups is built by stable sorts from the last group to the
    first (LSD over groups), so any number of columns is exact (no hashing, no overflow).
    One stable sort of n non-negative int64 keys is ``ceil(bits / 8)`` passes (``bits`` = bit
    length of the largest possible code, known on the host from ``cards``: 3^19 needs 31 bits,
    4 passes), each pass three launches: ``cd_sort_hist`` (block b counts the 8-bit digits of
    its tile of :data:`._kernels.CD_TILE` keys, one thread per digit walking the tile in shared
    memory; ``hist[digit * nblocks + b]``), ``cd_scan`` (ONE block: exclusive scan of the
    256 x nblocks counts, chunked per thread) and ``cd_sort_scatter`` (thread r of a block
    walks the tile in order and writes the keys of digit r, with their permutation entries,
    from its offset on: stable). Cost per pass: O(n * 256 / threads) broadcast shared reads per
    block (each digit-thread walks the whole tile), scattered writes, and the one-block scan of
    256 n / 1024 counts — correctness first; a GPU sort (CUB onesweep) is ~10x faster.
    Segments: ``cd_seg_flags`` marks sorted rows whose pattern differs from the previous one by
    comparing the columns themselves (exact), ``cd_scan`` (inclusive) numbers the segments.

``discrete_score_plugin`` — per node i: the lexicographic sort of the rows over the columns
    ``-i``, segments, ``cd_seg_count`` (atomic ``N(y, x_-i)`` per segment and the segment of every
    row), ``cd_plugin_write`` (one thread per (row, y): ``1 / ((N(y, x_-i) + alpha) / (N(x_-i) +
    alpha K_i))``, NaN beyond K_i; ``kind="concrete"`` ``s_i(x_r) / s_i(y, x_-i) - 1``, the
    reference's forms). Launches per node: 3 per radix pass + 6.
``gsm_marginal_loss`` — ``cd_gsm_rows`` (grid-stride rows, per-block sums by ``block_sum``) and
    ``cd_sum_scale`` (one block: the sum of the block sums / n).
``leaf_statistic`` — two-pass weighted variance: ``cd_leaf_pass`` on a (row blocks, d) grid
    (pass 0: per-block ``sum w phi_j`` and ``sum w``; pass 1: ``sum w (phi_j - mean_j)^2``),
    ``cd_leaf_finish`` (one block per node). ``phi`` recomputed per pass (never stored):
    ``sum_y S``, the entropy of ``q ∝ 1/S`` or ``S[r, j, X_rj]``.
``ci_test_batch`` — strata: the lexicographic sort over the ``cond`` columns, segments, dense
    stratum index per row (``cd_rank_rows``; only observed strata, as the reference's
    ``np.unique``); ``cd_ci_count``: one thread per (candidate, row), atomic counts into a
    (k, nz, K_i, max K_c) int64 table (nz = min(n, prod K_Z); candidates are chunked so that a
    table has <= :data:`CI_CELLS` cells); ``cd_ci_stat``: one block per candidate, threads over
    strata; G2 ``2 sum N ln(N N_z / (N_xz N_yz))`` over N > 0 or Pearson over E > 0, the
    adjusted dof ``sum_{N_z > 0} (r_z - 1)(c_z - 1)`` (int64 block sum) or the full rule
    ``(K_i - 1)(K_c - 1) prod K_Z``; ``p = Q(dof / 2, stat / 2)``, 1 at dof = 0, with the
    regularised upper incomplete gamma ``Q`` as a float64 device function (series for
    x < a + 1, Lentz continued fraction otherwise; Numerical Recipes sec. 6.2 scheme, written
    here; ``cd_gammaincc`` exposes it to the tests). Its prefactor
    ``exp(-x + a ln x - lgamma(a))`` loses ~``1e-16 a ln x`` relative accuracy for very large
    dof (a = 1e6: ~1e-9), where scipy switches to Temme's expansion.
``stein_hessian_diag`` — ``cd_pair_dist`` writes the n(n-1)/2 pair distances (pairs a < b);
    non-negative floats sort as their bit patterns, so the same radix sort orders them (float64
    viewed as int64; float32 written as (m, 2) float32 with a zero high word and viewed as m
    int64, little-endian) and ``cd_median`` takes the median (the mean of the two middle values
    for an even count, as NumPy) into a device status array — 8 (float64) or 4 (float32) sort
    passes over n^2/2 keys. ``cd_stein_kernel`` the n x n kernel matrix; ``cd_stein_rhs`` one
    thread per (a, j) looping over b: ``gK`` and ``g2K`` in the direct form ``-sum_b (x_aj -
    x_bj) K_ab / s^2`` and ``sum_b (-1/s^2 + (x_aj - x_bj)^2 / s^4) K_ab`` (equal to the
    reference's three-product expansion in exact arithmetic, without its cancellation; the n x n
    x d tensor is never formed). ``cd_add_diag`` forms ``K + eta I`` (in place for eta_G, a
    second n x n array only when eta_H != eta_G); an unblocked right-looking Cholesky: per
    column k ``cd_chol_col`` (scale the column by the root of the pivot; a pivot that is not > 0
    sets a status flag) and ``cd_chol_update`` (rank-1 update of the trailing lower triangle,
    and the pivot's root) — **2 n launches per factorisation** (n = 4096: 8192 launches, tens of
    ms of launch latency alone, O(n^3 / 3) flops, far from the 5 ms target; a blocked
    factorisation or cuSOLVER is the way to it); ``cd_trsm``: forward and backward substitution,
    one block per right-hand-side column (d blocks, n barriers each); ``cd_stein_combine``
    ``-G^2 + H``. Memory: the (m, W) distances (m = n(n-1)/2), one or two n x n matrices, O(n
    d).

Host reads (each documented, none O(data)):

1. ``discrete_data``'s value check: ``cd_colrange`` writes per-column (min, max) of X into a
   (2, d) int64 array, read once (16 d bytes) — every op with X.
2. ``cards`` / ``candidates`` given as CUDA arrays: read once each (d resp. k integers); host
   lists and NumPy arrays are used as they are.
3. ``leaf_statistic`` with ``weights``: ``cd_fstats`` (non-finite flag, min, sum) of the
   weights, one read of 3 floats.
4. ``stein_hessian_diag``: the finiteness check of X (``cd_fstats``, 3 floats) before the work,
   and ONE read of the device status ``(s, Cholesky eta_G failed, Cholesky eta_H failed)`` after
   the launches (3 floats): the reference raises for s = 0 and for a failed factorisation, a
   kernel cannot.

Nothing else is read: the sort passes, segment counts, the statistics and p-values, the median
and the factorisations run without a host sync (all sizes and pass counts follow from shapes and
``cards`` on the host).
"""

from __future__ import annotations

import numpy as np

from refimpl import _validate as V

from . import _kernels as K

__all__ = ["discrete_score_plugin", "gsm_marginal_loss", "leaf_statistic", "ci_test_batch",
           "stein_hessian_diag"]

BLOCK = 256               # threads per block of the one-thread-per-item kernels
MAX_BLOCKS = 8 if K.simulator() else 65535
#                         ^ grid cap of the grid-stride kernels (tests lower it; in the
#                           simulator every block is a set of Python threads: few, looping)
RED_BLOCKS = 1024         # row blocks of the reductions (partials per node)
CI_CELLS = 1 << 24        # int64 cells of one chunk of CI count tables (128 MB)
CODE_LIMIT = 1 << 62      # a column group's cardinality product stays below this
IDT = "float64"           # the kernel variant launched for integer-only work

_KINDS = ("marginal", "concrete")
_CRITERIA = {"invariance_sum": 0, "invariance_entropy": 1, "var_score": 2}
_CASTS = {"int8": "cd_cast_i8", "int16": "cd_cast_i16", "int32": "cd_cast_i32",
          "uint8": "cd_cast_u8", "uint16": "cd_cast_u16", "uint32": "cd_cast_u32",
          "uint64": "cd_cast_u64"}
_I64 = np.iinfo(np.int64)


# --------------------------------------------------------------------------- launch helpers


def _geometry(total: int, cap: int = BLOCK):
    nt = K.threads(total, cap)
    return (max(1, min(-(-int(total) // nt), int(MAX_BLOCKS))),), (nt,)


def _red_threads(work: int) -> int:
    """Threads of a block reduction: a power of 2, at most 256."""
    return K.pow2_floor(K.threads(work, 256))


def _launch_items(name, dt, total, *args):
    grid, block = _geometry(max(int(total), 1))
    K.launch(name, dt, grid, block, 0, *args)


def _i64(values) -> object:
    return K.upload(np.asarray(values, dtype=np.int64).reshape(-1))


def _fill_i64(arr, value) -> None:
    if int(arr.shape[0]):
        _launch_items("cd_fill_i64", IDT, arr.shape[0], arr, np.int64(value))


def _iota(n: int):
    out = K.empty((n,), np.int64)
    if n:
        _launch_items("cd_iota", IDT, n, out)
    return out


def _scan(x, out, inclusive: bool) -> None:
    m = int(x.shape[0])
    if m:
        nt = K.threads(m, K.CD_RED)
        K.launch("cd_scan", IDT, (1,), (nt,), 0, x, out, int(inclusive))


# --------------------------------------------------------------------------- radix sort


def radix_sort(keys, perm, nbits: int):
    """Stable LSD sort of the non-negative int64 device keys (< 2^nbits), carrying ``perm``;
    returns ``(sorted keys, permutation)`` (the input buffers are reused as scratch)."""
    n = int(keys.shape[0])
    passes = -(-int(nbits) // K.CD_RADIX_BITS)
    if n <= 1 or passes == 0:
        return keys, perm
    nb = -(-n // K.CD_TILE)
    hist = K.empty((K.CD_RADIX * nb,), np.int64)
    k2, p2 = K.empty((n,), np.int64), K.empty((n,), np.int64)
    nt = K.threads(K.CD_RADIX, K.CD_RADIX)
    for p in range(passes):
        shift = np.int64(p * K.CD_RADIX_BITS)
        K.launch("cd_sort_hist", IDT, (nb,), (nt,), 0, keys, hist, shift)
        _scan(hist, hist, False)
        K.launch("cd_sort_scatter", IDT, (nb,), (nt,), 0, keys, perm, hist, k2, p2, shift)
        keys, k2, perm, p2 = k2, keys, p2, perm
    return keys, perm


def _groups(cols, cards):
    """Consecutive column groups with a cardinality product < CODE_LIMIT: [(cols, product)]."""
    groups, cur, prod = [], [], 1
    for c in cols:
        k = int(cards[c])
        if cur and prod * k >= CODE_LIMIT:
            groups.append((cur, prod))
            cur, prod = [], 1
        cur.append(int(c))
        prod *= k
    if cur:
        groups.append((cur, prod))
    return groups


def _lexsort(X64, cards, cols, n: int):
    """The row permutation sorting X[:, cols] lexicographically (stable)."""
    perm = _iota(n)
    keys = K.empty((n,), np.int64)
    for gcols, prod in reversed(_groups(cols, cards)):
        nbits = (prod - 1).bit_length()
        if nbits == 0:
            continue
        strides = [1] * len(gcols)
        for k in range(len(gcols) - 2, -1, -1):
            strides[k] = strides[k + 1] * int(cards[gcols[k + 1]])
        _launch_items("cd_group_key", IDT, n, X64, _i64(gcols), _i64(strides), perm, keys)
        keys, perm = radix_sort(keys, perm, nbits)
    return perm


def _segments(X64, cols, perm, n: int):
    """Inclusive segment numbers (1-based) of the sorted rows over ``cols``."""
    flags = K.empty((n,), np.int64)
    _launch_items("cd_seg_flags", IDT, n, X64, _i64(cols), perm, flags)
    _scan(flags, flags, True)
    return flags


# --------------------------------------------------------------------------- validation


class _Data:
    """X as int64 on the device (widened once if needed) and the validators' ``colrange``."""

    def __init__(self, X):
        self.X = X
        self.X64 = None

    def int64(self):
        if self.X64 is None:
            dev = K.device(self.X)
            dt = np.dtype(dev.dtype).name
            if dt == "int64":
                self.X64 = dev
            else:
                out = K.empty(tuple(int(s) for s in dev.shape), np.int64)
                total = int(out.shape[0]) * int(out.shape[1])
                if total:
                    _launch_items(_CASTS[dt], IDT, total, dev, out)
                self.X64 = out
        return self.X64

    def colrange(self, _meta):
        X64 = self.int64()
        n, d = (int(s) for s in X64.shape)
        out = K.upload(np.array([[_I64.max] * d, [_I64.min] * d], dtype=np.int64))
        nt = _red_threads(n)
        K.launch("cd_colrange", IDT, (max(1, min(-(-n // nt), RED_BLOCKS)), d), (nt,), 0,
                 X64, out)
        host = out.copy_to_host()                       # host read 1: 2 d integers
        return host[0], host[1]


def _host_ints(x):
    """cards/candidates: CUDA arrays are read once (host read 2); host values pass as they are."""
    if x is not None and not isinstance(x, (list, tuple, np.ndarray)) and K.is_native(x):
        return K.to_numpy(x)
    return x


def _data(X, cards):
    data = _Data(X)
    n, d, c = V.discrete_data(K.meta(X), _host_ints(cards), colrange=data.colrange)
    return data, n, d, c


def _fstats(x2, dt):
    """``(all finite, min, sum)`` of a float device array viewed 2-D: one read of 3 floats."""
    out = K.upload(np.array([0.0, np.inf, 0.0], dtype=dt))
    total = int(x2.shape[0]) * int(x2.shape[1])
    nt = _red_threads(total)
    K.launch("cd_fstats", dt, (max(1, min(-(-total // nt), RED_BLOCKS)),), (nt,), 0, x2, out)
    host = out.copy_to_host()                           # host reads 3 and 4: 3 floats
    return bool(host[0] == 0), float(host[1]), float(host[2])


def _column(w):
    """A (n, 1) view of a 1-D device array."""
    if K.simulator():
        return w[:, None]
    st = int(w.strides[0])
    return K._view(w, (int(w.shape[0]), 1), (st, st))


# --------------------------------------------------------------------------- ops


def discrete_score_plugin(X, cards, alpha=1.0, kind="marginal"):
    r"""Plug-in discrete score ``S[r, i, y] = (N(x_-i) + alpha K_i) / (N(y, x_-i) + alpha)``
    (n, d, Kmax) float64, NaN beyond K_i; per node one device lexicographic sort of the rows
    over the columns -i, segment counts and one write kernel (module docstring)."""
    K.native(X=X)
    data, n, d, cards = _data(X, cards)
    alpha = V.positive_float(alpha, "alpha")
    V.choice(kind, "kind", _KINDS)
    X64 = data.int64()
    Kmax = int(cards.max())
    S = K.empty((n, d, Kmax), IDT)
    cnt = K.empty((n, Kmax), np.int64)
    rowseg = K.empty((n,), np.int64)
    for i in range(d):
        cols = [k for k in range(d) if k != i]
        perm = _lexsort(X64, cards, cols, n)
        incl = _segments(X64, cols, perm, n)
        _fill_i64(cnt.reshape((n * Kmax,)), 0)
        _launch_items("cd_seg_count", IDT, n, X64, perm, incl, i, cnt, rowseg)
        _launch_items("cd_plugin_write", IDT, n * Kmax, X64, cnt, rowseg, i, int(cards[i]),
                      np.float64(alpha), _KINDS.index(kind), S)
    return K.wrap(S, X)


def _score_inputs(S_all, X, cards):
    K.native(X=X, S_all=S_all)
    data, n, d, cards = _data(X, cards)
    V.score_array(K.meta(S_all), n, d, int(cards.max()))
    return data, n, d, cards, V.dtype_name(S_all)


def gsm_marginal_loss(S_all, X, cards):
    r"""``J = mean_r sum_i [S[r, i, X_ri]^2 - 2 sum_{y<K_i} S[r, i, y]]``, 0-d of S_all's dtype:
    per-block row sums and one finishing block (padding beyond K_i never read)."""
    data, n, d, cards, dt = _score_inputs(S_all, X, cards)
    nt = _red_threads(n)
    nb = max(1, min(-(-n // nt), RED_BLOCKS))
    part = K.empty((nb,), dt)
    K.launch("cd_gsm_rows", dt, (nb,), (nt,), 0, K.device(S_all), data.int64(), _i64(cards),
             part)
    out = K.empty((1,), dt)
    K.launch("cd_sum_scale", dt, (1,), (_red_threads(nb),), 0, part, out,
             np.dtype(dt).type(1.0 / n))
    return K.wrap(out.reshape(()), S_all)


def leaf_statistic(S_all, X, cards, criterion="invariance_sum", weights=None):
    r"""Per-node ``stat_j = Var_w[phi_j]`` (population variance, weights normalised), (d,) of
    S_all's dtype: two passes of per-block sums on a (row blocks, d) grid."""
    data, n, d, cards, dt = _score_inputs(S_all, X, cards)
    V.leaf_criterion(criterion)
    w2 = None
    if weights is not None:
        K.native(weights=weights)
        dev = K.device(weights)
        if len(dev.shape) == 1:
            w2 = _column(dev)
    V.row_weights(None if weights is None else K.meta(weights), n, K.meta(S_all),
                  stats=lambda _w: _fstats(w2, dt))
    nt = _red_threads(n)
    nb = max(1, min(-(-n // nt), RED_BLOCKS))
    part = K.empty((d, nb, 2), dt)
    st = K.empty((d, 2), dt)
    out = K.empty((d,), dt)
    has_w = int(w2 is not None)
    wv = w2 if has_w else K.dummy(2, dt)
    args = (K.device(S_all), data.int64(), _i64(cards), wv, has_w, _CRITERIA[criterion])
    for npass in (0, 1):
        K.launch("cd_leaf_pass", dt, (nb, d), (nt,), 0, *args, npass, st, part)
        K.launch("cd_leaf_finish", dt, (d,), (_red_threads(nb),), 0, part, st, out, npass)
    return K.wrap(out, S_all)


def ci_test_batch(X, cards, i, candidates, cond=(), test="g2", df="adjusted"):
    r"""Test ``X_i ⊥ X_c | X_cond`` for every c in ``candidates``: ``(stat (k,) float64,
    dof (k,) int64, pvalue (k,) float64)``; strata by one device sort, counts by atomics, one
    block per candidate for G2/chi2, both dof rules and the p-value (module docstring)."""
    K.native(X=X)
    data, n, d, cards = _data(X, cards)
    i, cand, cond = V.ci_args(d, i, _host_ints(candidates), cond, test, df, n,
                              to_numpy=K.to_numpy)
    kx = int(cards[i])
    n_strata = 1
    for c in cond:
        n_strata *= int(cards[c])
    if df == "full":
        for c in cand.tolist():
            V.full_dof(kx, int(cards[c]), n_strata)      # the reference's ValueError
    k = int(cand.size)
    stat = K.empty((k,), IDT)
    dof = K.empty((k,), np.int64)
    pval = K.empty((k,), IDT)
    if k == 0:
        return K.wrap(stat, X), K.wrap(dof, X), K.wrap(pval, X)
    X64 = data.int64()
    zrow = K.empty((n,), np.int64)
    if cond:
        perm = _lexsort(X64, cards, list(cond), n)
        incl = _segments(X64, list(cond), perm, n)
        _launch_items("cd_rank_rows", IDT, n, perm, incl, zrow)
        nz = min(n, n_strata)
    else:
        _fill_i64(zrow, 0)
        nz = 1
    ky = int(max(int(cards[c]) for c in cand.tolist()))
    per = nz * kx * ky
    chunk = max(1, CI_CELLS // per)
    cand_dev = _i64(cand)
    full = np.int64(n_strata if df == "full" else 0)
    for c0 in range(0, k, chunk):
        c1 = min(k, c0 + chunk)
        cnt = K.empty(((c1 - c0) * per,), np.int64)
        _fill_i64(cnt, 0)
        cs = cand_dev[c0:c1]
        _launch_items("cd_ci_count", IDT, (c1 - c0) * n, X64, zrow, i, cs, nz, kx, ky, cnt)
        K.launch("cd_ci_stat", IDT, (c1 - c0,), (_red_threads(nz),), 0, cnt, cs, _i64(cards),
                 nz, kx, ky, int(test == "chi2"), full, stat[c0:c1], dof[c0:c1], pval[c0:c1])
    return K.wrap(stat, X), K.wrap(dof, X), K.wrap(pval, X)


def gammaincc(a, x):
    """The device ``Q(a, x)`` of ``cd_ci_stat`` on float64 device arrays (tests)."""
    out = K.empty((int(a.shape[0]),), IDT)
    _launch_items("cd_gammaincc", IDT, a.shape[0], a, x, out)
    return out


def _cholesky(A, status, slot: int, dt: str) -> None:
    """Unblocked right-looking Cholesky of the lower triangle of A in place (2 n launches)."""
    n = int(A.shape[0])
    for k in range(n):
        m = n - k - 1
        _launch_items("cd_chol_col", dt, m, A, k, status, slot)
        _launch_items("cd_chol_update", dt, m * m, A, k)


def _solve(L, B, dt: str) -> None:
    """``B <- (L L^T)^-1 B`` in place: forward then backward substitution."""
    nt = K.threads(int(L.shape[0]), BLOCK)
    for trans in (0, 1):
        K.launch("cd_trsm", dt, (int(B.shape[1]),), (nt,), 0, L, B, trans)


def stein_hessian_diag(X, eta_G=1e-3, eta_H=1e-3):
    r"""SCORE's Stein estimate of the diagonal of the Hessian of log p, (n, d) of X's dtype:
    median bandwidth by the device sort, kernel matrix, Cholesky solves (module docstring).
    Two host reads: the finiteness of X and, after the launches, (s, factorisation flags)."""
    K.native(X=X)
    dt = V.dtype_name(X) if hasattr(X, "dtype") else None
    n, d, eta_G, eta_H = V.stein_args(K.meta(X), eta_G, eta_H,
                                      finite=lambda _x: _fstats(K.device(X), dt)[0])
    Xd = K.device(X)
    m = n * (n - 1) // 2
    W = 1 if dt == "float64" else 2
    D = K.empty((m, W), dt)
    _launch_items("cd_pair_dist", dt, n * n, Xd, D)
    keys, _ = radix_sort(D.view(np.int64).reshape((m,)), _iota(m), 63 if W == 1 else 31)
    status = K.upload(np.zeros(3, dtype=dt))            # (s, eta_G failed, eta_H failed)
    K.launch("cd_median", dt, (1,), (1,), 0, keys.reshape((m, 1)).view(np.dtype(dt)), status)
    Km = K.empty((n, n), dt)
    _launch_items("cd_stein_kernel", dt, n * n, Xd, status, Km)
    G, H = K.empty((n, d), dt), K.empty((n, d), dt)
    _launch_items("cd_stein_rhs", dt, n * d, Km, Xd, status, G, H)
    T = np.dtype(dt).type
    LH = None
    if eta_H != eta_G:
        LH = K.empty((n, n), dt)
        _launch_items("cd_add_diag", dt, n * n, Km, LH, T(eta_H))
    _launch_items("cd_add_diag", dt, n * n, Km, Km, T(eta_G))
    _cholesky(Km, status, 1, dt)
    if LH is not None:
        _cholesky(LH, status, 2, dt)
    _solve(Km, G, dt)
    _solve(Km if LH is None else LH, H, dt)
    out = K.empty((n, d), dt)
    _launch_items("cd_stein_combine", dt, n * d, G, H, out)
    s, bad_g, bad_h = (float(v) for v in status.copy_to_host())   # host read 4: 3 floats
    V.stein_bandwidth(s)
    if bad_g:
        raise V.stein_not_positive_definite("eta_G", eta_G)
    if bad_h:
        raise V.stein_not_positive_definite("eta_H", eta_H)
    return K.wrap(out, X)
