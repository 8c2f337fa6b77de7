r"""Discrete-score causal discovery on torch tensors (causal_discrete.md sec. 1, 2, 4, 7, 8).

Same functions, signatures, conventions and messages as the float64 reference
(:mod:`refimpl._causal_score`, :mod:`refimpl._causal_graph`), for the five registry ops:
``discrete_score_plugin``, ``gsm_marginal_loss``, ``leaf_statistic``, ``ci_test_batch`` and
``stein_hessian_diag``. Paper: Vo et al., "Ordering-based Causal Discovery via Generalized
Score Matching", arXiv 2601.16249 (no official code exists: the leaf statistic and the CI
pruning are RECONSTRUCTED, see the reference); SCORE: Rolland et al., arXiv 2203.04413.

Inputs: ``X`` an integer tensor (n, d) of category codes (any integer dtype; bool refused),
``cards`` a Python sequence of ints or an integer tensor (d,) (any device), float tensors
``S_all`` / ``weights`` / SCORE's ``X`` (float32 or float64, one dtype per call). Results are
on the device of ``X`` (``gsm_marginal_loss`` / ``leaf_statistic``: of ``S_all``; an X on
another device is copied there explicitly). ``candidates`` / ``cond`` of ``ci_test_batch``:
ints, sequences or integer tensors. Outputs of integer-only inputs (the plug-in score, the CI statistics
and p-values) are float64 (dof int64); the others follow the float input's dtype. Arrays of
another kind (``numpy.ndarray`` included, also for ``cards`` and ``candidates``) are refused
with a TypeError naming the argument; Python lists/ints are host values and accepted.

Structure:

- Grouping (plug-in strata, CI strata) is sort-based and never synchronises:
  :func:`_dense_rank` sorts an int64 key, marks the segment starts, and a ``cumsum`` numbers
  the distinct keys in sorted order, scattered back to the rows (``inverse``). The number of
  groups is NOT read: every table is sized by a host-known bound (n, or ``prod K`` of the
  stratum columns when smaller), and the unused tail rows stay zero. (``torch.unique`` and
  ``torch.bincount`` are avoided: both synchronise on CUDA to size their output.)
- ``discrete_score_plugin``: mixed-radix int64 row codes ``code = sum_k X[:, k] stride_k``
  (``stride_k = prod_{l > k} K_l``) while ``prod K < 2^62`` (the reference's limit); the
  ``x_-i`` key is ``code - X[:, i] stride_i``. Beyond that limit (the documented fallback,
  no overflow): prefix and suffix dense ranks ``P_i`` (columns < i) and ``Q_i`` (columns > i),
  each built column by column as ``rank(prev * K_k + X[:, k])`` (< n K_k, fits int64), and
  the key ``P_i * n + Q_i``: 2 d extra sorts per call. Per node i: ``g = dense_rank(key)``,
  counts ``N[g, y]`` by ``index_add_`` of ones at ``g K_i + X[:, i]`` into an (n, K_i) table,
  ``p_hat = (N + alpha) / (N(g) + alpha K_i)`` and ``S[:, i, :K_i] = 1 / p_hat[g]`` (the
  reference's expression); NaN beyond K_i. Memory per node O(n K_i) (no (n, prod K) tensor);
  the output (n, d, Kmax) float64. ``kind="concrete"``: ``s_obs / S - 1``.
- ``gsm_marginal_loss`` / ``leaf_statistic``: one vectorised pass over (n, d, Kmax) with the
  mask ``y < K_i`` (padding never read: ``torch.where``), ``s_obs`` by ``gather``; weights
  normalised (``w / sum w``, uniform ``1/n`` by default), two-pass population variance
  ``sum_r w_r (phi_r - sum_r' w_r' phi_r')^2`` per column. Computed in the input's dtype.
- ``ci_test_batch``: stratum code of ``cond`` (mixed radix; dense-rank chain when
  ``prod K_Z >= 2^62``), ``zinv = dense_rank(z)``, ``zx = zinv K_i + X[:, i]``; all candidates
  at once with an offset per candidate: one ``index_add_`` of ones at
  ``t * nzb K_i Kmax_c + zx * Kmax_c + X[:, c_t]`` into a float64 table (k, nzb, K_i, Kmax_c)
  (``nzb = min(n, prod K_Z)`` strata bound, ``Kmax_c`` the largest candidate card; cells
  beyond K_c and strata beyond the observed ones stay 0 and contribute nothing: G² sums
  over ``N > 0``, chi² over ``E > 0``, the adjusted dof over ``N_z > 0``). Candidates are
  swept in chunks so that the table and the (n, chunk) cell index stay below
  ``_CHUNK_ELEMS`` elements each. ``df="full"`` is host arithmetic on the cards (the
  reference's int64 overflow error). ``p = gammaincc(dof / 2, max(stat, 0) / 2)``
  (``torch.special.gammaincc``, the chi² survival function; ``stat`` may be a rounding-level
  negative number, where scipy's ``chi2.sf`` is 1 too), ``p = 1`` where ``dof == 0``.
- ``stein_hessian_diag``: X centred (translation invariant; it only reduces the cancellation
  of the expanded squared distances in float32), bandwidth ``s`` = median of
  ``torch.pdist`` (pairs a < b, the mean of the two middle values for an even count, as
  ``np.median``), ``D2 = max(|x_a|^2 + |x_b|^2 - 2 x_a.x_b, 0)``,
  ``K = exp(-D2 / (2 s^2)) / s``, the three products ``k = K 1``, ``K X``, ``K X^2`` give
  ``gK`` and ``g2K`` (reference docstring; no n x n x d tensor), then ``cholesky_ex`` of
  ``K + eta I`` and ``cholesky_solve`` (one factorisation and one solve with the stacked
  right-hand sides [gK, g2K] when ``eta_G == eta_H``); ``H = -G^2 + F``. Peak memory
  O(n^2 + n d) (K, its factor, the pdist vector of n(n-1)/2). Input dtype throughout.

Host reads (documented; nothing else synchronises):

- Discrete ops: ONE device-to-host read per call (:func:`_reads`) of an int64 vector holding
  the per-column min and max of X (2 d, for the range check of ``V.discrete_data``), ``cards``
  when it is a tensor (d), ``candidates`` / ``cond`` when they are tensors, and the weight statistics
  ``(all finite, min, sum)`` (3 float64 bit-cast to int64) when ``weights`` is given. Inputs
  on different devices or of unexpected kinds fall back to one read per item (the validator
  then raises its message).
- ``stein_hessian_diag``: two reads: the finiteness flag of X (validation), and after the
  computation one read of ``(s, Cholesky info of eta_G, of eta_H)`` (bandwidth and
  factorisation errors are raised from it, in the reference's order).
"""

