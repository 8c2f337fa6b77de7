r"""Inf-SSM observability-subspace distances with Numba-CUDA kernels (``inf_ssm.md`` secs. 2-4, 6).

Same functions, signatures and results as :mod:`refimpl.inf_ssm` for the registry ops
(``stein_gram_diag``, ``stein_cross_gram_diag``, ``infssm_distance``, ``infssm_distance_grad``,
``mamba_ac_from_scan``, ``infssm_reg_loss``, ``infssm_reg_loss_grad``); see the package
docstring for array kinds and the stream. float32 or float64, one dtype per call: every kernel
**computes and accumulates in the input dtype** (float32 sums of n1 n2 terms in float32) and
results have it; scalar results are 0-d device arrays. Leading dims are a batch of independent
systems, viewed as one flat batch without a copy (:func:`._kernels.flatten_batch`).

Kernels (``iss_*``): they live in :mod:`._kernels` with the backend's other kernels (built
per dtype by ``_kernels._build``, one signature per dtype in ``_kernels._SIGNATURES``, compiled
lazily on first use, launched by :func:`._kernels.launch`; ``_kernels.specs()`` is what the
backend's PTX test compiles for cc 9.0); this module is their host glue. What each does:

- ``iss_code`` — the fused code distance (``variant="code"``): **one thread per system**,
  grid-stride over the flattened systems (1.2 M systems in one launch, grid capped at
  :data:`MAX_BLOCKS`), one O(n2) loop for ``V`` (caching ``v_j``), then the double loop over
  (i, j) accumulating ``p_i = sum_j v_j rho_ij^2`` in registers, ``U`` and
  ``P = sum_i u_i p_i``; ``d = P / (U V)`` (the cancellation-free form below). Memory O(m): it
  reads a, c, b, e once and writes d; no (m, n, n) or (m, 2n, 2n) array.
- ``iss_code_grad`` — forward + backward in one kernel, recomputing ``D_ij = 1 - a_i b_j``
  (never stored): pass 1 over (i, j) gives ``U``, ``V``, ``P`` (so ``d``) and the per-i row
  sums ``p_i`` and ``t_i = sum_j e_j^2 (a_i - b_j) / D_ij^3`` (parked in the dc/da outputs);
  once d is known an O(n1) sweep forms ``sum_j v_j r_ij = p_i - d V`` and da, dc; pass 2 over
  (j, i) gives ``q_j = sum_i u_i rho_ij^2``, ``sum_i c_i^2 (a_i - b_j) / D_ij^3`` and db, de
  (``sum_i u_i r_ij = q_j - d U``). ``u_i``, ``v_j`` are cached in per-thread local arrays
  for i, j < :data:`._kernels.ISS_NCACHE` (recomputed beyond, so n is not limited). Every
  gradient of system s is multiplied by ``scale[s // rows_per]`` (1 for
  :func:`infssm_distance_grad`; ``lam/(S m)`` or 0 per scan for the regulariser, which also
  skips pass 2 with ``want_b = 0``; a 0 scale writes exact zeros).

  **The cancellation-free form** (the torch backend's, :mod:`backends.torch.inf_ssm`). The
  spec's ``d = 1 - N / (S1 S2)`` (``N = sum_ij c_i^2 e_j^2 / D_ij^2``,
  ``S1 = sum_i c_i^2 / (1 - a_i^2)``, ``S2`` likewise) cancels in float32: in the code regime
  d ~ 0.03, so ``1 - N/(S1 S2)`` loses ~5 bits, and its gradient (spec sec. 2) is a difference
  of O(1) terms; the registry's ``S4_m256_n16_infssm_shortcut`` case (``lam = 2.5e5``) failed
  the float32 tolerance with it. By the exact identity
  ``(1 - a^2)(1 - b^2) = (1 - ab)^2 - (a - b)^2``, ``S1 S2 - N = sum_ij w_ij rho_ij^2``, so::

      d = sum_ij w_ij rho_ij^2 / W,  w_ij = u_i v_j,  u_i = c_i^2 / (1 - a_i^2),
      v_j = e_j^2 / (1 - b_j^2),     W = S1 S2 = U V = (sum_i u_i)(sum_j v_j),
      rho_ij = (a_i - b_j) / D_ij,   r_ij = rho_ij^2 - d
      dd/dc_i = 2 c_i / ((1 - a_i^2) W) sum_j v_j r_ij
      dd/da_i = 2 u_i / W [ a_i / (1 - a_i^2) sum_j v_j r_ij + sum_j e_j^2 (a_i - b_j) / D_ij^3 ]
      dd/de_j = 2 e_j / ((1 - b_j^2) W) sum_i u_i r_ij
      dd/db_j = 2 v_j / W [ b_j / (1 - b_j^2) sum_i u_i r_ij - sum_i c_i^2 (a_i - b_j) / D_ij^3 ]

  In exact arithmetic the value and the gradient equal the spec's form exactly (the same
  function, rewritten); d is a weighted mean of squares (every term >= 0, no cancellation)
  and the gradient's bracket sums are O(d) rather than differences of O(1) terms. Float64
  results agree with the reference to ~1e-15; float32 now meets the registry tolerance
  (tests: on the registry case reduced to 8 rows per scan with ``lam = 2.5e5`` the dc error
  drops from 1.4e-3, 3.8x the tolerance, to 7e-5). All arithmetic stays in the input dtype.
- ``iss_principled`` — ``variant="projection"|"martin"``: one thread per system, Grams built
  in three ``cuda.local.array((NMAX, NMAX))`` buffers, in-place Cholesky of ``G11 + eps I`` and
  ``G22 + eps I``, ``M = L1^-1 G12 L2^-T`` by forward substitutions (in place), projection
  ``k - ||M||_F^2``; martin ``-log det(M M^T)`` (``M^T M`` when n1 > n2) by a third Cholesky
  (a failed one gives +inf, an angle of 90 degrees, as the reference). **Backend limit:**
  ``n1, n2 <= NMAX = 16`` (the local arrays have a compile-time size); larger n raises
  ValueError. A failed G11/G22 Cholesky records ``2 s + (0 for G11, 1 for G22)`` by
  ``atomic.min`` so the first failing system is known, and the reference's ValueError is
  raised after the launch.
- ``iss_gram`` — ``stein_gram_diag``/``stein_cross_gram_diag``: one thread per (system, i, j),
  ``(C1^T C2)_ij / (1 - a_i b_j)`` with a loop over the p outputs (a vector C is p = 1).
- ``iss_mamba`` — ``mamba_ac_from_scan``: one thread per (b, l, j) looping over the D channels:
  ``exp(softplus(delta[b,d,l] [+ bias_d]) * -exp(A_log[d,j]))`` summed for "mean" (no
  (B, D, L, n) intermediate) or written per d for "none"; the same thread writes
  ``c[b L + l, j] = C[b, j, l]``; squash ``tanh(x/2)`` of both.
- regulariser: ``iss_copy`` stacks the S scans into one (S m, n) batch per array (one launch
  per scan and array, device to device); ``iss_scan_stats`` (one block per scan) gives
  ``sum (new - old)^2`` and the count of entries that are not allclose
  (``|new - old| <= 1e-8 + 1e-5 |old|``) for a and c; ONE ``iss_code`` / ``iss_code_grad``
  launch covers every scan; ``iss_scan_sum`` the per-scan row sums of d; ``iss_reg_scale`` the
  per-scan gradient factors (0 for a shortcut scan); ``iss_reg_loss`` (one thread)
  ``lam * sum_s where(allclose_s, 0, L_s) / S``; ``iss_mse_grad`` the "mse" gradients. The
  allclose flags never leave the device (no host sync per scan).
- ``iss_stats`` — the value checks of the shared validators: per array ``(any non-finite,
  max |x| over finite entries)`` by a grid-stride block reduction and ``atomic.max``.

Host reads (each documented, none O(data)):

1. validation: the shared validators (:mod:`refimpl._validate`) need ``(all finite, max |x|)``
   of every input; on the validator's first request :class:`_Stats` launches ``iss_stats`` for
   **all** float inputs of the call of that dtype into one (k, 2) array and reads it once
   (16 k bytes: one read per call, for a reg-loss call with 48 scans too). A second read only
   happens on an error path (an input of another dtype, which is then refused).
2. ``variant="projection"|"martin"``: one 8-byte read of the Cholesky failure code after the
   launch (the reference raises ValueError there; a backend cannot raise from a kernel).

Nothing else is read: the code distance, its gradient, the Grams, the Mamba extraction and the
regulariser (allclose shortcut included) run without a host sync.
"""