from __future__ import annotations

import math
import numbers

import numpy as np
import torch

from backends.torch import native as _native
from refimpl import _validate as V

__all__ = [
    "discrete_score_plugin", "gsm_marginal_loss", "leaf_statistic", "ci_test_batch",
    "stein_hessian_diag",
]

_CODE_LIMIT = 1 << 62        # mixed-radix codes while prod(cards) < this (as the reference)
_CHUNK_ELEMS = 1 << 24       # elements of one CI table chunk / (n, chunk) cell index
_SCORE_KINDS = ("marginal", "concrete")
_INT_DTYPES = frozenset(getattr(torch, n) for n in
                        ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64")
                        if hasattr(torch, n))


# --------------------------------------------------------------------------- host reads


def _foreign(**arrays) -> None:
    """Refuse array objects of another kind (NumPy, CuPy, ...) among host-value arguments
    (``cards``, ``candidates``); Python ints and sequences pass."""
    _native(**{k: v for k, v in arrays.items()
               if not isinstance(v, (torch.Tensor, list, tuple, numbers.Integral, np.generic))
               and (hasattr(v, "shape") or hasattr(v, "__array__"))})


def _int_tensor(x) -> bool:
    return isinstance(x, torch.Tensor) and x.dtype in _INT_DTYPES


class _Reads:
    """The host values of one call: ``cards`` / ``candidates`` (NumPy, or the original
    Python value), ``colrange`` and ``wstats`` callables for the validators."""

    def __init__(self, X, cards, candidates=None, weights=None, cond=None):
        self.Xl = None
        parts, names = [], []
        dev = X.device if isinstance(X, torch.Tensor) else None
        if (_int_tensor(X) and X.ndim == 2 and X.shape[0] >= 1 and X.shape[1] >= 1):
            self.Xl = X.to(torch.int64)
            parts += [self.Xl.amin(0), self.Xl.amax(0)]
            names += ["min", "max"]
        if _int_tensor(cards) and cards.device == dev:
            parts.append(cards.reshape(-1).to(torch.int64))
            names.append("cards")
        if _int_tensor(candidates) and candidates.device == dev:
            parts.append(candidates.reshape(-1).to(torch.int64))
            names.append("candidates")
        if _int_tensor(cond) and cond.device == dev:
            parts.append(cond.reshape(-1).to(torch.int64))
            names.append("cond")
        if (isinstance(weights, torch.Tensor) and weights.dtype in (torch.float32, torch.float64)
                and weights.ndim == 1 and weights.numel() > 0 and weights.device == dev):
            w = weights.detach().to(torch.float64)
            st = torch.stack((torch.isfinite(w).all().to(torch.float64), w.amin(), w.sum()))
            parts.append(st.view(torch.int64))
            names.append("wstats")
        vals = {}
        if parts:
            flat = torch.cat(parts).cpu().numpy()          # the one device-to-host read
            off = 0
            for name, p in zip(names, parts):
                vals[name] = flat[off:off + p.numel()]
                off += p.numel()
        self._vals = vals
        self.cards = self._host(cards, vals.get("cards"), keep_shape=True)
        self.candidates = self._host(candidates, vals.get("candidates"), keep_shape=True)
        self.cond = self._host(cond, vals.get("cond"), keep_shape=True)
        if isinstance(self.cond, np.ndarray):
            self.cond = self.cond.tolist() if self.cond.ndim else self.cond.item()
        self._weights = weights

    @staticmethod
    def _host(v, read, keep_shape):
        if isinstance(v, torch.Tensor):
            if read is not None:
                return read.reshape(tuple(v.shape))
            return v.detach().cpu().numpy()                # unexpected kind: its own read
        return v

    def colrange(self, X):
        if "min" in self._vals:
            return self._vals["min"], self._vals["max"]
        Xl = X.to(torch.int64)                             # not reached for valid X
        return Xl.amin(0).cpu().numpy(), Xl.amax(0).cpu().numpy()

    def wstats(self, w):
        if "wstats" in self._vals and w is self._weights:
            ok, lo, tot = self._vals["wstats"].view(np.float64).tolist()
            return bool(ok), lo, tot
        w64 = w.detach().to(torch.float64)
        ok, lo, tot = torch.stack((torch.isfinite(w64).all().to(torch.float64), w64.amin(),
                                   w64.sum())).tolist()
        return bool(ok), lo, tot


def _discrete(X, cards, candidates=None, weights=None, cond=None):
    """Native checks + one host read + ``V.discrete_data``: ``(reads, n, d, cards int64)``."""
    _native(X=X)
    _foreign(cards=cards)
    r = _Reads(X, cards, candidates, weights, cond)
    n, d, c = V.discrete_data(X, r.cards, colrange=r.colrange)
    return r, n, d, c


# --------------------------------------------------------------------------- grouping


def _dense_rank(key: torch.Tensor) -> torch.Tensor:
    """``inverse`` (n,) int64: the rank of each row's key among the distinct keys (0..G-1),
    by one sort, segment starts and a cumsum (no host read; G is not needed)."""
    s, perm = torch.sort(key)
    start = torch.ones_like(s, dtype=torch.int64)
    start[1:] = (s[1:] != s[:-1]).to(torch.int64)
    inv = torch.empty_like(perm)
    inv[perm] = torch.cumsum(start, 0) - 1
    return inv


def _rank_chain(Xl: torch.Tensor, cols, cards) -> torch.Tensor:
    """Dense rank of the rows of ``X[:, cols]`` (lexicographic patterns), column by column:
    ``rank(prev * K_k + X[:, k])`` stays below n K_k (no overflow whatever prod K is)."""
    code = torch.zeros(Xl.shape[0], dtype=torch.int64, device=Xl.device)
    for k in cols:
        code = _dense_rank(code * int(cards[k]) + Xl[:, k])
    return code