from __future__ import annotations

import numpy as np

from refimpl import _validate as V

from . import _kernels as K
from ._kernels import ISS_NMAX as NMAX
from ._kernels import ISS_RED as RED

__all__ = [
    "stein_gram_diag", "stein_cross_gram_diag", "infssm_distance", "infssm_distance_grad",
    "mamba_ac_from_scan", "infssm_reg_loss", "infssm_reg_loss_grad",
]

SYS_BLOCK = 128           # threads per block of the one-thread-per-item kernels
MAX_BLOCKS = 65535        # grid cap of the grid-stride kernels (tests lower it)

_VARIANT = {"projection": 0, "martin": 1}
_NO_FAIL = np.iinfo(np.int64).max


# --------------------------------------------------------------------------- launch geometry


def _geometry(total: int, cap: int = SYS_BLOCK):
    """``(grid, block)`` of a grid-stride kernel over ``total`` items."""
    nt = K.threads(total, cap)
    return (max(1, min(-(-int(total) // nt), int(MAX_BLOCKS))),), (nt,)


def _red_threads(work: int) -> int:
    """Threads of a block reduction: a power of 2, at most :data:`RED`."""
    return K.pow2_floor(K.threads(work, RED))


# --------------------------------------------------------------------------- host helpers


class _Stats:
    """The validators' ``stats`` hook: ``(all finite, max |x|)`` from ``iss_stats``.

    On the first request it computes the numbers of every registered float input of the
    requested array's dtype into one (k, 2) device array and reads that array once."""

    def __init__(self, arrays):
        self.arrays = [K.unmeta(x) for x in arrays if x is not None]
        self.cache: dict[int, tuple[bool, float]] = {}

    def __call__(self, x):
        x = K.unmeta(x)
        key = id(x)
        if key not in self.cache:
            dt = V.dtype_name(x)
            batch = [x] + [y for y in self.arrays if y is not x and id(y) not in self.cache
                           and self._eligible(y, dt)]
            self._compute(batch, dt)
        return self.cache[key]

    @staticmethod
    def _eligible(y, dt) -> bool:
        try:
            return (K.is_native(y) and V.dtype_name(y) == dt
                    and int(np.prod(tuple(int(s) for s in y.shape))) > 0)
        except (AttributeError, TypeError, ValueError):   # not an array: the validator says so
            return False

    def _compute(self, batch, dt) -> None:
        out = K.zeros((len(batch), 2), dt)
        for k, y in enumerate(batch):
            dev = K.device(y)
            shape = tuple(int(s) for s in dev.shape)
            X2 = dev.reshape((1, 1)) if len(shape) == 0 else K.flatten_batch(dev, 1)
            total = int(np.prod(shape))
            nt = _red_threads(total)
            grid = max(1, min(-(-total // nt), 1024))
            K.launch("iss_stats", dt, (grid,), (nt,), 0, X2, out[k])
        host = out.copy_to_host()                      # THE one read of the validation
        for k, y in enumerate(batch):
            self.cache[id(y)] = (bool(host[k, 0] == 0), float(host[k, 1]))


def _flat(x, core: int):
    return K.flatten_batch(K.device(x), core)


def _mid1(x2):
    """A (S, 1, n) view of a (S, n) device array (vector C as one output)."""
    S, n = (int(s) for s in x2.shape)
    if K.simulator():
        return x2[:, None, :]
    st0, st1 = (int(s) for s in x2.strides)
    return K._view(x2, (S, 1, n), (st0, st0, st1))


_ONES: dict = {}


def _ones(dt: str):
    """A cached (1,) device array holding 1 (the gradient scale of a plain distance call)."""
    if dt not in _ONES:
        arr = K.empty((1,), dt)
        K.fill(arr, 1.0)
        _ONES[dt] = arr
    return _ONES[dt]


def _count(shape) -> int:
    return int(np.prod(tuple(int(s) for s in shape)))


# --------------------------------------------------------------------------- Grams


def _cross_gram(a, C1, b, C2, like):
    dt = V.dtype_name(a)
    A = _flat(a, 1)
    Bv = _flat(b, 1)
    S, n1 = (int(s) for s in A.shape)
    n2 = int(Bv.shape[1])
    if len(C1.shape) == len(a.shape):               # vectors: one output
        C1v, C2v = _mid1(_flat(C1, 1)), _mid1(_flat(C2, 1))
    else:
        C1v, C2v = _flat(C1, 2), _flat(C2, 2)
    G = K.empty((S, n1, n2), dt)
    total = S * n1 * n2
    if total:
        grid, block = _geometry(total)
        K.launch("iss_gram", dt, grid, block, 0, A, C1v, Bv, C2v, G)
    lead = tuple(int(s) for s in a.shape[:-1])
    return K.wrap(G.reshape(lead + (n1, n2)), like)


def stein_gram_diag(a, C):
    r"""Observability Gram of ``(diag(a), C)``: ``G[..., i, j] = (C^T C)_ij / (1 - a_i a_j)``;
    ``C`` (..., n) (one output) or (..., p, n). One thread per (system, i, j)."""
    K.native(a=a, C=C)
    V.diag_system(K.meta(a), K.meta(C), ("a", "C"), True, stats=_Stats([a, C]))
    return _cross_gram(a, C, a, C, a)


def stein_cross_gram_diag(a, C1, b, C2):
    r"""Cross-Gram ``G12[..., i, j] = (C1^T C2)_ij / (1 - a_i b_j)`` of two diagonal systems;
    one thread per (system, i, j)."""
    K.native(a=a, C1=C1, b=b, C2=C2)
    V.cross_gram_args(*(K.meta(x) for x in (a, C1, b, C2)), stats=_Stats([a, C1, b, C2]))
    return _cross_gram(a, C1, b, C2, a)


# --------------------------------------------------------------------------- distances


def _distance_inputs(a, c, b, e, variant, eps):
    K.native(a=a, c=c, b=b, e=e)
    lead, n1, n2 = V.infssm_args(*(K.meta(x) for x in (a, c, b, e)), variant, eps,
                                 stats=_Stats([a, c, b, e]))
    return lead, n1, n2, V.dtype_name(a), tuple(_flat(x, 1) for x in (a, c, b, e))


def _principled_error(code: int, eps: float) -> ValueError:
    """The reference's ValueError for a failed Cholesky (``refimpl.inf_ssm._cholesky``)."""
    name = "G11" if code % 2 == 0 else "G22"
    return V.gram_not_positive_definite(name, eps)


def infssm_distance(a, c, b, e, variant="code", eps=0.0):
    r"""Distance between the observability subspaces of ``(diag(a), c)`` and ``(diag(b), e)``,
    (..., n1), (..., n2) -> (...,). "code" (default): the fused one-thread-per-system kernel
    ``iss_code`` (``eps`` unused); "projection"/"martin": ``iss_principled`` (per-thread
    Cholesky, this backend's limit n1, n2 <= 16; one 8-byte host read of the failure code, a
    failed G11/G22 Cholesky raises the reference's ValueError)."""
    lead, n1, n2, dt, (A, C, Bv, E) = _distance_inputs(a, c, b, e, variant, eps)
    if variant != "code" and max(n1, n2) > NMAX:
        raise ValueError(f"infssm_distance(variant={variant!r}) on the numba_cuda backend supports "
                         f"n1, n2 <= {NMAX} (per-thread Cholesky in local arrays of a "
                         f"compile-time size), got n1 = {n1}, n2 = {n2}; use variant='code' or "
                         f"the reference")
    M = _count(lead)
    d = K.empty((M,), dt)
    if M:
        grid, block = _geometry(M)
        if variant == "code":
            K.launch("iss_code", dt, grid, block, 0, A, C, Bv, E, d)
        else:
            fail = K.upload(np.array([_NO_FAIL], dtype=np.int64))
            K.launch("iss_principled", dt, grid, block, 0, A, C, Bv, E, d, fail,
                     K.scalar(dt, float(eps)), _VARIANT[variant])
            code = int(fail.copy_to_host()[0])           # THE one read (8 bytes)
            if code != _NO_FAIL:
                raise _principled_error(code, float(eps))
    return K.wrap(d.reshape(lead), a)


def infssm_distance_grad(a, c, b, e):
    r"""``(d, da, dc, db, de)`` of the code distance: ``iss_code_grad``, one thread per system,
    forward and backward fused, ``D_ij`` recomputed (the cancellation-free form of the
    module docstring: the spec sec. 2 gradient rewritten)."""
    lead, n1, n2, dt, (A, C, Bv, E) = _distance_inputs(a, c, b, e, "code", 0.0)
    M = _count(lead)
    d = K.empty((M,), dt)
    da, dc = K.empty((M, n1), dt), K.empty((M, n1), dt)
    db, de = K.empty((M, n2), dt), K.empty((M, n2), dt)
    if M:
        grid, block = _geometry(M)
        K.launch("iss_code_grad", dt, grid, block, 0, A, C, Bv, E, d, da, dc, db, de, _ones(dt),
                 M, 1)
    return (K.wrap(d.reshape(lead), a), K.wrap(da.reshape(lead + (n1,)), a),
            K.wrap(dc.reshape(lead + (n1,)), a), K.wrap(db.reshape(lead + (n2,)), a),
            K.wrap(de.reshape(lead + (n2,)), a))


# --------------------------------------------------------------------------- Mamba extraction


def mamba_ac_from_scan(delta_raw, A_log, C, dt_bias=None, channel_reduce="mean", squash=True):
    r"""Per-token diagonal systems ``(a, c)`` of one Mamba scan: ``iss_mamba``, one thread per
    (b, l, j) looping over the D channels (no (B, D, L, n) intermediate). "mean": ``a``
    (B L, n); "none": ``a`` (B L, D, n); ``c`` (B L, n); ``squash``: ``tanh(x / 2)``."""
    K.native(delta_raw=delta_raw, A_log=A_log, C=C, dt_bias=dt_bias)
    B, D, L, n = V.mamba_scan_args(K.meta(delta_raw), K.meta(A_log), K.meta(C),
                                   None if dt_bias is None else K.meta(dt_bias), channel_reduce,
                                   squash, stats=_Stats([delta_raw, A_log, C, dt_bias]))
    dt = V.dtype_name(delta_raw)
    none_mode = channel_reduce == "none"
    a_out = K.empty((B * L, D if none_mode else 1, n), dt)
    c_out = K.empty((B * L, n), dt)
    total = B * L * n
    if total:
        bias = K.dummy(1, dt) if dt_bias is None else K.device(dt_bias)
        grid, block = _geometry(total)
        K.launch("iss_mamba", dt, grid, block, 0, K.device(delta_raw), K.device(A_log),
                 K.device(C), bias, a_out, c_out, int(dt_bias is not None), int(none_mode),
                 int(bool(squash)))
    a_res = a_out if none_mode else a_out.reshape((B * L, n))
    return K.wrap(a_res, delta_raw), K.wrap(c_out, delta_raw)


# --------------------------------------------------------------------------- regulariser


def _reg_prepare(new_pairs, old_pairs, lam, mode):
    """Native check, validation (one stats read), and the stacked (S m, n) device batches."""
    arrays, named = [], {}
    meta_pairs = []
    for name, pairs in (("new_pairs", new_pairs), ("old_pairs", old_pairs)):
        if not isinstance(pairs, (list, tuple)):
            meta_pairs.append(pairs)
            continue
        conv = []
        for s, p in enumerate(pairs):
            if isinstance(p, (list, tuple)) and len(p) == 2:
                named[f"{name}[{s}] a"], named[f"{name}[{s}] c"] = p
                arrays += list(p)
                conv.append((K.meta(p[0]), K.meta(p[1])))
            else:
                conv.append(p)
        meta_pairs.append(type(pairs)(conv) if isinstance(pairs, tuple) else conv)
    K.native(**named)
    S = V.reg_loss_args(meta_pairs[0], meta_pairs[1], lam, mode, stats=_Stats(arrays))
    dt = V.dtype_name(new_pairs[0][0])
    m, n = (int(x) for x in new_pairs[0][0].shape)
    stacks = []
    for pairs in (new_pairs, old_pairs):
        for k in (0, 1):
            st = K.empty((S * m, n), dt)
            if m * n:
                grid, block = _geometry(m * n)
                for s, p in enumerate(pairs):
                    K.launch("iss_copy", dt, grid, block, 0, K.device(p[k]), st, s * m)
            stacks.append(st)
    return S, m, n, dt, float(lam), stacks


def _scan_stats(stacks, S, m, n, dt):
    """(S, 2) per-scan ``(sum sq. diff, not-allclose count)`` of a and of c (device)."""
    an, cn, ao, co = stacks
    sa, sc = K.empty((S, 2), dt), K.empty((S, 2), dt)
    nt = _red_threads(m * n)
    for xn, xo, out in ((an, ao, sa), (cn, co, sc)):
        K.launch("iss_scan_stats", dt, (S,), (nt,), 0, xn.reshape((S, m * n)),
                 xo.reshape((S, m * n)), out)
    return sa, sc


def _reg_forward(new_pairs, old_pairs, lam, mode, allclose_shortcut, grad):
    S, m, n, dt, lam, stacks = _reg_prepare(new_pairs, old_pairs, lam, mode)
    an, cn, ao, co = stacks
    shortcut = int(bool(allclose_shortcut))
    sa, sc = _scan_stats(stacks, S, m, n, dt)
    M = S * m
    da = dc = None
    if grad:
        da, dc = K.empty((M, n), dt), K.empty((M, n), dt)
        scale = K.empty((S,), dt)
        coef = lam / S / (m if mode == "inf_ssm" else m * n) if m else 0.0
        K.launch("iss_reg_scale", dt, (1,), (K.threads(S, 256),), 0, sa, sc, scale,
                 K.scalar(dt, coef), shortcut)
    dsum = K.dummy(1, dt)
    if mode == "inf_ssm":
        d = K.empty((M,), dt)
        if M:
            grid, block = _geometry(M)
            if grad:
                dummy2 = K.dummy(2, dt)
                K.launch("iss_code_grad", dt, grid, block, 0, an, cn, ao, co, d, da, dc, dummy2,
                         dummy2, scale, m, 0)
            else:
                K.launch("iss_code", dt, grid, block, 0, an, cn, ao, co, d)
        dsum = K.zeros((S,), dt)
        if M:
            K.launch("iss_scan_sum", dt, (S,), (_red_threads(m),), 0, d.reshape((S, m)), dsum)
        cnt = m
    else:
        if grad and M:
            grid, block = _geometry(M * n)
            K.launch("iss_mse_grad", dt, grid, block, 0, an, ao, scale, da, m)
            K.launch("iss_mse_grad", dt, grid, block, 0, cn, co, scale, dc, m)
        cnt = m * n
    loss = K.empty((1,), dt)
    K.launch("iss_reg_loss", dt, (1,), (1,), 0, sa, sc, dsum, loss, K.scalar(dt, lam),
             K.scalar(dt, cnt), K.scalar(dt, S), 0 if mode == "inf_ssm" else 1, shortcut)
    like = new_pairs[0][0]
    loss = K.wrap(loss.reshape(()), like)
    if not grad:
        return loss
    return loss, K.wrap(da.reshape((S, m, n)), like), K.wrap(dc.reshape((S, m, n)), like)


def infssm_reg_loss(new_pairs, old_pairs, lam, mode="inf_ssm", allclose_shortcut=True):
    r"""``lam * mean_s L_s`` over scans: the S scans stacked into one (S m, n) batch, ONE
    distance launch for all of them, per-scan means and the allclose shortcut on the device
    (no host sync per scan). Returns a 0-d device array."""
    return _reg_forward(new_pairs, old_pairs, lam, mode, allclose_shortcut, grad=False)


def infssm_reg_loss_grad(new_pairs, old_pairs, lam, mode="inf_ssm", allclose_shortcut=True):
    r"""``(loss, da_new, dc_new)``, gradients (S, m, n) w.r.t. the new pairs: one fused
    ``iss_code_grad`` launch over all scans ("inf_ssm", scaled by ``lam/(S m)``) or
    ``iss_mse_grad`` ("mse", ``2 lam (new - old)/(S m n)``); exact zeros for shortcut scans."""
    return _reg_forward(new_pairs, old_pairs, lam, mode, allclose_shortcut, grad=True)