def _strides(cards) -> list[int]:
    st = [1] * len(cards)
    for k in range(len(cards) - 2, -1, -1):
        st[k] = st[k + 1] * int(cards[k + 1])
    return st


def _pattern_keys(Xl: torch.Tensor, cards):
    """Yield ``(i, key_i)``: an int64 key per row equal iff the x_-i patterns are equal."""
    n, d = Xl.shape
    if math.prod(int(k) for k in cards) < _CODE_LIMIT:
        st = torch.tensor(_strides(cards), dtype=torch.int64, device=Xl.device)
        code = (Xl * st).sum(1)
        for i in range(d):
            yield i, code - Xl[:, i] * st[i]
        return
    # fallback: prefix ranks P_i (columns < i) and suffix ranks Q_i (columns > i)
    suffix = [None] * d
    q = torch.zeros(n, dtype=torch.int64, device=Xl.device)
    for i in range(d - 1, -1, -1):
        suffix[i] = q
        q = _dense_rank(q * int(cards[i]) + Xl[:, i])
    p = torch.zeros(n, dtype=torch.int64, device=Xl.device)
    for i in range(d):
        yield i, p * n + suffix[i]
        p = _dense_rank(p * int(cards[i]) + Xl[:, i])


# --------------------------------------------------------------------------- scores


def discrete_score_plugin(X, cards, alpha=1.0, kind="marginal"):
    r"""Plug-in discrete score with Dirichlet pseudo-count ``alpha`` > 0:
    ``S[r, i, y] = (N(x_-i) + alpha K_i) / (N(y, x_-i) + alpha)`` at ``x_-i = X[r, -i]``
    (``kind="concrete"``: ``S[r, i, X_ri] / S[r, i, y] - 1``). Returns (n, d, Kmax) float64
    on X's device, NaN beyond K_i. Sort-based grouping, no host read (module docstring)."""
    r, n, d, cards = _discrete(X, cards)
    alpha = V.positive_float(alpha, "alpha")
    V.choice(kind, "kind", _SCORE_KINDS)
    Xl = r.Xl
    Kmax = int(cards.max())
    S = torch.full((n, d, Kmax), float("nan"), dtype=torch.float64, device=Xl.device)
    for i, key in _pattern_keys(Xl, cards):
        K = int(cards[i])
        g = _dense_rank(key)                                       # x_-i pattern of each row
        N = torch.zeros(n * K, dtype=torch.float64, device=Xl.device)
        N.index_add_(0, g * K + Xl[:, i], torch.ones(n, dtype=torch.float64, device=Xl.device))
        N = N.view(n, K)                                           # N(y, group); tail rows 0
        p_hat = (N + alpha) / (N.sum(1, keepdim=True) + alpha * K)
        S[:, i, :K] = (1.0 / p_hat)[g]
    if kind == "concrete":
        s_obs = S.gather(2, Xl.unsqueeze(-1))                      # (n, d, 1)
        S = s_obs / S - 1.0                                        # NaN padding stays NaN
    return S


def _score_inputs(S_all, X, cards, weights=None):
    _native(S_all=S_all, X=X, weights=weights)
    r, n, d, c = _discrete(X, cards, weights=weights)
    V.score_array(S_all, n, d, int(c.max()))
    mask = (torch.arange(int(c.max()), device=S_all.device)
            < torch.as_tensor(c, device=S_all.device).unsqueeze(-1))   # (d, Kmax): y < K_i
    return r, n, d, c, mask


def gsm_marginal_loss(S_all, X, cards):
    r"""``J = mean_r sum_i [S[r, i, X_ri]^2 - 2 sum_{y < K_i} S[r, i, y]]``: a 0-d tensor of
    S_all's dtype. Entries beyond K_i are not read."""
    r, _, _, _, mask = _score_inputs(S_all, X, cards)
    Xl = r.Xl.to(S_all.device)
    s_obs = S_all.gather(2, Xl.unsqueeze(-1)).squeeze(-1)              # (n, d)
    ssum = torch.where(mask, S_all, torch.zeros((), dtype=S_all.dtype, device=S_all.device))
    return (s_obs * s_obs - 2.0 * ssum.sum(-1)).sum(1).mean()


def leaf_statistic(S_all, X, cards, criterion="invariance_sum", weights=None):
    r"""Per-node leaf statistic ``stat_j = Var_w[phi_j]`` (population variance, weights
    normalised; criteria ``"invariance_sum"`` ``phi = sum_{y<K_j} S``, ``"invariance_entropy"``
    the entropy of ``q ∝ 1/S``, ``"var_score"`` ``phi = S[r, j, X_rj]``). Returns (d,) in
    S_all's dtype; leaf = argmin."""
    _native(S_all=S_all, X=X, weights=weights)
    r, n, d, c = _discrete(X, cards, weights=weights)
    V.score_array(S_all, n, d, int(c.max()))
    V.leaf_criterion(criterion)
    V.row_weights(weights, n, S_all, stats=r.wstats)
    dev, dt = S_all.device, S_all.dtype
    mask = torch.arange(int(c.max()), device=dev) < torch.as_tensor(c, device=dev).unsqueeze(-1)
    zero = torch.zeros((), dtype=dt, device=dev)
    if criterion == "invariance_sum":
        phi = torch.where(mask, S_all, zero).sum(-1)
    elif criterion == "invariance_entropy":
        q = torch.where(mask, 1.0 / S_all, zero)
        q = q / q.sum(-1, keepdim=True)
        phi = -torch.where(mask, q * torch.log(q), zero).sum(-1)
    else:                                                              # "var_score"
        phi = S_all.gather(2, r.Xl.to(dev).unsqueeze(-1)).squeeze(-1)
    if weights is None:
        w = torch.full((n, 1), 1.0 / n, dtype=dt, device=dev)
    else:
        w = (weights / weights.sum()).unsqueeze(-1)
    m = (w * phi).sum(0)
    return (w * (phi - m) ** 2).sum(0)


# --------------------------------------------------------------------------- CI tests


def _stratum_code(Xl, cards, cond) -> tuple[torch.Tensor, int]:
    n_strata = math.prod(int(cards[k]) for k in cond)
    if n_strata < _CODE_LIMIT:
        z = torch.zeros(Xl.shape[0], dtype=torch.int64, device=Xl.device)
        for k in cond:
            z = z * int(cards[k]) + Xl[:, k]
        return z, n_strata
    return _rank_chain(Xl, cond, cards), n_strata


def _stirling_rest(a: torch.Tensor) -> torch.Tensor:
    """``lgamma(a + 1) - (a ln a - a)`` by Stirling's series (a >= 20: truncation < 1e-19)."""
    r = 1.0 / a
    r2 = r * r
    return (0.5 * torch.log(2.0 * math.pi * a)
            + r * (1.0 / 12 - r2 * (1.0 / 360 - r2 * (1.0 / 1260 - r2 / 1680))))


def _gammaincc_central(a: torch.Tensor, x: torch.Tensor, a_max: float) -> torch.Tensor:
    """``Q(a, x)`` for ``a > 20``, ``|x - a| < min(0.3 a, 5 sqrt a)`` (where
    ``torch.special.gammaincc`` takes its asymptotic branch, measured up to 4e-10 off scipy):
    ``Q = 1 - P``, ``P = exp(a log1pmx(t) - rest(a)) * sum_{k>=0} prod_{j<=k} x / (a + j)``
    with ``t = (x - a) / a`` (the series of DLMF 8.7.1 with the prefactor
    ``x^a e^-x / Gamma(a + 1)`` written without cancellation). The terms peak at
    ``exp((x - a)^2 / 2a) <= e^12.5`` and fall below 1e-22 of the sum after
    ``17 sqrt(a) + 64`` terms; ``a_max`` (host bound on a) fixes that count, the products
    are a ``cumprod`` over column chunks (no host read). Absolute error ~1e-14."""
    M = int(17.0 * math.sqrt(a_max)) + 64
    step = max(64, _CHUNK_ELEMS // max(1, a.numel()))
    total = torch.ones_like(x)
    carry = torch.ones_like(x)
    for j0 in range(1, M + 1, step):
        j = torch.arange(j0, min(j0 + step, M + 1), dtype=x.dtype, device=x.device)
        terms = torch.cumprod(x.unsqueeze(-1) / (a.unsqueeze(-1) + j), -1) * carry.unsqueeze(-1)
        total = total + terms.sum(-1)
        carry = terms[..., -1]
    t = (x - a) / a
    P = torch.exp(a * (torch.log1p(t) - t) - _stirling_rest(a)) * total
    return 1.0 - P


def _chi2_sf(stat: torch.Tensor, dof: torch.Tensor, dof_max: int) -> torch.Tensor:
    """``chi2.sf(stat, dof)`` = ``Q(dof/2, stat/2)`` as scipy (1e-13 here); 1 where
    ``dof == 0`` (and ``stat <= 0``). ``torch.special.gammaincc`` (cephes' igamc, as scipy)
    except in its asymptotic regime, replaced by :func:`_gammaincc_central`; ``dof_max`` is
    a host bound on the dofs."""
    a = (dof.to(torch.float64) * 0.5).clamp_min(0.5)                  # dof == 0 masked below
    x = stat.clamp_min(0.0) * 0.5
    p = torch.special.gammaincc(a, x)
    if dof_max > 40:
        central = (a > 20) & ((x - a).abs() < torch.minimum(0.3 * a, 5.0 * torch.sqrt(a)))
        ac = torch.where(central, a, 30.0)                           # harmless dummy values
        xc = torch.where(central, x, 30.0)
        p = torch.where(central, _gammaincc_central(ac, xc, 0.5 * dof_max), p)
    return torch.where(dof == 0, torch.ones_like(p), p)


def ci_test_batch(X, cards, i, candidates, cond=(), test="g2", df="adjusted"):
    r"""Test ``X_i ⊥ X_c | X_cond`` for every ``c`` in ``candidates`` by G² (``"g2"``) or
    Pearson's chi² (``"chi2"``); ``df="adjusted"`` (non-empty margins per non-empty stratum)
    or ``"full"`` (``(K_i - 1)(K_c - 1) prod K_Z``). Returns ``(stat (k,) float64, dof (k,)
    int64, pvalue (k,) float64)`` on X's device; ``dof == 0`` gives ``p = 1``. One
    ``index_add_`` per chunk of candidates (module docstring)."""
    _native(X=X)
    _foreign(candidates=candidates, cond=cond)
    r, n, d, cards = _discrete(X, cards, candidates=candidates, cond=cond)
    i, cand, cond = V.ci_args(d, i, r.candidates, r.cond, test, df, n)
    Xl = r.Xl
    dev = Xl.device
    k = int(cand.size)
    f64 = torch.float64
    if k == 0:
        return (torch.zeros(0, dtype=f64, device=dev), torch.zeros(0, dtype=torch.int64, device=dev),
                torch.ones(0, dtype=f64, device=dev))
    z, n_strata = _stratum_code(Xl, cards, cond)
    zinv = _dense_rank(z) if cond else z
    nzb = min(n, n_strata)                                     # bound on the observed strata
    kx = int(cards[i])
    ky = int(cards[cand].max())
    zx = zinv * kx + Xl[:, i]                                  # (n,)
    cell = nzb * kx * ky
    step = max(1, min(_CHUNK_ELEMS // cell, _CHUNK_ELEMS // n))
    cand_t = torch.as_tensor(cand, device=dev)
    stats, dofs = [], []
    for t0 in range(0, k, step):
        cc = cand_t[t0:t0 + step]
        m = int(cc.numel())
        idx = (zx * ky).unsqueeze(1) + Xl[:, cc] + torch.arange(m, device=dev) * cell  # (n, m)
        N = torch.zeros(m * cell, dtype=f64, device=dev)
        N.index_add_(0, idx.reshape(-1), torch.ones(n * m, dtype=f64, device=dev))
        N = N.view(m, nzb, kx, ky)
        Nxz = N.sum(3, keepdim=True)                           # (m, nzb, kx, 1)
        Nyz = N.sum(2, keepdim=True)                           # (m, nzb, 1, ky)
        Nz = Nxz.sum(2, keepdim=True)                          # (m, nzb, 1, 1)
        zero = torch.zeros((), dtype=f64, device=dev)
        if test == "g2":
            pos = N > 0
            ratio = torch.where(pos, N * Nz / (Nxz * Nyz), torch.ones((), dtype=f64, device=dev))
            st = 2.0 * torch.where(pos, N * torch.log(ratio), zero).sum((1, 2, 3))
        else:
            E = Nxz * Nyz / Nz.clamp_min(1.0)
            pos = E > 0
            diff = torch.where(pos, (N - E) ** 2 / torch.where(pos, E, 1.0), zero)
            st = diff.sum((1, 2, 3))
        stats.append(st)
        if df == "adjusted":
            rz = (Nxz > 0).sum((2, 3))                         # (m, nzb)
            cz = (Nyz > 0).sum((2, 3))
            dofs.append(torch.where(Nz[:, :, 0, 0] > 0, (rz - 1) * (cz - 1), 0).sum(1))
    stat = torch.cat(stats)
    full = [V.full_dof(kx, int(cards[c]), n_strata) if df == "full" else 0 for c in cand.tolist()]
    if df == "adjusted":
        dof = torch.cat(dofs).to(torch.int64)
        dof_max = nzb * (kx - 1) * (ky - 1)                    # host bound on the adjusted dof
    else:
        dof = torch.tensor(full, dtype=torch.int64, device=dev)
        dof_max = max(full)
    return stat, dof, _chi2_sf(stat, dof, dof_max)


# --------------------------------------------------------------------------- SCORE


def _median(v: torch.Tensor) -> torch.Tensor:
    """``np.median`` of a 1-D tensor (the mean of the two middle values for an even count)."""
    s = torch.sort(v).values
    m = s.numel()
    if m % 2:
        return s[m // 2]
    return 0.5 * (s[m // 2 - 1] + s[m // 2])


def stein_hessian_diag(X, eta_G=1e-3, eta_H=1e-3):
    r"""SCORE's Stein estimate of the diagonal of the Hessian of ``log p`` at the samples:
    float (n, d) -> (n, d) in X's dtype. Median-distance bandwidth (pairs a < b), Gaussian
    kernel ``K = exp(-D2 / (2 s^2)) / s``, ``G = (K + eta_G I)^-1 gK``,
    ``H = -G^2 + (K + eta_H I)^-1 g2K`` by Cholesky; never forms the n x n x d difference
    tensor (module docstring)."""
    _native(X=X)

    def finite(x):
        return bool(torch.isfinite(x).all())                   # host read 1 (validation)

    n, d, eta_G, eta_H = V.stein_args(X, eta_G, eta_H, finite)
    dt, dev = X.dtype, X.device
    Xc = X.detach() - X.detach().mean(0)
    s = _median(torch.pdist(Xc))
    sq = (Xc * Xc).sum(1)
    D2 = (sq[:, None] + sq[None, :] - 2.0 * (Xc @ Xc.T)).clamp_min_(0.0)
    s2 = s * s
    K = torch.exp(D2 / (-2.0 * s2)) / s
    del D2
    k = K.sum(1, keepdim=True)
    KX = K @ Xc
    KX2 = K @ (Xc * Xc)
    gK = -(Xc * k - KX) / s2
    g2K = -k / s2 + (Xc * Xc * k - 2.0 * Xc * KX + KX2) / (s2 * s2)
    eye = torch.eye(n, dtype=dt, device=dev)
    LG, infoG = torch.linalg.cholesky_ex(K + eta_G * eye)
    if eta_H == eta_G:
        sol = torch.cholesky_solve(torch.cat((gK, g2K), 1), LG)
        G, F = sol[:, :d], sol[:, d:]
        infoH = infoG
    else:
        G = torch.cholesky_solve(gK, LG)
        del LG
        LH, infoH = torch.linalg.cholesky_ex(K + eta_H * eye)
        F = torch.cholesky_solve(g2K, LH)
    flags = torch.stack((s.to(torch.float64), infoG.to(torch.float64),
                         infoH.to(torch.float64))).tolist()   # host read 2
    V.stein_bandwidth(flags[0])
    if flags[1] != 0:
        raise V.stein_not_positive_definite("eta_G", eta_G)
    if flags[2] != 0:
        raise V.stein_not_positive_definite("eta_H", eta_H)
    return -G * G + F
