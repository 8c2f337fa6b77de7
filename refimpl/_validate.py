"""Argument checking shared by the reference and every backend.

Everything here reads only shapes, dtype names and small host-side integer/weight vectors,
so the same rules (and the same messages) apply whatever the array library. Each message
names the argument and what was expected.
"""

from __future__ import annotations

import math
import numbers
from typing import Callable, NamedTuple

import numpy as np

FLOATS = ("float32", "float64")


def dtype_name(x) -> str:
    """``'float32'`` for NumPy/CuPy/Numba arrays and torch tensors alike."""
    dt = x.dtype
    return dt.name if isinstance(dt, np.dtype) else str(dt).replace("torch.", "")


def float_array(x, name: str, ndims: tuple[int, ...] | None = None, allowed=FLOATS) -> None:
    """Check that ``x`` is a float32/float64 array with ``x.ndim`` in ``ndims``."""
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
        raise TypeError(f"{name} must be an array, got {type(x).__name__}")
    dt = dtype_name(x)
    if dt not in allowed:
        raise TypeError(f"{name} must have dtype {' or '.join(allowed)}, got {dt}")
    if ndims is not None and len(x.shape) not in ndims:
        want = " or ".join(f"{d}-D" for d in ndims)
        raise ValueError(f"{name} must be {want}, got shape {tuple(x.shape)}")


def same_dtype(name_a: str, a, name_b: str, b) -> None:
    if dtype_name(a) != dtype_name(b):
        raise TypeError(f"{name_b} must have the dtype of {name_a} ({dtype_name(a)}), "
                        f"got {dtype_name(b)}")


def positive_float(v, name: str, hint: str = "") -> float:
    """A finite Python float > 0 (``gamma``, ``eps``)."""
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise TypeError(f"{name} must be a positive real number, got {type(v).__name__}")
    v = float(v)
    if not math.isfinite(v) or v <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {v}{hint}")
    return v


def nonneg_float(v, name: str) -> float:
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise TypeError(f"{name} must be a real number >= 0, got {type(v).__name__}")
    v = float(v)
    if math.isnan(v) or v < 0:
        raise ValueError(f"{name} must be >= 0, got {v}")
    return v


def positive_int(v, name: str, minimum: int = 1) -> int:
    if isinstance(v, bool) or not isinstance(v, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(v).__name__}")
    if v < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {v}")
    return int(v)


def choice(v, name: str, options: tuple[str, ...]) -> str:
    if v not in options:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, options))}, got {v!r}")
    return v


def host_array(x, name: str) -> np.ndarray:
    """The reference's input check: NumPy arrays (or nested lists) only.

    Arrays of another backend are refused rather than copied to the host silently."""
    if isinstance(x, np.ndarray):
        return x
    mod = type(x).__module__.split(".")[0]
    if hasattr(x, "__cuda_array_interface__") or hasattr(x, "__dlpack__") or mod in ("torch", "cupy"):
        raise TypeError(f"{name} is a {type(x).__module__}.{type(x).__name__}; the numpy reference "
                        f"takes numpy.ndarray (use backends.get(...) for that array kind, or "
                        f"convert explicitly)")
    return np.asarray(x)


def native(backend: str, is_native: Callable[[object], bool], kind: str, **arrays) -> None:
    """Refuse arrays of another kind in a backend call (no silent copies between backends)."""
    for name, x in arrays.items():
        if x is not None and not is_native(x):
            raise TypeError(f"{name} is a {type(x).__module__}.{type(x).__name__}; the {backend} "
                            f"backend takes {kind} (mixed backends are refused; convert explicitly)")


# --------------------------------------------------------------------------- Soft-DTW


class SdtwShape(NamedTuple):
    batched: bool
    B: int
    N: int
    M: int


def sdtw_gamma(gamma) -> float:
    return positive_float(gamma, "gamma", hint=" (for the hard-min limit gamma -> 0 use refimpl.softdtw.dtw)")


def sdtw_bandwidth(bandwidth) -> int | None:
    if bandwidth is None:
        return None
    if isinstance(bandwidth, bool) or not isinstance(bandwidth, numbers.Integral):
        raise TypeError(f"bandwidth must be a non-negative int or None, got {type(bandwidth).__name__}")
    if bandwidth < 0:
        raise ValueError(f"bandwidth must be >= 0 or None, got {bandwidth}")
    return int(bandwidth)


def sdtw_cost_matrix(C) -> SdtwShape:
    float_array(C, "C", ndims=(2, 3))
    if len(C.shape) == 2:
        return SdtwShape(False, 1, int(C.shape[0]), int(C.shape[1]))
    return SdtwShape(True, int(C.shape[0]), int(C.shape[1]), int(C.shape[2]))


def lengths(v, name: str, shape: SdtwShape, full: int, to_numpy: Callable = np.asarray,
            allow_zero: bool = False) -> np.ndarray:
    """Per-pair lengths as a host int64 array of shape (B,), or the full length if None.

    ``to_numpy`` converts a backend-native integer array (a B-element read) to NumPy."""
    if v is None:
        return np.full(shape.B, full, dtype=np.int64)
    if not shape.batched:
        raise ValueError(f"{name} is only accepted with batched (3-D) inputs; pass None for 2-D")
    h = np.asarray(to_numpy(v))
    if h.dtype.kind not in "iu":
        raise TypeError(f"{name} must be an integer array of shape ({shape.B},), got dtype {h.dtype}")
    if h.shape != (shape.B,):
        raise ValueError(f"{name} must have shape ({shape.B},), got {h.shape}")
    low = 0 if allow_zero else 1
    if h.size and (h.min() < low or h.max() > full):
        raise ValueError(f"{name} must lie in [{low}, {full}], got values in [{h.min()}, {h.max()}]")
    return h.astype(np.int64)


def point_pair(X, Y, names: tuple[str, str] = ("X", "Y")) -> tuple[int | None, int, int, int]:
    """``(B or None, N, M, d)`` of two point sets (n,d),(m,d) or (B,N,d),(B,M,d)."""
    nx, ny = names
    float_array(X, nx, ndims=(2, 3))
    float_array(Y, ny, ndims=(2, 3))
    same_dtype(nx, X, ny, Y)
    if len(X.shape) != len(Y.shape):
        raise ValueError(f"{nx} and {ny} must have the same number of dimensions, got "
                         f"{tuple(X.shape)} and {tuple(Y.shape)}")
    if X.shape[-1] != Y.shape[-1]:
        raise ValueError(f"{nx} and {ny} must have the same feature size d (last axis), got "
                         f"{X.shape[-1]} and {Y.shape[-1]}")
    if len(X.shape) == 3 and X.shape[0] != Y.shape[0]:
        raise ValueError(f"{nx} and {ny} must have the same batch size, got {X.shape[0]} and "
                         f"{Y.shape[0]}")
    B = int(X.shape[0]) if len(X.shape) == 3 else None
    return B, int(X.shape[-2]), int(Y.shape[-2]), int(X.shape[-1])


def sdtw_points(X, Y) -> tuple[SdtwShape, int]:
    """Shapes of (X, Y) for the Soft-DTW cost functions."""
    B, N, M, d = point_pair(X, Y)
    return SdtwShape(B is not None, B or 1, N, M), d


def cost_kind(kind) -> str:
    return choice(kind, "kind", ("sqeuclidean", "cosine"))


def cotangent(G, name: str, shape: tuple[int, ...], like) -> None:
    float_array(G, name)
    same_dtype("X", like, name, G)
    if tuple(G.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)} (the cost's shape), got {tuple(G.shape)}")


def penalty(P, shape: SdtwShape, like) -> None:
    if P is None:
        return
    want = (shape.B, shape.N, shape.M) if shape.batched else (shape.N, shape.M)
    float_array(P, "penalty")
    same_dtype("X", like, "penalty", P)
    if tuple(P.shape) != want:
        raise ValueError(f"penalty must have the cross cost's shape {want}, got {tuple(P.shape)}")


class SdtwArgs(NamedTuple):
    shape: SdtwShape
    gamma: float
    len_x: np.ndarray
    len_y: np.ndarray
    bandwidth: int | None


def soft_dtw_args(C, gamma, len_x, len_y, bandwidth, to_numpy: Callable = np.asarray) -> SdtwArgs:
    """Validate the arguments of ``soft_dtw``/``soft_dtw_grad``."""
    shape = sdtw_cost_matrix(C)
    return SdtwArgs(shape, sdtw_gamma(gamma),
                    lengths(len_x, "len_x", shape, shape.N, to_numpy),
                    lengths(len_y, "len_y", shape, shape.M, to_numpy),
                    sdtw_bandwidth(bandwidth))


class DivArgs(NamedTuple):
    shape: SdtwShape
    d: int
    gamma: float
    kind: str
    len_x: np.ndarray
    len_y: np.ndarray
    bandwidth: int | None


def divergence_args(X, Y, gamma, kind, len_x, len_y, penalty_, bandwidth,
                    to_numpy: Callable = np.asarray) -> DivArgs:
    """Validate the arguments of ``soft_dtw_divergence``/``_grad`` (zero lengths allowed)."""
    shape, d = sdtw_points(X, Y)
    penalty(penalty_, shape, X)
    return DivArgs(shape, d, sdtw_gamma(gamma), cost_kind(kind),
                   lengths(len_x, "len_x", shape, shape.N, to_numpy, allow_zero=True),
                   lengths(len_y, "len_y", shape, shape.M, to_numpy, allow_zero=True),
                   sdtw_bandwidth(bandwidth))


# --------------------------------------------------------------------------- optimal transport


class OTShape(NamedTuple):
    batch: tuple[int, ...]
    n: int
    m: int


def ot_cost(C, name: str = "C") -> OTShape:
    float_array(C, name)
    if len(C.shape) < 2:
        raise ValueError(f"{name} must have shape (..., n, m), got {tuple(C.shape)}")
    return OTShape(tuple(int(s) for s in C.shape[:-2]), int(C.shape[-2]), int(C.shape[-1]))


def ot_weights(w, name: str, size: int, shape: OTShape, to_numpy: Callable = np.asarray) -> None:
    """``w`` is None (uniform) or non-negative, zero-free, summing to 1 over its last axis.

    Shapes (size,) (shared by the batch) or batch + (size,). Reads the weights once (O(size))."""
    if w is None:
        return
    float_array(w, name)
    if tuple(w.shape) not in ((size,), shape.batch + (size,)):
        want = f"({size},)" if not shape.batch else f"({size},) or {shape.batch + (size,)}"
        raise ValueError(f"{name} must have shape {want} to match the cost, got {tuple(w.shape)}")
    h = np.asarray(to_numpy(w), dtype=np.float64)
    if not np.all(np.isfinite(h)):
        raise ValueError(f"{name} contains NaN or inf")
    if np.any(h <= 0):
        raise ValueError(f"{name} must be > 0 everywhere (log 0 makes the potentials infinite); "
                         f"drop zero-mass points first")
    sums = h.sum(axis=-1)
    tol = 1e-8 if dtype_name(w) == "float64" else 1e-5
    if np.any(np.abs(sums - 1.0) > tol):
        raise ValueError(f"{name} must sum to 1 along its last axis (got sums in "
                         f"[{sums.min():.10g}, {sums.max():.10g}]); mismatched marginals")


def marginals(a, b, cost_name: str, C, shape: OTShape, to_numpy: Callable = np.asarray) -> None:
    """Both weight vectors: float arrays of the cost's dtype, shaped and summing to 1."""
    for name, w in (("a", a), ("b", b)):
        if w is not None:
            float_array(w, name)
            same_dtype(cost_name, C, name, w)
    ot_weights(a, "a", shape.n, shape, to_numpy)
    ot_weights(b, "b", shape.m, shape, to_numpy)


class SinkhornArgs(NamedTuple):
    shape: OTShape
    eps: float
    max_iter: int
    tol: float
    check_every: int


def sinkhorn_args(a, b, C, eps, max_iter, tol, check_every, init, has_nan: Callable[[object], bool],
                  to_numpy: Callable = np.asarray) -> SinkhornArgs:
    """Validate a Sinkhorn call. ``has_nan(C)`` is the backend's own NaN test (one reduction)."""
    shape = ot_cost(C)
    marginals(a, b, "C", C, shape, to_numpy)
    if has_nan(C):
        raise ValueError("C contains NaN (+inf entries are allowed: they forbid transport)")
    if init is not None:
        if not isinstance(init, (tuple, list)) or len(init) != 2:
            raise TypeError("init must be None or a pair (f0, g0) of potentials")
        for name, v, size in (("init[0]", init[0], shape.n), ("init[1]", init[1], shape.m)):
            float_array(v, name)
            if tuple(v.shape) not in ((size,), shape.batch + (size,)):
                raise ValueError(f"{name} must have shape {shape.batch + (size,)}, got {tuple(v.shape)}")
    return SinkhornArgs(shape, positive_float(eps, "eps"), positive_int(max_iter, "max_iter"),
                        nonneg_float(tol, "tol"), positive_int(check_every, "check_every"))


def emd_size(shape: OTShape) -> None:
    if shape.batch:
        raise ValueError(f"emd solves one problem: C must be 2-D, got batch dims {shape.batch}")
    if shape.n * shape.m > 2e6:
        raise ValueError(f"emd is for small problems (n*m <= 2e6, got {shape.n}x{shape.m}); use "
                         f"sinkhorn_log with a small eps instead")


def sinkhorn_divergence_args(a, b, C_xy, C_xx, C_yy, eps, max_iter, tol,
                             has_nan: Callable[[object], bool],
                             to_numpy: Callable = np.asarray) -> SinkhornArgs:
    """Validate a ``sinkhorn_divergence`` call: C_xy (..., n, m), C_xx (..., n, n), C_yy (..., m, m)."""
    shape = ot_cost(C_xy, "C_xy")
    for name, Cs, k in (("C_xx", C_xx, shape.n), ("C_yy", C_yy, shape.m)):
        float_array(Cs, name)
        same_dtype("C_xy", C_xy, name, Cs)
        want = shape.batch + (k, k)
        if tuple(Cs.shape) != want:
            raise ValueError(f"{name} must have shape {want} (C_xy's batch, {k} x {k}), "
                             f"got {tuple(Cs.shape)}")
    marginals(a, b, "C_xy", C_xy, shape, to_numpy)
    for name, Cs in (("C_xy", C_xy), ("C_xx", C_xx), ("C_yy", C_yy)):
        if has_nan(Cs):
            raise ValueError(f"{name} contains NaN (+inf entries are allowed: they forbid transport)")
    return SinkhornArgs(shape, positive_float(eps, "eps"), positive_int(max_iter, "max_iter"),
                        nonneg_float(tol, "tol"), 10)


def ot_points(x, y) -> tuple[OTShape, int]:
    """Shapes of the point clouds of ``pairwise_cost``: (n, d), (m, d) or (B, n, d), (B, m, d)."""
    B, n, m, d = point_pair(x, y, ("x", "y"))
    return OTShape(() if B is None else (B,), n, m), d


def emd_args(a, b, C, has_nonfinite: Callable[[object], bool],
             to_numpy: Callable = np.asarray) -> OTShape:
    """Validate an ``emd``/``emd_grad`` call: one 2-D problem, finite costs, valid weights."""
    shape = ot_cost(C)
    emd_size(shape)
    marginals(a, b, "C", C, shape, to_numpy)
    if has_nonfinite(C):
        raise ValueError("C must be finite for emd (NaN or inf found; forbid a pair with a large "
                         "finite cost instead)")
    return shape


# --------------------------------------------------------------------------- preference (DPO, logits-SAM)

PREF_LOSS_TYPES = ("sigmoid", "hinge", "ipo")
PREF_DELTAS = ("weight", "gram")


class PrefShape(NamedTuple):
    R: int
    T: int
    d: int
    V: int


def pref_head(H, W, labels, mask, b=None, to_numpy: Callable = np.asarray,
              paired: bool = True) -> PrefShape:
    """Validate ``H`` (R, T, d), ``W`` (V, d), ``b`` (V,) or None, integer ``labels`` (R, T) and
    ``mask`` (R, T) (bool, integer or float with values in {0, 1}); ``paired``: R even (chosen
    rows first, then rejected), else any R >= 1 (e.g. Antibody's weighted token CE).

    Reads ``labels`` and ``mask`` on the host (O(R T)) to check ``0 <= labels < V`` where
    mask = 1; masked labels may hold anything (e.g. -100)."""
    float_array(H, "H", ndims=(3,), allowed=FLOATS + ("bfloat16",))
    float_array(W, "W", ndims=(2,), allowed=FLOATS + ("bfloat16",))
    same_dtype("H", H, "W", W)
    R, T, d = (int(s) for s in H.shape)
    V = int(W.shape[0])
    if int(W.shape[1]) != d:
        raise ValueError(f"W must have shape (V, d) with d = {d} (H's last axis), got {tuple(W.shape)}")
    if paired and (R % 2 or R == 0):
        raise ValueError(f"H must have an even, non-zero number of rows R = 2B (chosen rows first, "
                         f"then rejected), got R = {R}")
    if R == 0:
        raise ValueError("H must have at least one row (an empty batch), got shape "
                         f"{tuple(H.shape)}")
    if b is not None:
        float_array(b, "b", ndims=(1,), allowed=FLOATS + ("bfloat16",))
        same_dtype("W", W, "b", b)
        if tuple(b.shape) != (V,):
            raise ValueError(f"b must have shape ({V},) (W's rows), got {tuple(b.shape)}")
    pref_labels(labels, mask, R, T, V, "H's first two axes", to_numpy)
    return PrefShape(R, T, d, V)


def pref_labels(labels, mask, R: int, T: int, V: int, axes: str, to_numpy: Callable = np.asarray,
                **more) -> np.ndarray:
    """``labels``/``mask`` (and any ``more`` arrays) of shape (R, T) (``axes`` says whose);
    integer labels in [0, V) where mask = 1. Returns the host mask (bool)."""
    for name, x in (("labels", labels), ("mask", mask), *more.items()):
        if not hasattr(x, "shape"):
            raise TypeError(f"{name} must be an array of shape ({R}, {T}), got {type(x).__name__}")
        if tuple(x.shape) != (R, T):
            raise ValueError(f"{name} must have shape ({R}, {T}) ({axes}), got {tuple(x.shape)}")
    y = np.asarray(to_numpy(labels))
    if y.dtype.kind not in "iu":
        raise TypeError(f"labels must be an integer array, got dtype {y.dtype}")
    m = pref_mask(mask, to_numpy)
    if m.any():
        ym = y[m]
        if ym.min() < 0 or ym.max() >= V:
            raise ValueError(f"labels must lie in [0, {V}) where mask = 1, got values in "
                             f"[{ym.min()}, {ym.max()}]")
    return m


def pref_mask(mask, to_numpy: Callable = np.asarray) -> np.ndarray:
    """``mask`` as a host bool array; values must be 0 or 1."""
    h = np.asarray(to_numpy(mask))
    if h.dtype == bool:
        return h
    if h.dtype.kind not in "iuf":
        raise TypeError(f"mask must be bool, integer or float, got dtype {h.dtype}")
    if not np.all((h == 0) | (h == 1)):
        raise ValueError("mask must hold only 0 and 1 (1 = completion token)")
    return h != 0


def pref_logps(logp, ref_logp, R: int | None = None) -> int:
    """Sequence log-probs ``logp`` and ``ref_logp``, both (R,) with R even; returns B = R / 2."""
    float_array(logp, "logp", ndims=(1,), allowed=FLOATS + ("bfloat16",))
    pref_ref_logp(ref_logp, int(logp.shape[0]) if R is None else R)
    n = int(logp.shape[0])
    if n % 2 or n == 0:
        raise ValueError(f"logp must have an even, non-zero length R = 2B (chosen first), got {n}")
    return n // 2


def pref_ref_logp(ref_logp, R: int) -> None:
    float_array(ref_logp, "ref_logp", ndims=(1,), allowed=FLOATS + ("bfloat16",))
    if tuple(ref_logp.shape) != (R,):
        raise ValueError(f"ref_logp must have shape ({R},) (one value per row, chosen first), got "
                         f"{tuple(ref_logp.shape)}")


def pref_loss(beta, loss_type, label_smoothing) -> tuple[float, str, float]:
    """``beta > 0``, ``loss_type`` in sigmoid/hinge/ipo, ``0 <= label_smoothing <= 1`` and
    non-zero only with ``loss_type="sigmoid"``."""
    beta = positive_float(beta, "beta")
    loss_type = choice(loss_type, "loss_type", PREF_LOSS_TYPES)
    eps = nonneg_float(label_smoothing, "label_smoothing")
    if eps > 1:
        raise ValueError(f"label_smoothing must lie in [0, 1], got {eps}")
    if eps != 0 and loss_type != "sigmoid":
        raise ValueError(f"label_smoothing applies to loss_type='sigmoid' only, got "
                         f"label_smoothing={eps} with loss_type={loss_type!r}")
    return beta, loss_type, eps


def pref_chunks(token_chunk, vocab_chunk) -> tuple[int | None, int | None]:
    return tuple(None if c is None else positive_int(c, name)
                 for name, c in (("token_chunk", token_chunk), ("vocab_chunk", vocab_chunk)))


def pref_sam(rho, norm_eps, delta, adaptive) -> tuple[float, float, str]:
    """``rho >= 0`` (required), ``norm_eps > 0``, ``delta`` in weight/gram (gram is non-adaptive)."""
    if rho is None:
        raise TypeError("rho is required (no default: the code's 0.05 is a SAM leftover; the "
                        "paper finds 1e-5..1e-4 robust)")
    rho = nonneg_float(rho, "rho")
    norm_eps = positive_float(norm_eps, "norm_eps")
    delta = choice(delta, "delta", PREF_DELTAS)
    if delta == "gram" and adaptive:
        raise ValueError("delta='gram' is the non-adaptive identity; use delta='weight' with "
                         "adaptive=True")
    return rho, norm_eps, delta


# --------------------------------------------------------------------------- cross-tokenizer: CTPD and TIS-DPO

SPAN_RULES = ("official", "ends")
SPAN_REDUCES = ("sum", "mean", "padded_mean")


def span_offsets(offsets, name: str) -> list:
    """Character offsets of one tokenised response: a sequence of ``(a, b)`` integer pairs or
    ``None`` (a token without offset, e.g. an appended EOS). Returns a list of ``(a, b)``/None.

    Rules: ``0 <= a <= b``; starts and ends non-decreasing (tokens in text order); consecutive
    tokens may share at most one character (a byte-level tokenizer splitting one multi-byte
    character gives the pieces that character's offset), so ``a_k >= b_{k-1} - 1``."""
    if isinstance(offsets, (str, bytes)) or not hasattr(offsets, "__len__"):
        raise TypeError(f"{name} must be a sequence of (start, end) pairs or None, got "
                        f"{type(offsets).__name__}")
    out, prev, prev_k = [], None, None
    for k, item in enumerate(offsets):
        if item is None:
            out.append(None)
            continue
        if isinstance(item, (str, bytes)) or not hasattr(item, "__len__") or len(item) != 2:
            raise ValueError(f"{name}[{k}] must be a (start, end) pair or None, got {item!r}")
        a, b = item
        for v in (a, b):
            if isinstance(v, bool) or not isinstance(v, numbers.Integral):
                raise TypeError(f"{name}[{k}] must hold integers, got {item!r}")
        a, b = int(a), int(b)
        if a < 0 or b < a:
            raise ValueError(f"{name}[{k}] = ({a}, {b}) must satisfy 0 <= start <= end")
        if prev is not None:
            pa, pb = prev
            if a < pa or b < pb:
                raise ValueError(f"{name} offsets must be non-decreasing (tokens in text order): "
                                 f"{name}[{prev_k}] = {prev}, {name}[{k}] = ({a}, {b})")
            if a < pb - 1:
                raise ValueError(f"{name}[{prev_k}] = {prev} and {name}[{k}] = ({a}, {b}) overlap by "
                                 f"{pb - a} characters (at most 1 is allowed: the split character "
                                 f"of a byte-level tokenizer); offsets of another text?")
        out.append((a, b))
        prev, prev_k = (a, b), k
    return out


def span_seg(seg, shape: tuple, num_spans, name: str = "seg",
             to_numpy: Callable = np.asarray) -> tuple[np.ndarray, int]:
    """Segment ids of shape ``shape`` (that of the token array) or ``(shape[-1],)`` (one
    segmentation shared by every row), integers in ``[-1, num_spans)``; -1 = in no span."""
    num_spans = positive_int(num_spans, "num_spans", minimum=0)
    if not hasattr(seg, "shape"):
        raise TypeError(f"{name} must be an integer array, got {type(seg).__name__}")
    if len(shape) == 0:
        raise ValueError("token_logps must be at least 1-D (..., K)")
    if tuple(seg.shape) not in (tuple(shape), tuple(shape[-1:])):
        raise ValueError(f"{name} must have shape {tuple(shape)} (token_logps) or "
                         f"({shape[-1]},) (shared by every row), got {tuple(seg.shape)}")
    h = np.asarray(to_numpy(seg))
    if h.dtype.kind not in "iu":
        raise TypeError(f"{name} must be an integer array, got dtype {h.dtype}")
    if h.size and (h.min() < -1 or h.max() >= num_spans):
        raise ValueError(f"{name} must lie in [-1, {num_spans}) (-1 = no span), got values in "
                         f"[{h.min()}, {h.max()}]")
    return h, num_spans


def span_logp_pair(lp_pos, lp_neg) -> None:
    """``lp_pos`` and ``lp_neg``: float arrays of one shape (the two scoring models' span
    log-probs)."""
    float_array(lp_pos, "lp_pos")
    float_array(lp_neg, "lp_neg")
    if tuple(lp_neg.shape) != tuple(lp_pos.shape):
        raise ValueError(f"lp_neg must have the shape of lp_pos {tuple(lp_pos.shape)}, got "
                         f"{tuple(lp_neg.shape)}")


def span_weight_args(k, lo, hi, decimals) -> tuple[float, float, float, int | None]:
    """``k > 0``, ``lo <= hi`` finite, ``decimals`` a non-negative int or None (no rounding)."""
    k = positive_float(k, "k")
    for name, v in (("lo", lo), ("hi", hi)):
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v):
            raise ValueError(f"{name} must be a finite real number, got {v!r}")
    if lo > hi:
        raise ValueError(f"lo must be <= hi (the clip interval), got lo={lo}, hi={hi}")
    if decimals is not None:
        decimals = positive_int(decimals, "decimals", minimum=0)
    return k, float(lo), float(hi), decimals


def ctpd_args(ellS, ellT, w, beta) -> tuple[int, int, float]:
    """Span log-probs ``ellS``, ``ellT`` and weights ``w``, all (2B, R) with the dtype of
    ``ellS``, chosen rows first; ``beta > 0``. Returns ``(B, R, beta)``."""
    float_array(ellS, "ellS", ndims=(2,))
    for name, x in (("ellT", ellT), ("w", w)):
        float_array(x, name, ndims=(2,))
        same_dtype("ellS", ellS, name, x)
        if tuple(x.shape) != tuple(ellS.shape):
            raise ValueError(f"{name} must have the shape of ellS {tuple(ellS.shape)} (2B rows, "
                             f"R spans), got {tuple(x.shape)}")
    rows, R = (int(s) for s in ellS.shape)
    if rows % 2 or rows == 0:
        raise ValueError(f"ellS must have an even, non-zero number of rows 2B (chosen rows first, "
                         f"then rejected), got {rows}")
    return rows // 2, R, positive_float(beta, "beta")


def tis_dpo_args(logits, ref_logits, labels, mask, weights, beta, alpha,
                 to_numpy: Callable = np.asarray) -> tuple[int, int, int, float, float, np.ndarray]:
    """``logits``/``ref_logits`` (R, T, V) of one dtype, integer ``labels`` (R, T) in [0, V)
    where mask = 1, ``mask`` (R, T) in {0, 1}, ``weights`` (R, T); R even (chosen first);
    ``beta > 0``, ``alpha >= 0``. Returns ``(R, T, V, beta, alpha, host mask)``."""
    allowed = FLOATS + ("bfloat16",)
    float_array(logits, "logits", ndims=(3,), allowed=allowed)
    float_array(ref_logits, "ref_logits", ndims=(3,), allowed=allowed)
    same_dtype("logits", logits, "ref_logits", ref_logits)
    if tuple(ref_logits.shape) != tuple(logits.shape):
        raise ValueError(f"ref_logits must have the shape of logits {tuple(logits.shape)}, got "
                         f"{tuple(ref_logits.shape)}")
    R, T, Vs = (int(s) for s in logits.shape)
    if R % 2 or R == 0:
        raise ValueError(f"logits must have an even, non-zero number of rows R = 2B (chosen rows "
                         f"first), got R = {R}")
    float_array(weights, "weights", ndims=(2,), allowed=allowed)
    m = pref_labels(labels, mask, R, T, Vs, "logits' first two axes, labels already shifted",
                    to_numpy, weights=weights)
    return R, T, Vs, positive_float(beta, "beta"), nonneg_float(alpha, "alpha"), m


# --------------------------------------------------------------------------- cross-tokenizer: DWA-KD

KD_KINDS = ("forward_kl", "reverse_kl", "skewed_forward_kl", "skewed_reverse_kl", "js",
            "adaptive_kl")
DTW_POSITIONS = ("mask", "prefix")
DWA_VARIANTS = ("dwa", "dskd")


class KdArgs(NamedTuple):
    kind: str
    tau: float
    tea_temp: float
    use_tea_temp: bool
    skew: float
    adaptive_alpha: float | None


def kd_args(z_s, z_t, kind, tau, tea_temp, use_tea_temp, skew, adaptive_alpha) -> KdArgs:
    """``kd_divergence``: logits (..., V) of equal shape and dtype; ``tau, tea_temp > 0``;
    ``0 <= skew <= 1``; ``adaptive_alpha`` (required for ``adaptive_kl``) in [0, 1]."""
    float_array(z_s, "z_s", allowed=FLOATS + ("bfloat16",))
    float_array(z_t, "z_t", allowed=FLOATS + ("bfloat16",))
    same_dtype("z_s", z_s, "z_t", z_t)
    if len(z_s.shape) < 1 or z_s.shape[-1] < 1:
        raise ValueError(f"z_s must have shape (..., V) with V >= 1, got {tuple(z_s.shape)}")
    if tuple(z_s.shape) != tuple(z_t.shape):
        raise ValueError(f"z_t must have z_s's shape {tuple(z_s.shape)} (both logits over the same "
                         f"vocabulary), got {tuple(z_t.shape)}")
    kind = choice(kind, "kind", KD_KINDS)
    tau = positive_float(tau, "tau")
    tea_temp = positive_float(tea_temp, "tea_temp")
    skew = nonneg_float(skew, "skew")
    if skew > 1:
        raise ValueError(f"skew must lie in [0, 1], got {skew}")
    if kind == "adaptive_kl":
        if adaptive_alpha is None:
            raise ValueError("kind='adaptive_kl' needs adaptive_alpha (the official script value "
                             "is unknown, so there is no default)")
        adaptive_alpha = nonneg_float(adaptive_alpha, "adaptive_alpha")
        if adaptive_alpha > 1:
            raise ValueError(f"adaptive_alpha must lie in [0, 1], got {adaptive_alpha}")
    return KdArgs(kind, tau, tea_temp, bool(use_tea_temp), skew, adaptive_alpha)


def token_mask(mask, name: str, shape: tuple[int, ...], to_numpy: Callable = np.asarray) -> np.ndarray:
    """A token mask of ``shape`` (bool, integer or float holding only 0 and 1), as host bool."""
    if not hasattr(mask, "shape"):
        raise TypeError(f"{name} must be an array of shape {tuple(shape)}, got {type(mask).__name__}")
    if tuple(mask.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(mask.shape)}")
    h = np.asarray(to_numpy(mask))
    if h.dtype == bool:
        return h
    if h.dtype.kind not in "iuf":
        raise TypeError(f"{name} must be bool, integer or float, got dtype {h.dtype}")
    if not np.all((h == 0) | (h == 1)):
        raise ValueError(f"{name} must hold only 0 and 1 (1 = target token)")
    return h != 0


def logits_and_mask(z, mask, zname: str, mname: str, to_numpy: Callable = np.asarray) -> np.ndarray:
    """Logits (B, N, V) and their token mask (B, N); returns the mask as host bool."""
    float_array(z, zname, ndims=(3,), allowed=FLOATS + ("bfloat16",))
    if z.shape[-1] < 1:
        raise ValueError(f"{zname} must have a non-empty vocabulary axis, got {tuple(z.shape)}")
    return token_mask(mask, mname, tuple(z.shape[:2]), to_numpy)


def nonneg_int(v, name: str) -> int:
    return positive_int(v, name, minimum=0)


def band_args(alpha, w0, kappa, rho) -> tuple[float, float, float, float]:
    """Soft-band parameters: ``0 <= alpha <= 1``; ``w0, kappa, rho >= 0``."""
    alpha = nonneg_float(alpha, "alpha")
    if alpha > 1:
        raise ValueError(f"alpha (centre blend) must lie in [0, 1], got {alpha}")
    return alpha, nonneg_float(w0, "w0"), nonneg_float(kappa, "kappa"), nonneg_float(rho, "rho")


def band_attention(A, name: str = "A") -> tuple[int, int]:
    """An attention block (..., n, m) with n, m >= 1 and non-negative entries."""
    float_array(A, name)
    if len(A.shape) < 2 or A.shape[-2] < 1 or A.shape[-1] < 1:
        raise ValueError(f"{name} must have shape (..., n, m) with n, m >= 1, got {tuple(A.shape)}")
    h = np.asarray(A)
    if np.isnan(h).any() or (h < 0).any():
        raise ValueError(f"{name} must hold attention weights (>= 0, no NaN)")
    return int(A.shape[-2]), int(A.shape[-1])


def gamma_schedule(step, gamma0, gamma1, steps) -> tuple[int, float, float, int]:
    return (nonneg_int(step, "step"), positive_float(gamma0, "gamma0"),
            positive_float(gamma1, "gamma1"), nonneg_int(steps, "steps"))


class DwaDtwArgs(NamedTuple):
    B: int
    N: int
    M: int
    d: int
    mask_s: np.ndarray
    mask_t: np.ndarray
    gamma: float
    positions: str
    use_band: bool
    band: tuple[float, float, float, float]


def dwa_dtw_args(X, Y, mask_s, mask_t, gamma, A, positions, band, alpha, w0, kappa, rho,
                 to_numpy: Callable = np.asarray) -> DwaDtwArgs:
    """``dwa_dtw_loss``: X (B, N', d), Y (B, M', d), masks (B, N'), (B, M'), A (B, N', M') or
    None. The band is used when ``band`` and A is given and ``w0 > 0`` (the official rule)."""
    B, N, M, d = point_pair(X, Y)
    if B is None:
        raise ValueError(f"X and Y must be batched (B, N', d) and (B, M', d), got "
                         f"{tuple(X.shape)} and {tuple(Y.shape)}")
    ms = token_mask(mask_s, "mask_s", (B, N), to_numpy)
    mt = token_mask(mask_t, "mask_t", (B, M), to_numpy)
    gamma = sdtw_gamma(gamma)
    positions = choice(positions, "positions", DTW_POSITIONS)
    params = band_args(alpha, w0, kappa, rho)
    if A is not None:
        float_array(A, "A", ndims=(3,))
        if tuple(A.shape) != (B, N, M):
            raise ValueError(f"A must have shape ({B}, {N}, {M}) (the t2s attention of X's and "
                             f"Y's positions), got {tuple(A.shape)}")
    use_band = bool(band) and A is not None and params[1] > 0
    return DwaDtwArgs(B, N, M, d, ms, mt, gamma, positions, use_band, params)


class CmaShape(NamedTuple):
    B: int
    N: int
    M: int
    d_s: int
    d_t: int
    V_s: int
    V_t: int


def _shape_is(x, name: str, want: tuple[int, ...], what: str = "") -> None:
    float_array(x, name)
    if tuple(x.shape) != tuple(want):
        raise ValueError(f"{name} must have shape {tuple(want)}{what}, got {tuple(x.shape)}")


def projector(proj, key: str, d_in: int, d_out: int) -> None:
    """``proj[key] = (weight (d_out, d_in), bias (d_out,))`` — torch ``nn.Linear`` layout."""
    if not isinstance(proj, dict) or key not in proj:
        raise ValueError(f"proj must be a dict holding {key!r}: (weight, bias)")
    pair = proj[key]
    if not isinstance(pair, (tuple, list)) or len(pair) != 2:
        raise TypeError(f"proj[{key!r}] must be a pair (weight, bias)")
    _shape_is(pair[0], f"proj[{key!r}] weight", (d_out, d_in), " (nn.Linear: out x in)")
    _shape_is(pair[1], f"proj[{key!r}] bias", (d_out,))


def cma_args(e_s_in, e_s_tgt, e_t_in, e_t_tgt, H_s, H_t, mask_s, mask_t, proj, W_s, W_t,
             to_numpy: Callable = np.asarray) -> tuple[CmaShape, np.ndarray, np.ndarray]:
    """Cross-model attention inputs: student (B, N', d_s) embeddings and states, teacher
    (B, M', d_t), heads W_s (V_S, d_s), W_t (V_T, d_t), projectors query (2d_s -> 2d_t),
    t2s (d_t -> d_s), s2t (d_s -> d_t)."""
    float_array(H_s, "H_s", ndims=(3,))
    float_array(H_t, "H_t", ndims=(3,))
    B, N, d_s = (int(s) for s in H_s.shape)
    if int(H_t.shape[0]) != B:
        raise ValueError(f"H_t must have batch size {B} (H_s's), got {tuple(H_t.shape)}")
    M, d_t = int(H_t.shape[1]), int(H_t.shape[2])
    for name, x in (("e_s_in", e_s_in), ("e_s_tgt", e_s_tgt)):
        _shape_is(x, name, (B, N, d_s), " (H_s's shape)")
    for name, x in (("e_t_in", e_t_in), ("e_t_tgt", e_t_tgt)):
        _shape_is(x, name, (B, M, d_t), " (H_t's shape)")
    float_array(W_s, "W_s", ndims=(2,))
    float_array(W_t, "W_t", ndims=(2,))
    if int(W_s.shape[1]) != d_s:
        raise ValueError(f"W_s must have shape (V_S, {d_s}), got {tuple(W_s.shape)}")
    if int(W_t.shape[1]) != d_t:
        raise ValueError(f"W_t must have shape (V_T, {d_t}), got {tuple(W_t.shape)}")
    projector(proj, "query", 2 * d_s, 2 * d_t)
    projector(proj, "t2s", d_t, d_s)
    projector(proj, "s2t", d_s, d_t)
    ms = token_mask(mask_s, "mask_s", (B, N), to_numpy)
    mt = token_mask(mask_t, "mask_t", (B, M), to_numpy)
    shape = CmaShape(B, N, M, d_s, d_t, int(W_s.shape[0]), int(W_t.shape[0]))
    return shape, ms, mt


def dwa_labels(labels, name: str, shape: tuple[int, int], V: int,
               to_numpy: Callable = np.asarray) -> np.ndarray:
    """Shifted integer labels (B, N) with -100 on prompt and padding, others in [0, V)."""
    if not hasattr(labels, "shape"):
        raise TypeError(f"{name} must be an integer array of shape {shape}")
    if tuple(labels.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(labels.shape)}")
    y = np.asarray(to_numpy(labels))
    if y.dtype.kind not in "iu":
        raise TypeError(f"{name} must be an integer array, got dtype {y.dtype}")
    valid = y != -100
    if valid.any() and (y[valid].min() < 0 or y[valid].max() >= V):
        raise ValueError(f"{name} must be -100 (ignored) or lie in [0, {V}), got values in "
                         f"[{y[valid].min()}, {y[valid].max()}]")
    return y


def dwa_kd_args(z_s, z_t, labels_s, labels_t, H_s, H_t, W_s, W_t, rates, variant, kind, step,
                to_numpy: Callable = np.asarray):
    """The arguments of ``dwa_kd_loss`` (shapes read with ``np.shape``/``.shape`` only).
    Returns ``(B, N, Vs, M, Vt, host labels_s, host labels_t, (r_ce, r_kd, r_dtw), variant,
    step)``."""
    float_array(z_s, "z_s", ndims=(3,))
    float_array(z_t, "z_t", ndims=(3,))
    B, N, Vs = (int(x) for x in z_s.shape)
    if int(z_t.shape[0]) != B:
        raise ValueError(f"z_t must have batch size {B} (z_s's), got {tuple(z_t.shape)}")
    M, Vt = int(z_t.shape[1]), int(z_t.shape[2])
    ys = dwa_labels(labels_s, "labels_s", (B, N), Vs, to_numpy=to_numpy)
    yt = dwa_labels(labels_t, "labels_t", (B, M), Vt, to_numpy=to_numpy)
    rates = dwa_rates(rates)
    variant = choice(variant, "variant", DWA_VARIANTS)
    if kind == "adaptive_kl":
        raise ValueError("dwa_kd_loss has no adaptive_alpha argument; use kd_divergence for "
                         "kind='adaptive_kl'")
    step = nonneg_int(step, "step")
    if tuple(W_s.shape)[:1] != (Vs,) or tuple(W_t.shape)[:1] != (Vt,):
        raise ValueError(f"W_s / W_t must have V_S = {Vs} / V_T = {Vt} rows (the logits' "
                         f"vocabularies), got {tuple(W_s.shape)} / {tuple(W_t.shape)}")
    if tuple(H_s.shape)[:2] != (B, N) or tuple(H_t.shape)[:2] != (B, M):
        raise ValueError(f"H_s / H_t must start with z_s's (B, N') = {(B, N)} / z_t's (B, M') = "
                         f"{(B, M)}, got {tuple(H_s.shape)} / {tuple(H_t.shape)}")
    return B, N, Vs, M, Vt, ys, yt, rates, variant, step


def dwa_rates(rates) -> tuple[float, float, float]:
    if not isinstance(rates, (tuple, list)) or len(rates) != 3:
        raise TypeError(f"rates must be a triple (ce, kd, dtw), got {rates!r}")
    return tuple(nonneg_float(r, f"rates[{i}]") for i, r in enumerate(rates))


# --------------------------------------------------------------------------- Inf-SSM (observability Grams)
#
# The value checks (finite, |a| < 1) need two numbers per array, computed by ``stats``: with the
# default, one small device -> host read per array (a bool and a float) on GPU backends.

INFSSM_VARIANTS = ("code", "projection", "martin")
INFSSM_CHANNEL_REDUCE = ("mean", "none")
INFSSM_MODES = ("inf_ssm", "mse")


def _default_stats(x) -> tuple[bool, float]:
    """``(all finite, max |x|)`` for NumPy, CuPy and torch arrays alike (x non-empty)."""
    ax = abs(x)
    return bool((ax < math.inf).all()), float(ax.max())


def _finite_values(x, name: str, stats) -> float:
    """ValueError unless every entry of ``x`` is finite; returns max |x| (0 for empty)."""
    if int(np.prod(tuple(x.shape))) == 0:
        return 0.0
    ok, mx = (stats or _default_stats)(x)
    if not ok:
        raise ValueError(f"{name} contains NaN or inf")
    return float(mx)


def diag_system(a, C, names=("a", "C"), multi_output=True, stats=None) -> tuple[tuple, int, int]:
    """A diagonal system ``x_{t+1} = diag(a) x_t``, ``y_t = C x_t``: ``a`` (..., n), n >= 1;
    ``C`` of a's dtype, (..., n) (one output) or, if ``multi_output``, (..., p, n), p >= 1, with
    a's leading shape. Values: finite, ``|a| < 1`` elementwise (stable). Returns
    ``(lead_shape, p, n)`` with p = 0 for a vector ``C``."""
    na, nc = names
    float_array(a, na)
    float_array(C, nc)
    same_dtype(na, a, nc, C)
    ash, csh = tuple(int(s) for s in a.shape), tuple(int(s) for s in C.shape)
    if len(ash) < 1 or ash[-1] < 1:
        raise ValueError(f"{na} must have shape (..., n) with n >= 1 (the diagonal of A), got {ash}")
    lead, n = ash[:-1], ash[-1]
    if csh == ash:
        p = 0
    elif multi_output and len(csh) == len(ash) + 1 and csh[:-2] == lead and csh[-1] == n and csh[-2] >= 1:
        p = csh[-2]
    else:
        want = f"{ash}" + (f" or {lead + ('p', n)} (p >= 1 outputs)" if multi_output else "")
        raise ValueError(f"{nc} must have shape {want} to match {na} {ash}, got {csh}")
    mx = _finite_values(a, na, stats)
    if mx >= 1.0:
        raise ValueError(f"{na} must be stable: |{na}| < 1 elementwise (spectral radius < 1, else "
                         f"the Gram series diverges), got max |{na}| = {mx:.17g}")
    _finite_values(C, nc, stats)
    return lead, p, n


def _same_lead(a, b, lead1, lead2) -> None:
    if lead1 != lead2:
        raise ValueError(f"a and b must have the same leading shape (one system pair per entry), "
                         f"got {tuple(a.shape)} and {tuple(b.shape)}")


def cross_gram_args(a, C1, b, C2, stats=None) -> tuple[tuple, int, int, int]:
    """``stein_cross_gram_diag``: two diagonal systems (names a, C1 and b, C2) of one dtype, the
    same leading shape and the same output kind (both vectors, or both p outputs).
    Returns ``(lead, p, n1, n2)``."""
    lead1, p1, n1 = diag_system(a, C1, ("a", "C1"), True, stats)
    lead2, p2, n2 = diag_system(b, C2, ("b", "C2"), True, stats)
    same_dtype("a", a, "b", b)
    _same_lead(a, b, lead1, lead2)
    if p1 != p2:
        what = lambda p: "a vector (one output)" if p == 0 else f"{p} outputs"
        raise ValueError(f"C1 and C2 must have the same number of outputs, got {what(p1)} and "
                         f"{what(p2)} (shapes {tuple(C1.shape)} and {tuple(C2.shape)})")
    return lead1, p1, n1, n2


def infssm_args(a, c, b, e, variant, eps, stats=None) -> tuple[tuple, int, int]:
    """``infssm_distance``: single-output systems (a, c) (..., n1) and (b, e) (..., n2) of one
    dtype and leading shape; ``variant`` in INFSSM_VARIANTS; ``eps >= 0`` finite.
    Returns ``(lead, n1, n2)``."""
    lead1, _, n1 = diag_system(a, c, ("a", "c"), False, stats)
    lead2, _, n2 = diag_system(b, e, ("b", "e"), False, stats)
    same_dtype("a", a, "b", b)
    _same_lead(a, b, lead1, lead2)
    choice(variant, "variant", INFSSM_VARIANTS)
    eps = nonneg_float(eps, "eps")
    if not math.isfinite(eps):
        raise ValueError(f"eps must be finite, got {eps}")
    return lead1, n1, n2


def mamba_scan_args(delta_raw, A_log, C, dt_bias, channel_reduce, squash,
                    stats=None) -> tuple[int, int, int, int]:
    """``mamba_ac_from_scan``: ``delta_raw`` (B, D, L), ``A_log`` (D, n), ``C`` (B, n, L),
    ``dt_bias`` None or (D,), one float dtype, finite; D, n >= 1; ``channel_reduce`` in
    ("mean", "none"); ``squash`` a bool. Returns ``(B, D, L, n)``."""
    float_array(delta_raw, "delta_raw", ndims=(3,))
    float_array(A_log, "A_log", ndims=(2,))
    float_array(C, "C", ndims=(3,))
    same_dtype("delta_raw", delta_raw, "A_log", A_log)
    same_dtype("delta_raw", delta_raw, "C", C)
    B, D, L = (int(s) for s in delta_raw.shape)
    if int(A_log.shape[0]) != D or int(A_log.shape[1]) < 1 or D < 1:
        raise ValueError(f"A_log must have shape (D, n) = ({D}, n), n >= 1, with D >= 1 the "
                         f"channels of delta_raw {tuple(delta_raw.shape)}, got {tuple(A_log.shape)}")
    n = int(A_log.shape[1])
    if tuple(int(s) for s in C.shape) != (B, n, L):
        raise ValueError(f"C must have shape (B, n, L) = {(B, n, L)} (delta_raw's B, L and "
                         f"A_log's n), got {tuple(C.shape)}")
    if dt_bias is not None:
        float_array(dt_bias, "dt_bias", ndims=(1,))
        same_dtype("delta_raw", delta_raw, "dt_bias", dt_bias)
        if tuple(int(s) for s in dt_bias.shape) != (D,):
            raise ValueError(f"dt_bias must have shape ({D},) (one per channel), got "
                             f"{tuple(dt_bias.shape)}")
    choice(channel_reduce, "channel_reduce", INFSSM_CHANNEL_REDUCE)
    if not isinstance(squash, (bool, np.bool_)):
        raise TypeError(f"squash must be a bool, got {type(squash).__name__}")
    for name, x in (("delta_raw", delta_raw), ("A_log", A_log), ("C", C), ("dt_bias", dt_bias)):
        if x is not None:
            _finite_values(x, name, stats)
    return B, D, L, n


def reg_loss_args(new_pairs, old_pairs, lam, mode, stats=None) -> int:
    """``infssm_reg_loss``: non-empty lists/tuples of (a, c) pairs, one per scan, the same number
    S in both; every pair a stable single-output diagonal system (m, n), all of one dtype and
    one (m, n); ``lam >= 0`` finite; ``mode`` in ("inf_ssm", "mse"). Returns S."""
    for name, pairs in (("new_pairs", new_pairs), ("old_pairs", old_pairs)):
        if not isinstance(pairs, (list, tuple)):
            raise TypeError(f"{name} must be a list or tuple of (a, c) pairs (one per scan), got "
                            f"{type(pairs).__name__}")
        if len(pairs) == 0:
            raise ValueError(f"{name} must not be empty (one (a, c) pair per scan)")
    if len(new_pairs) != len(old_pairs):
        raise ValueError(f"new_pairs and old_pairs must have the same number of scans, got "
                         f"{len(new_pairs)} and {len(old_pairs)}")
    ref = None
    for name, pairs in (("new_pairs", new_pairs), ("old_pairs", old_pairs)):
        for s, pair in enumerate(pairs):
            if not isinstance(pair, (list, tuple)) or len(pair) != 2:
                raise TypeError(f"{name}[{s}] must be a pair (a, c)")
            a, c = pair
            float_array(a, f"{name}[{s}] a", ndims=(2,))
            if ref is None:
                ref = (a, tuple(int(x) for x in a.shape))
            same_dtype("new_pairs[0] a", ref[0], f"{name}[{s}] a", a)
            if tuple(int(x) for x in a.shape) != ref[1]:
                raise ValueError(f"{name}[{s}] a must have shape {ref[1]} (new_pairs[0] a's (m, n): "
                                 f"every scan has the same rows and states), got {tuple(a.shape)}")
            diag_system(a, c, (f"{name}[{s}] a", f"{name}[{s}] c"), False, stats)
    lam = nonneg_float(lam, "lam")
    if not math.isfinite(lam):
        raise ValueError(f"lam must be finite, got {lam}")
    choice(mode, "mode", INFSSM_MODES)
    return len(new_pairs)


def gram_not_positive_definite(name: str, eps: float) -> ValueError:
    """The error of a failed Cholesky of ``name + eps I`` (principled Inf-SSM distances), the
    same on every backend."""
    return ValueError(f"{name} + eps I is not numerically positive definite (eps = {eps}): the "
                      f"Gram of a diagonal system is D_c K D_c with the Cauchy matrix "
                      f"K_ij = 1/(1 - a_i a_j), badly conditioned for clustered a or a zero "
                      f"c_i; use eps > 0 (Tikhonov regularisation) or variant='code'")


# --------------------------------------------------------------------------- causal discovery (discrete score)

LEAF_CRITERIA = ("invariance_sum", "invariance_entropy", "var_score")
CI_TESTS = ("g2", "chi2")
CI_DF = ("adjusted", "full")
_INT_DTYPES = ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64")


def _default_colrange(X) -> tuple[np.ndarray, np.ndarray]:
    return np.asarray(X.min(0)), np.asarray(X.max(0))


def discrete_data(X, cards, name: str = "X", colrange: Callable | None = None,
                  allow_constant: bool = True) -> tuple[int, int, np.ndarray]:
    """Discrete data ``X`` (n, d) of integer codes with cardinalities ``cards`` (d,).

    ``X``: an integer array (any signed/unsigned width; bool and float are refused with a
    TypeError naming ``name``), 2-D, n >= 1, d >= 1. ``cards``: a list or 1-D integer array of
    length d (host values), each >= 2. Values ``0 <= X[:, i] < cards[i]``, checked from
    ``colrange(X) -> (mins (d,), maxs (d,))`` NumPy arrays (default NumPy's ``X.min(0)``,
    ``X.max(0)``; GPU backends compute them on the device and read back 2 d integers, once).
    With ``allow_constant=False`` a column with min == max is a ValueError naming it.
    Returns ``(n, d, cards as an int64 NumPy array)``."""
    if not hasattr(X, "shape") or not hasattr(X, "dtype"):
        raise TypeError(f"{name} must be an integer array (n, d), got {type(X).__name__}")
    dt = dtype_name(X)
    if dt == "bool":
        raise TypeError(f"{name} must have an integer dtype (category codes 0..K-1), got bool; "
                        f"convert with {name}.astype(int)")
    if dt not in _INT_DTYPES:
        raise TypeError(f"{name} must have an integer dtype (category codes 0..K-1), got {dt}")
    if len(X.shape) != 2:
        raise ValueError(f"{name} must be 2-D (n, d), got shape {tuple(X.shape)}")
    n, d = int(X.shape[0]), int(X.shape[1])
    if n < 1 or d < 1:
        raise ValueError(f"{name} must have at least one row and one column, got shape {(n, d)}")
    if isinstance(cards, (bool, np.bool_)) or not hasattr(cards, "__len__"):
        raise TypeError(f"cards must be a list or 1-D integer array of length {d}, got "
                        f"{type(cards).__name__}")
    c = np.asarray(cards)
    if c.dtype.kind not in "iu":
        raise TypeError(f"cards must hold integers (the number of categories per column), got "
                        f"dtype {c.dtype}")
    if c.shape != (d,):
        raise ValueError(f"cards must have length d = {d} (one per column of {name}), got shape "
                         f"{c.shape}")
    c = c.astype(np.int64)
    if (c < 2).any():
        i = int(np.flatnonzero(c < 2)[0])
        raise ValueError(f"cards must be >= 2 (a variable with one category carries no "
                         f"information), got cards[{i}] = {int(c[i])}")
    mins, maxs = (colrange or _default_colrange)(X)
    mins, maxs = np.asarray(mins).astype(np.int64), np.asarray(maxs).astype(np.int64)
    if (mins < 0).any():
        i = int(np.flatnonzero(mins < 0)[0])
        raise ValueError(f"{name} must hold codes in [0, cards[i]); column {i} has a negative "
                         f"value {int(mins[i])}")
    if (maxs >= c).any():
        i = int(np.flatnonzero(maxs >= c)[0])
        raise ValueError(f"{name} must hold codes in [0, cards[i]); column {i} has the value "
                         f"{int(maxs[i])} >= cards[{i}] = {int(c[i])}")
    if not allow_constant and (mins == maxs).any():
        i = int(np.flatnonzero(mins == maxs)[0])
        raise ValueError(f"{name} column {i} is constant: it carries no information; drop it")
    return n, d, c


def score_array(S_all, n: int, d: int, Kmax: int, name: str = "S_all") -> None:
    """A per-category score array: float32/float64, shape (n, d, Kmax) (NaN-padded beyond
    K_i; values are not read)."""
    float_array(S_all, name, ndims=(3,))
    if tuple(int(s) for s in S_all.shape) != (n, d, Kmax):
        raise ValueError(f"{name} must have shape (n, d, Kmax) = {(n, d, Kmax)} (X's rows and "
                         f"columns, Kmax = max(cards)), got {tuple(S_all.shape)}")


def leaf_criterion(criterion) -> str:
    return choice(criterion, "criterion", LEAF_CRITERIA)


def _default_wstats(w) -> tuple[bool, float, float]:
    return bool((abs(w) < math.inf).all()), float(w.min()), float(w.sum())


def row_weights(weights, n: int, like, name: str = "weights", stats: Callable | None = None) -> None:
    """Optional row weights: None, or a float array (n,) of ``like``'s dtype, finite, >= 0,
    with a positive sum (they are normalised). ``stats(w) -> (all finite, min, sum)`` is
    computed natively (default NumPy; GPU backends: one read of three scalars)."""
    if weights is None:
        return
    float_array(weights, name, ndims=(1,))
    same_dtype("S_all", like, name, weights)
    if int(weights.shape[0]) != n:
        raise ValueError(f"{name} must have shape ({n},) (one per row of X), got "
                         f"{tuple(weights.shape)}")
    ok, lo, tot = (stats or _default_wstats)(weights)
    if not ok:
        raise ValueError(f"{name} contains NaN or inf")
    if lo < 0:
        raise ValueError(f"{name} must be >= 0, got a minimum of {lo}")
    if not tot > 0:
        raise ValueError(f"{name} must have a positive sum (they are normalised), got {tot}")


def ci_args(d: int, i, candidates, cond, test, df, n: int,
            to_numpy: Callable = np.asarray) -> tuple[int, np.ndarray, tuple]:
    """Arguments of a conditional-independence test of X_i vs X_c | X_cond for c in
    ``candidates``: indices in [0, d), ``i`` not in candidates or cond, candidates disjoint
    from cond and without repeats, ``test`` in ("g2", "chi2"), ``df`` in ("adjusted", "full"),
    n >= 2 rows. ``candidates``: an int, a sequence or a 1-D integer array (read with
    ``to_numpy``). Returns ``(i, candidates int64 (k,), cond tuple of ints)``."""
    def index(v, what):
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Integral):
            raise TypeError(f"{what} must be an int column index, got {type(v).__name__}")
        if not 0 <= int(v) < d:
            raise ValueError(f"{what} must be a column index in [0, {d}), got {int(v)}")
        return int(v)

    i = index(i, "i")
    cand = np.atleast_1d(np.asarray(to_numpy(candidates)))
    if cand.ndim != 1 or (cand.size and cand.dtype.kind not in "iu"):
        raise TypeError(f"candidates must be an int or a 1-D sequence of int column indices, got "
                        f"dtype {cand.dtype} and shape {cand.shape}")
    cand = np.array([index(c, "candidates entry") for c in cand.tolist()], dtype=np.int64)
    if isinstance(cond, numbers.Integral) and not isinstance(cond, (bool, np.bool_)):
        cond = (cond,)
    cond = tuple(index(c, "cond entry") for c in cond)
    if len(set(cand.tolist())) != cand.size:
        raise ValueError(f"candidates must not repeat a column, got {cand.tolist()}")
    if len(set(cond)) != len(cond):
        raise ValueError(f"cond must not repeat a column, got {list(cond)}")
    if i in cand.tolist() or i in cond:
        raise ValueError(f"i = {i} must not be among candidates or cond")
    both = sorted(set(cand.tolist()) & set(cond))
    if both:
        raise ValueError(f"candidates and cond must be disjoint, both contain {both}")
    choice(test, "test", CI_TESTS)
    choice(df, "df", CI_DF)
    if n < 2:
        raise ValueError(f"X must have at least 2 rows for a test, got {n}")
    return i, cand, cond


# --------------------------------------------------------------------------- causal discovery: graphs, orders, SCORE's Stein kernel


def graph_adjacency(A, name: str, d: int | None = None, acyclic: bool = False,
                    no_two_cycles: bool = False) -> np.ndarray:
    """An adjacency matrix (host NumPy): square (d, d), integer or bool dtype with 0/1 entries
    (``A[i, j] = 1`` means i -> j), no self-loops; ``acyclic`` requires a DAG, ``no_two_cycles``
    refuses ``A[i, j] = A[j, i] = 1``. Returns it as int64."""
    if not hasattr(A, "shape") or not hasattr(A, "dtype"):
        raise TypeError(f"{name} must be an adjacency array (d, d), got {type(A).__name__}")
    A = np.asarray(A)
    if A.dtype.kind not in "iub":
        raise TypeError(f"{name} must be an integer or bool 0/1 adjacency matrix, got dtype "
                        f"{A.dtype}")
    if A.ndim != 2 or A.shape[0] != A.shape[1]:
        raise ValueError(f"{name} must be a square (d, d) adjacency matrix, got shape {A.shape}")
    if d is not None and A.shape[0] != d:
        raise ValueError(f"{name} must have shape ({d}, {d}), got {A.shape}")
    A = A.astype(np.int64)
    if ((A != 0) & (A != 1)).any():
        raise ValueError(f"{name} must hold only 0 and 1 (A[i, j] = 1 means i -> j)")
    if np.diagonal(A).any():
        i = int(np.flatnonzero(np.diagonal(A))[0])
        raise ValueError(f"{name} must have no self-loops, got {name}[{i}, {i}] = 1")
    if no_two_cycles and (A * A.T).any():
        i, j = (int(v) for v in np.argwhere(A * A.T)[0])
        raise ValueError(f"{name} has the 2-cycle {i} <-> {j}: every pair must have at most one "
                         f"directed edge")
    if acyclic:
        indeg = A.sum(0)
        alive = np.ones(A.shape[0], dtype=bool)
        while True:                                    # Kahn: peel nodes without parents
            src = np.flatnonzero(alive & (indeg == 0))
            if src.size == 0:
                break
            alive[src] = False
            indeg = indeg - A[src].sum(0)
        if alive.any():
            raise ValueError(f"{name} must be acyclic (a DAG); nodes {np.flatnonzero(alive).tolist()} "
                             f"lie on or downstream of a directed cycle")
    return A


def graph_order(order, d: int, name: str = "order") -> np.ndarray:
    """A causal order: a 1-D integer sequence that is a permutation of 0..d-1 (sources first).
    Returns it as int64."""
    o = np.asarray(order)
    if o.ndim != 1 or (o.size and o.dtype.kind not in "iu"):
        raise TypeError(f"{name} must be a 1-D sequence of int node indices, got dtype {o.dtype} "
                        f"and shape {o.shape}")
    o = o.astype(np.int64)
    if o.size != d or not np.array_equal(np.sort(o), np.arange(d)):
        raise ValueError(f"{name} must be a permutation of 0..{d - 1} (every node once), got "
                         f"{o.tolist()}")
    return o


def graph_alpha(alpha) -> float:
    """A significance level strictly inside (0, 1)."""
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real):
        raise TypeError(f"alpha must be a real number in (0, 1), got {type(alpha).__name__}")
    a = float(alpha)
    if not 0.0 < a < 1.0:
        raise ValueError(f"alpha must be in (0, 1) (a significance level), got {a}")
    return a


def graph_reversal_cost(v) -> int:
    """SHD's cost of a reversed edge: 1 or 2."""
    if isinstance(v, bool) or not isinstance(v, numbers.Integral) or int(v) not in (1, 2):
        raise ValueError(f"reversal_cost must be 1 (a reversal counts once) or 2 "
                         f"(= sum |A_true - A_hat|), got {v!r}")
    return int(v)


def _default_finite(x) -> bool:
    return bool(np.isfinite(np.asarray(x)).all())


def stein_args(X, eta_G, eta_H, finite: Callable | None = None) -> tuple[int, int, float, float]:
    """``stein_hessian_diag``: X float32/float64 (n, d), n >= 2, d >= 1, finite (``finite(X)``
    computed natively, default NumPy); eta_G, eta_H finite > 0. Returns ``(n, d, eta_G, eta_H)``."""
    float_array(X, "X", ndims=(2,))
    n, d = int(X.shape[0]), int(X.shape[1])
    if n < 2 or d < 1:
        raise ValueError(f"X must have at least 2 rows (samples) and 1 column, got shape {(n, d)}")
    eta_G = positive_float(eta_G, "eta_G")
    eta_H = positive_float(eta_H, "eta_H")
    if not (finite or _default_finite)(X):
        raise ValueError("X contains NaN or inf")
    return n, d, eta_G, eta_H


def stein_bandwidth(s: float) -> None:
    """The median pairwise distance must be > 0 (more than half of the pairs coincide else)."""
    if not s > 0:
        raise ValueError(f"the median pairwise distance of X is {s}: at least half of the sample "
                         f"pairs coincide, so the kernel bandwidth is 0")


def stein_not_positive_definite(name: str, eta: float) -> ValueError:
    """A failed Cholesky of ``K + eta I`` in ``stein_hessian_diag``."""
    return ValueError(f"K + {name} I is not numerically positive definite ({name} = {eta}); "
                      f"use a larger {name}")


def full_dof(kx: int, ky: int, n_strata: int) -> int:
    """Degrees of freedom of a CI test with ``df="full"``: ``(K_x - 1)(K_y - 1) prod K_Z``
    (``n_strata = prod K_Z``), refused beyond int64."""
    dof = (kx - 1) * (ky - 1) * n_strata
    if dof >= 2**63:
        raise ValueError(f"df='full' has {dof} degrees of freedom, beyond int64; use "
                         f"df='adjusted' or fewer conditioning variables")
    return dof


# ---- safety: Antibody (the helpers up to ``flat_vectors`` serve IBDR too)
#
# Antibody (arXiv 2603.00498), reference refimpl._antibody. Value checks of device arrays go
# through ONE callable per call so that a GPU backend needs one host read: ``finite(*xs)``
# returns one bool per array (compute every flag on the device, read them together);
# ``stats(x, ...)`` returns the documented tuple of small numbers. Scalars that may arrive as
# 0-d native arrays (``lam_ema``) are read with ``to_numpy`` (one read, documented by the
# backends). Labels are read on the host (O(B T)), as the preference family does.

ANTIBODY_LAMBDA_VARIANTS = ("cosine", "kkt")
ANTIBODY_CE_VARIANTS = ("code", "paper")


def _all_finite_each(*xs) -> tuple[bool, ...]:
    """One ``all finite`` flag per array (NumPy, CuPy and torch arrays alike; non-empty)."""
    return tuple(bool((abs(x) < math.inf).all()) for x in xs)


def _real_scalar(v, name: str, to_numpy: Callable = np.asarray) -> float:
    """A Python real or a 0-d (one-element) array, read to the host once."""
    if hasattr(v, "shape") and hasattr(v, "dtype"):
        if int(np.prod(tuple(v.shape))) != 1:
            raise ValueError(f"{name} must be a number or a 0-d array, got shape {tuple(v.shape)}")
        v = np.asarray(to_numpy(v)).reshape(()).item()
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(v).__name__}")
    return float(v)


def _finite_nonneg(v, name: str) -> float:
    """A finite Python float >= 0."""
    v = nonneg_float(v, name)
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite, got {v}")
    return v


def flat_vectors(arrays: dict, check_finite: tuple[str, ...] = (),
                 finite: Callable | None = None) -> int:
    """Flat parameter/gradient vectors ``arrays`` (name -> array, the first one is the model for
    shape and dtype): 1-D float32/float64 arrays, one shape (P,), P >= 1, one dtype. The arrays
    named in ``check_finite`` (the gradients) must be finite: ``finite(*those) -> one bool
    each`` (one device reduction and one host read on GPU backends). Returns P."""
    items = list(arrays.items())
    n0, x0 = items[0]
    for name, x in items:
        float_array(x, name, ndims=(1,))
    for name, x in items[1:]:
        same_dtype(n0, x0, name, x)
    P = int(x0.shape[0])
    if P < 1:
        raise ValueError(f"{n0} must have P >= 1 entries, got shape {tuple(x0.shape)}")
    for name, x in items[1:]:
        if tuple(x.shape) != (P,):
            raise ValueError(f"{name} must have the shape of {n0} ({P},), got {tuple(x.shape)}")
    if check_finite:
        flags = (finite or _all_finite_each)(*(arrays[n] for n in check_finite))
        for name, ok in zip(check_finite, flags):
            if not ok:
                raise ValueError(f"{name} has non-finite entries")
    return P


def antibody_perturb_args(theta, g_h, alpha, eps, finite: Callable | None = None
                          ) -> tuple[int, float, float]:
    """``harmful_perturb``: theta, g_h flat vectors (g_h finite), ``alpha >= 0`` finite,
    ``eps > 0`` finite. Returns (P, alpha, eps)."""
    P = flat_vectors({"theta": theta, "g_h": g_h}, ("g_h",), finite)
    return P, _finite_nonneg(alpha, "alpha"), positive_float(eps, "eps")


def antibody_lambda_opts(lam_ema, eta, momentum, variant, to_numpy: Callable = np.asarray
                         ) -> tuple[float | None, float, float, str]:
    """``eta >= 0`` finite, ``0 <= momentum <= 1``, ``variant`` in ("cosine", "kkt"), ``lam_ema``
    None or a finite number >= 0 (a Python number or a 0-d array, read once).
    Returns (lam_ema, eta, momentum, variant)."""
    choice(variant, "variant", ANTIBODY_LAMBDA_VARIANTS)
    eta = _finite_nonneg(eta, "eta")
    m = _finite_nonneg(momentum, "momentum")
    if m > 1:
        raise ValueError(f"momentum must lie in [0, 1], got {m}")
    if lam_ema is not None:
        lam_ema = _real_scalar(lam_ema, "lam_ema", to_numpy)
        if not math.isfinite(lam_ema) or lam_ema < 0:
            raise ValueError(f"lam_ema must be a finite number >= 0 (or None to initialise the "
                             f"EMA), got {lam_ema}")
    return lam_ema, eta, m, variant


def antibody_lambda_args(g_s, d, lam_ema, eta, momentum, variant, finite: Callable | None = None,
                         to_numpy: Callable = np.asarray) -> tuple:
    """``antibody_lambda``: g_s, d finite flat vectors + :func:`antibody_lambda_opts`.
    Returns (P, lam_ema, eta, momentum, variant)."""
    opts = antibody_lambda_opts(lam_ema, eta, momentum, variant, to_numpy)
    P = flat_vectors({"g_s": g_s, "d": d}, ("g_s", "d"), finite)
    return (P,) + opts


def antibody_align_args(g_s, g_h, g_p, g_r, lam_ema, eta, momentum, lam2, variant,
                        finite: Callable | None = None, to_numpy: Callable = np.asarray) -> tuple:
    """``antibody_align_direction``: g_s, g_h, g_p, g_r finite flat vectors of one shape and
    dtype, ``lam2 >= 0`` finite + :func:`antibody_lambda_opts`.
    Returns (P, lam_ema, eta, momentum, lam2, variant)."""
    lam_ema, eta, m, variant = antibody_lambda_opts(lam_ema, eta, momentum, variant, to_numpy)
    lam2 = _finite_nonneg(lam2, "lam2")
    names = ("g_s", "g_h", "g_p", "g_r")
    P = flat_vectors(dict(zip(names, (g_s, g_h, g_p, g_r))), names, finite)
    return P, lam_ema, eta, m, lam2, variant


def ignore_labels(labels, ignore_index, shape, V, to_numpy: Callable = np.asarray) -> np.ndarray:
    """Integer ``labels`` of ``shape`` (B, T) (H's first two axes), each in [0, V) or equal to
    ``ignore_index`` (an int; prompt and padding positions). Reads labels on the host once and
    returns the host bool mask ``labels != ignore_index`` (for ``_Head(..., paired=False)``)."""
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, numbers.Integral):
        raise TypeError(f"ignore_index must be an int, got {type(ignore_index).__name__}")
    ignore_index = int(ignore_index)
    shape = tuple(int(s) for s in shape)
    if not hasattr(labels, "shape") or not hasattr(labels, "dtype"):
        raise TypeError(f"labels must be an integer array of shape {shape}, got "
                        f"{type(labels).__name__}")
    if tuple(labels.shape) != shape:
        raise ValueError(f"labels must have shape {shape} (H's first two axes), got "
                         f"{tuple(labels.shape)}")
    y = np.asarray(to_numpy(labels))
    if y.dtype.kind not in "iu":
        raise TypeError(f"labels must be an integer array, got dtype {y.dtype}")
    m = y != ignore_index
    if m.any():
        ym = y[m]
        lo, hi = int(ym.min()), int(ym.max())
        if lo < 0 or hi >= V:
            raise ValueError(f"labels must lie in [0, {V}) or equal ignore_index = {ignore_index}, "
                             f"got other values in [{lo}, {hi}]")
    return m


def antibody_head_args(H, W, labels, ignore_index, token_chunk, vocab_chunk,
                       to_numpy: Callable = np.asarray) -> tuple[np.ndarray, tuple]:
    """The token-level ops: ``H`` (B, T, d) and ``W`` (V, d) float arrays (the full check, ``b``
    included, is then ``pref_head(..., paired=False)`` inside the head), integer ``labels``
    (B, T) via :func:`ignore_labels`, chunk sizes. Returns (host bool mask, chunks)."""
    float_array(H, "H", ndims=(3,), allowed=FLOATS + ("bfloat16",))
    float_array(W, "W", ndims=(2,), allowed=FLOATS + ("bfloat16",))
    mask = ignore_labels(labels, ignore_index, tuple(H.shape[:2]), int(W.shape[0]), to_numpy)
    return mask, pref_chunks(token_chunk, vocab_chunk)


def _default_antibody_wstats(w) -> tuple[bool, float]:
    return bool((abs(w) < math.inf).all()), float(w.min())


def antibody_sample_weights(w, B: int, like, stats: Callable | None = None) -> None:
    """Sample weights ``w``: float (B,) of ``like``'s (H's) dtype, finite, >= 0 (they are
    treated as constants; the code's softmax weights sum to 1, but any w >= 0 is accepted).
    ``stats(w) -> (all finite, min)`` (one host read on GPU backends)."""
    float_array(w, "w", ndims=(1,), allowed=FLOATS + ("bfloat16",))
    same_dtype("H", like, "w", w)
    if tuple(w.shape) != (B,):
        raise ValueError(f"w must have shape ({B},) (one weight per row of H), got "
                         f"{tuple(w.shape)}")
    if B == 0:
        return
    ok, lo = (stats or _default_antibody_wstats)(w)
    if not ok:
        raise ValueError("w contains NaN or inf")
    if lo < 0:
        raise ValueError(f"w must be >= 0, got a minimum of {lo}")


def antibody_ce_variant(variant) -> str:
    return choice(variant, "variant", ANTIBODY_CE_VARIANTS)


def antibody_weights_args(nll_c, nll_r, tau, finite: Callable | None = None) -> tuple[int, float]:
    """``antibody_weights``: nll_c, nll_r float (B,) of one shape and dtype, B >= 1, finite
    (``finite(nll_c, nll_r) -> (bool, bool)``); ``tau > 0`` finite. Returns (B, tau)."""
    tau = positive_float(tau, "tau")
    float_array(nll_c, "nll_c", ndims=(1,), allowed=FLOATS + ("bfloat16",))
    float_array(nll_r, "nll_r", ndims=(1,), allowed=FLOATS + ("bfloat16",))
    same_dtype("nll_c", nll_c, "nll_r", nll_r)
    if tuple(nll_r.shape) != tuple(nll_c.shape):
        raise ValueError(f"nll_r must have the shape of nll_c {tuple(nll_c.shape)}, got "
                         f"{tuple(nll_r.shape)}")
    B = int(nll_c.shape[0])
    if B < 1:
        raise ValueError("nll_c has an empty batch (B = 0); B >= 1 is needed")
    ok_c, ok_r = (finite or _all_finite_each)(nll_c, nll_r)
    if not ok_c:
        raise ValueError("nll_c contains NaN or inf")
    if not ok_r:
        raise ValueError("nll_r contains NaN or inf")
    return B, tau


# ---- safety: IBDR
#
# IBDR (arXiv 2506.07247), reference refimpl._ibdr. Value checks of device arrays go through ONE
# callable per call, so a GPU backend needs one host read: ``stats(x, y)`` returns
# ``(all finite, min x, min y, max y)`` of the (K, B, C) input and the (B,) labels (compute the
# four numbers on the device, read them together), ``finite(*xs)`` returns one bool per array.
# Scalars that may arrive as 0-d arrays (``lam`` of dro_ascent, ``distance`` of the dual
# update) are read with ``to_numpy`` (one read each, documented by the backends).

IBDR_VARIANTS = ("code", "paper")
IBDR_DUAL_VARIANTS = ("code", "paper")
IBDR_INTS = ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64")


def _default_ibdr_stats(x, y) -> tuple[bool, float, int, int]:
    """``(all finite, min x, min y, max y)`` for NumPy, CuPy and torch arrays alike (non-empty)."""
    return bool((abs(x) < math.inf).all()), float(x.min()), int(y.min()), int(y.max())


def _ibdr_real(v, name: str, to_numpy: Callable) -> float:
    """:func:`_real_scalar`, finite."""
    v = _real_scalar(v, name, to_numpy)
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite, got {v}")
    return v


def ibdr_particles(x, y, name: str, nonneg: bool, need_diversity: bool, context: str = "",
                   stats: Callable | None = None) -> tuple[int, int, int]:
    """Particle outputs ``x`` (K, B, C) (``probs`` or ``logits``) of float32/float64, finite (and
    >= 0 when ``nonneg``), with integer labels ``y`` (B,) in [0, C); B >= 1. With the diversity
    term (``need_diversity``) K >= 2 and C >= 3, else K >= 1 and C >= 2. ``stats(x, y)`` is
    :func:`_default_ibdr_stats`' contract (one host read on GPU backends). Returns (K, B, C)."""
    float_array(x, name, ndims=(3,))
    if not hasattr(y, "shape") or not hasattr(y, "dtype"):
        raise TypeError(f"y must be an integer array (B,), got {type(y).__name__}")
    if dtype_name(y) not in IBDR_INTS:
        raise TypeError(f"y must be an integer array (class indices), got dtype {dtype_name(y)}")
    K, B, C = (int(s) for s in x.shape)
    if len(y.shape) != 1 or int(y.shape[0]) != B:
        raise ValueError(f"y must have shape (B,) = ({B},) (one label per row of {name} "
                         f"{tuple(x.shape)}), got {tuple(y.shape)}")
    if B < 1:
        raise ValueError(f"{name} has an empty batch (B = 0); B >= 1 is needed")
    if K < 1:
        raise ValueError(f"{name} must have K >= 1 particles, got K = 0")
    if need_diversity:
        if K < 2:
            raise ValueError(f"K >= 2 particles are needed for the diversity term{context}, "
                             f"got K = {K}")
        if C == 2:
            raise ValueError(f"{name} has C = 2 classes: every qh is the scalar 1 and LD is "
                             f"constant; the diversity term{context} needs C >= 3")
        if C < 3:
            raise ValueError(f"{name} must have C >= 3 classes for the diversity term{context}, "
                             f"got C = {C}")
    elif C < 2:
        raise ValueError(f"{name} must have C >= 2 classes, got C = {C}")
    ok, xmin, ymin, ymax = (stats or _default_ibdr_stats)(x, y)
    if not ok:
        raise ValueError(f"{name} contains NaN or inf")
    if nonneg and xmin < 0:
        raise ValueError(f"{name} must be >= 0 (probabilities), got a minimum of {xmin}")
    if ymin < 0 or ymax >= C:
        raise ValueError(f"y must hold class indices in [0, C) = [0, {C}), got values in "
                         f"[{ymin}, {ymax}]")
    return K, B, C


def ibdr_dpp_args(probs, y, jitter, stats: Callable | None = None) -> tuple[int, int, int, float]:
    """``dpp_logdet_diversity``: probs (K, B, C), K >= 2, C >= 3, finite, >= 0; y (B,) int in
    [0, C); ``jitter > 0``. Returns (K, B, C, jitter)."""
    K, B, C = ibdr_particles(probs, y, "probs", True, True, "", stats)
    return K, B, C, positive_float(jitter, "jitter")


def ibdr_loss_args(logits, y, alpha_div, jitter, variant,
                   stats: Callable | None = None) -> tuple[int, int, int, float, float, str]:
    """``ibdr_loss(_grad)``: logits (K, B, C) finite, y (B,) int in [0, C); ``alpha_div >= 0``
    finite (K >= 2 and C >= 3 when alpha_div != 0, else K >= 1 and C >= 2); ``jitter > 0``;
    ``variant`` in ("code", "paper"). Returns (K, B, C, alpha_div, jitter, variant)."""
    alpha_div = _finite_nonneg(alpha_div, "alpha_div")
    jitter = positive_float(jitter, "jitter")
    choice(variant, "variant", IBDR_VARIANTS)
    K, B, C = ibdr_particles(logits, y, "logits", False, alpha_div != 0,
                             " (alpha_div != 0)", stats)
    return K, B, C, alpha_div, jitter, variant


def ibdr_ascent_args(theta, g, lam, clip, finite: Callable | None = None,
                     to_numpy: Callable = np.asarray) -> tuple[int, float, float]:
    """``dro_ascent``: theta, g flat vectors (g finite); ``lam > 0`` finite (a Python number or a
    0-d array, read once); ``clip > 0`` finite. Returns (P, lam, clip)."""
    P = flat_vectors({"theta": theta, "g": g}, ("g",), finite)
    lam = _ibdr_real(lam, "lam", to_numpy)
    if lam <= 0:
        raise ValueError(f"lam must be > 0 (the ascent step is g / (2 lam)), got {lam}")
    clip = positive_float(clip, "clip")
    return P, lam, clip


def ibdr_prediction_pair(new, old, finite: Callable | None = None) -> tuple[int, int]:
    """``prediction_distance``: logits_bar_new, logits_bar_old float (B, C) of one shape and
    dtype, finite, B >= 1, C >= 2 (``finite(new, old) -> (bool, bool)``). Returns (B, C)."""
    float_array(new, "logits_bar_new", ndims=(2,))
    float_array(old, "logits_bar_old", ndims=(2,))
    same_dtype("logits_bar_new", new, "logits_bar_old", old)
    if tuple(old.shape) != tuple(new.shape):
        raise ValueError(f"logits_bar_old must have the shape of logits_bar_new "
                         f"{tuple(new.shape)}, got {tuple(old.shape)}")
    B, C = (int(s) for s in new.shape)
    if B < 1:
        raise ValueError("logits_bar_new has an empty batch (B = 0); B >= 1 is needed")
    if C < 2:
        raise ValueError(f"logits_bar_new must have C >= 2 classes, got C = {C}")
    ok_new, ok_old = (finite or _all_finite_each)(new, old)
    if not ok_new:
        raise ValueError("logits_bar_new contains NaN or inf")
    if not ok_old:
        raise ValueError("logits_bar_old contains NaN or inf")
    return B, C


def ibdr_dual_args(lam, distance, lr, bound, temp, lo, hi, variant,
                   to_numpy: Callable = np.asarray) -> tuple[float, ...]:
    """``ibdr_dual_update``: ``lam`` finite (>= 0 for "paper"), ``distance`` finite >= 0 (a
    Python number or a 0-d array, read to the host once), ``lr >= 0``, ``bound >= 0``,
    ``temp > 0``, ``0 <= lo <= hi`` (all finite), ``variant`` in ("code", "paper").
    ``variant="fisher"`` is refused with the reason (see refimpl._ibdr).
    Returns (lam, distance, lr, bound, temp, lo, hi, variant) as Python floats / str."""
    if variant == "fisher":
        raise ValueError("variant='fisher' is not implemented: the official code's symmetric-KL "
                         "ascent (utils.DRO.step1) steps by 1/(2 lam g), which looks like a bug; "
                         "use variant 'code' or 'paper'")
    choice(variant, "variant", IBDR_DUAL_VARIANTS)
    lam = _ibdr_real(lam, "lam", to_numpy)
    if variant == "paper" and lam < 0:
        raise ValueError(f"lam must be >= 0 for variant='paper' (projected onto lam >= 0), got {lam}")
    distance = _ibdr_real(distance, "distance", to_numpy)
    if distance < 0:
        raise ValueError(f"distance must be >= 0, got {distance}")
    lr, bound, lo, hi = (_finite_nonneg(v, name) for v, name in
                         ((lr, "lr"), (bound, "bound"), (lo, "lo"), (hi, "hi")))
    temp = positive_float(temp, "temp")
    if lo > hi:
        raise ValueError(f"lo must be <= hi, got lo = {lo}, hi = {hi}")
    return lam, distance, lr, bound, temp, lo, hi, variant


def ibdr_gram_not_positive_definite(jitter: float) -> ValueError:
    """A failed Cholesky of ``M_b = Qh_b Qh_b^T + jitter I`` (float64 on every backend)."""
    return ValueError(f"M_b = Qh_b Qh_b^T + jitter I is not numerically positive definite "
                      f"(jitter = {jitter}); use a larger jitter")


# ---- recsys: Mult-VAE and PIA
#
# Mult-VAE (arXiv 1802.05814) and the PIA anchor regulariser (arXiv 2511.06781), reference
# refimpl._multvae. Value checks of device arrays go through ONE callable per call so that a GPU
# backend needs one host read: ``flags(checks)`` receives a tuple of ``(kind, array)`` pairs
# with kind in RV_FLAG_KINDS and returns one bool per pair (compute every flag on the device,
# read them together). A CSR ``X`` is described by the caller: ``x_values`` = its stored values
# (scipy / cupyx ``X.data``, torch ``X.values()``), which must all be 1; a dense ``X`` must
# hold only 0 and 1. Scalars that may arrive as 0-d native arrays (``beta``, ``lam_A``) are read
# with ``to_numpy`` (one read each, documented by the backends). Every float array of one call
# (X or its stored values, params, mask, eps, E, logits, mu, logvar, z) has one dtype.

RV_PARAM_KEYS = ("W1", "b1", "W2", "b2", "W3", "b3", "W4", "b4")
RV_MASK_MODES = ("dropout", "bernoulli")
RV_REDUCTIONS = ("mean", "none", "sum")
RV_FLAG_KINDS = ("binary", "ones", "finite", "nonneg", "nonzero")


class RvShape(NamedTuple):
    U: int          # users (rows of X)
    I: int          # items (columns of X)
    H: int          # hidden width (0 where no params are involved)
    d: int          # latent size (0 where unknown)
    dtype: str      # the one float dtype of the call


def _rv_default_flags(checks) -> tuple[bool, ...]:
    """One bool per ``(kind, array)`` (NumPy, CuPy and torch arrays alike): "binary" every
    entry in {0, 1}; "ones" every entry 1; "finite" no NaN/inf; "nonneg" every entry >= 0;
    "nonzero" at least one entry != 0. Empty arrays pass all but "nonzero"."""
    out = []
    for kind, x in checks:
        if kind == "binary":
            ok = ((x == 0) | (x == 1)).all()
        elif kind == "ones":
            ok = (x == 1).all()
        elif kind == "finite":
            ok = (abs(x) < math.inf).all()
        elif kind == "nonneg":
            ok = (x >= 0).all()
        elif kind == "nonzero":
            ok = (x != 0).any()
        else:
            raise ValueError(f"unknown flag kind {kind!r}; expected one of {RV_FLAG_KINDS}")
        out.append(bool(ok))
    return tuple(out)


def _rv_run(checks: list, flags: Callable | None) -> None:
    """``checks``: list of ``(kind, array, message)``; one ``flags`` call, first failure raises."""
    if not checks:
        return
    got = (flags or _rv_default_flags)(tuple((k, x) for k, x, _ in checks))
    for (_, _, msg), ok in zip(checks, got):
        if not ok:
            raise ValueError(msg)


def _rv_X(X, x_values, name: str = "X") -> tuple[int, int, str, list]:
    """Shape, dtype and the value check of an interaction matrix (dense, or CSR with
    ``x_values``). Returns ``(U, I, dtype, checks)``."""
    if not hasattr(X, "shape"):
        raise TypeError(f"{name} must be a 2-D array or a CSR matrix, got {type(X).__name__}")
    if len(X.shape) != 2:
        raise ValueError(f"{name} must be 2-D (users x items), got shape {tuple(X.shape)}")
    U, I = (int(s) for s in X.shape)
    if x_values is None:
        float_array(X, name, ndims=(2,))
        dt = dtype_name(X)
        checks = [("binary", X, f"{name} must be binary (0/1 interactions), got values other "
                                f"than 0 and 1")]
    else:
        float_array(x_values, f"{name} (stored CSR values)", ndims=(1,))
        dt = dtype_name(x_values)
        checks = [("ones", x_values, f"{name} must be binary (0/1 interactions), got stored CSR "
                                     f"values other than 1 (drop explicit zeros with "
                                     f"eliminate_zeros())")]
    if U < 1 or I < 1:
        raise ValueError(f"{name} must have at least one user and one item, got shape {(U, I)}")
    return U, I, dt, checks


def _rv_like(x, name: str, want: tuple[int, ...], dt: str, what: str, ndims=None) -> None:
    """``x`` a float array of dtype ``dt`` and shape ``want`` (``what`` explains the shape)."""
    float_array(x, name, ndims=ndims or (len(want),))
    if dtype_name(x) != dt:
        raise TypeError(f"{name} must have X's dtype ({dt}), got {dtype_name(x)}")
    if tuple(int(s) for s in x.shape) != want:
        raise ValueError(f"{name} must have shape {what} = {want}, got {tuple(x.shape)}")


def rv_params(params, I: int, dt: str) -> tuple[int, int]:
    """``params``: a dict with (at least) the keys RV_PARAM_KEYS: W1 (I, H), b1 (H,), W2 (H, 2d),
    b2 (2d,), W3 (d, H), b3 (H,), W4 (H, I), b4 (I,), every one of dtype ``dt``; I from X.
    Returns ``(H, d)``."""
    if not isinstance(params, dict):
        raise TypeError(f"params must be a dict with keys {' '.join(RV_PARAM_KEYS)}, got "
                        f"{type(params).__name__}")
    missing = [k for k in RV_PARAM_KEYS if k not in params]
    if missing:
        raise ValueError(f"params is missing {', '.join(map(repr, missing))} (Mult-VAE needs "
                         f"{' '.join(RV_PARAM_KEYS)})")
    for k in RV_PARAM_KEYS:
        float_array(params[k], f"params['{k}']", ndims=(2,) if k[0] == "W" else (1,))
        if dtype_name(params[k]) != dt:
            raise TypeError(f"params['{k}'] must have X's dtype ({dt}), got "
                            f"{dtype_name(params[k])}")
    W1, W2 = params["W1"], params["W2"]
    if int(W1.shape[0]) != I or int(W1.shape[1]) < 1:
        raise ValueError(f"params['W1'] must have shape (I, H) with I = {I} (X's columns) and "
                         f"H >= 1, got {tuple(W1.shape)}")
    H = int(W1.shape[1])
    d2 = int(W2.shape[1])
    if int(W2.shape[0]) != H or d2 < 2 or d2 % 2:
        raise ValueError(f"params['W2'] must have shape (H, 2d) = ({H}, 2d) with d >= 1 (the mu "
                         f"and logvar halves), got {tuple(W2.shape)}")
    d = d2 // 2
    for k, want, what in (("b1", (H,), "(H,)"), ("b2", (2 * d,), "(2d,)"),
                          ("W3", (d, H), "(d, H)"), ("b3", (H,), "(H,)"),
                          ("W4", (H, I), "(H, I)"), ("b4", (I,), "(I,)")):
        if tuple(int(s) for s in params[k].shape) != want:
            raise ValueError(f"params['{k}'] must have shape {what} = {want}, got "
                             f"{tuple(params[k].shape)}")
    return H, d


def rv_keep_prob(keep_prob) -> float:
    if isinstance(keep_prob, bool) or not isinstance(keep_prob, numbers.Real):
        raise TypeError(f"keep_prob must be a real number in (0, 1], got "
                        f"{type(keep_prob).__name__}")
    kp = float(keep_prob)
    if not (0.0 < kp <= 1.0):
        raise ValueError(f"keep_prob must lie in (0, 1] (the probability of keeping an input "
                         f"entry), got {kp}")
    return kp


def rv_nonneg_scalar(v, name: str, to_numpy: Callable = np.asarray) -> float:
    """``beta`` / ``lam_A``: a finite number >= 0 (a Python number or a 0-d array, read once)."""
    v = _real_scalar(v, name, to_numpy)
    if not math.isfinite(v) or v < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {v}")
    return v


def _rv_model(X, params, mask, eps, keep_prob, mask_mode, x_values) -> tuple[RvShape, list]:
    U, I, dt, checks = _rv_X(X, x_values)
    H, d = rv_params(params, I, dt)
    choice(mask_mode, "mask_mode", RV_MASK_MODES)
    rv_keep_prob(keep_prob)
    if mask is not None:
        _rv_like(mask, "mask", (U, I), dt, "(U, I) (X's shape)")
        checks.append(("binary", mask, "mask must hold only 0 and 1 (keep / drop)"))
    if eps is not None:
        _rv_like(eps, "eps", (U, d), dt, "(U, d) (X's users, the latent size)")
        checks.append(("finite", eps, "eps contains NaN or inf"))
    return RvShape(U, I, H, d, dt), checks


def multvae_forward_args(X, params, mask, eps, keep_prob, mask_mode, x_values=None,
                         flags: Callable | None = None) -> RvShape:
    """``multvae_forward``: X (U, I) binary (dense, or CSR with ``x_values``), params (see
    :func:`rv_params`), mask None or (U, I) in {0, 1}, eps None or (U, d) finite, keep_prob in
    (0, 1], mask_mode in RV_MASK_MODES. One ``flags`` call."""
    shape, checks = _rv_model(X, params, mask, eps, keep_prob, mask_mode, x_values)
    _rv_run(checks, flags)
    return shape


def multvae_value_and_grad_args(X, params, beta, mask, eps, keep_prob, mask_mode, E, lam_A,
                                x_values=None, flags: Callable | None = None,
                                to_numpy: Callable = np.asarray) -> tuple[RvShape, float, float]:
    """``multvae_value_and_grad``: :func:`multvae_forward_args`, ``beta`` and ``lam_A`` finite
    >= 0, E None or (I, d) finite; with E, X must have at least one interaction (PIA's mean is
    over users with items). One ``flags`` call. Returns ``(shape, beta, lam_A)``."""
    beta = rv_nonneg_scalar(beta, "beta", to_numpy)
    lam_A = rv_nonneg_scalar(lam_A, "lam_A", to_numpy)
    shape, checks = _rv_model(X, params, mask, eps, keep_prob, mask_mode, x_values)
    if E is not None:
        _rv_like(E, "E", (shape.I, shape.d), shape.dtype, "(I, d) (X's items, the latent size)")
        checks.append(("finite", E, "E contains NaN or inf"))
        checks.append(("nonzero", X if x_values is None else x_values,
                       "X has no interactions: every user row is empty, the PIA anchor loss "
                       "(a mean over users with items) is undefined"))
    _rv_run(checks, flags)
    return shape, beta, lam_A


def multvae_loss_args(X, logits, mu, logvar, beta, x_values=None, flags: Callable | None = None,
                      to_numpy: Callable = np.asarray) -> tuple[RvShape, float]:
    """``multvae_loss``: X (U, I) binary, logits (U, I), mu and logvar (U, d), d >= 1, one dtype,
    finite; beta finite >= 0. One ``flags`` call. Returns ``(shape, beta)`` (H = 0)."""
    beta = rv_nonneg_scalar(beta, "beta", to_numpy)
    U, I, dt, checks = _rv_X(X, x_values)
    _rv_like(logits, "logits", (U, I), dt, "(U, I) (X's shape)")
    d = _rv_mu_logvar(mu, logvar, U, dt, checks)
    checks.insert(-2, ("finite", logits, "logits contains NaN or inf"))
    _rv_run(checks, flags)
    return RvShape(U, I, 0, d, dt), beta


def _rv_mu_logvar(mu, logvar, U: int, dt: str, checks: list) -> int:
    """mu and logvar (U, d), d >= 1, of X's dtype; appends their finiteness checks. Returns d."""
    float_array(mu, "mu", ndims=(2,))
    d = int(mu.shape[1])
    _rv_like(mu, "mu", (U, d), dt, "(U, d) (X's users)")
    if d < 1:
        raise ValueError(f"mu must have a latent size d >= 1, got shape {tuple(mu.shape)}")
    _rv_like(logvar, "logvar", (U, d), dt, "(U, d) (mu's shape)")
    checks += [("finite", mu, "mu contains NaN or inf"),
               ("finite", logvar, "logvar contains NaN or inf")]
    return d


def _rv_latent_pair(mu, logvar, X, x_values) -> tuple[int, int, int, str, list]:
    U, I, dt, checks = _rv_X(X, x_values)
    d = _rv_mu_logvar(mu, logvar, U, dt, checks)
    return U, I, d, dt, checks


def pia_args(mu, logvar, X, E, reduction="mean", z=None, x_values=None,
             flags: Callable | None = None) -> tuple[RvShape, int | None]:
    """``pia_anchor_loss`` / ``pia_anchor_grad``: mu, logvar (U, d) finite; X (U, I) binary with
    at least one interaction ("X has no interactions" otherwise, for every reduction); E (I, d)
    finite; reduction in RV_REDUCTIONS; z None or (S, U, d), S >= 1, finite. One dtype, one
    ``flags`` call. Returns ``(shape, S or None)`` (H = 0)."""
    choice(reduction, "reduction", RV_REDUCTIONS)
    U, I, d, dt, checks = _rv_latent_pair(mu, logvar, X, x_values)
    _rv_like(E, "E", (I, d), dt, "(I, d) (X's items, mu's latent size)")
    checks.append(("finite", E, "E contains NaN or inf"))
    S = None
    if z is not None:
        float_array(z, "z", ndims=(3,))
        S = int(z.shape[0])
        _rv_like(z, "z", (S, U, d), dt, "(S, U, d) (samples, mu's shape)")
        if S < 1:
            raise ValueError("z must hold S >= 1 samples, got S = 0")
        checks.append(("finite", z, "z contains NaN or inf"))
    checks.append(("nonzero", X if x_values is None else x_values,
                   "X has no interactions: every user row is empty, the PIA anchor loss (a mean "
                   "over users with items) is undefined"))
    _rv_run(checks, flags)
    return RvShape(U, I, 0, d, dt), S


def item_centroids_args(X, E, x_values=None, flags: Callable | None = None) -> RvShape:
    """``item_centroids``: X (U, I) binary (empty rows allowed: their centroid is 0), E (I, d)
    finite, d >= 1, X's dtype. One ``flags`` call."""
    U, I, dt, checks = _rv_X(X, x_values)
    float_array(E, "E", ndims=(2,))
    d = int(E.shape[1])
    _rv_like(E, "E", (I, d), dt, "(I, d) (X's items)")
    if d < 1:
        raise ValueError(f"E must have d >= 1 columns, got shape {tuple(E.shape)}")
    checks.append(("finite", E, "E contains NaN or inf"))
    _rv_run(checks, flags)
    return RvShape(U, I, 0, d, dt)


def gaussian_w2_args(mu1, s1, mu2, s2, flags: Callable | None = None) -> tuple[int, int]:
    """``gaussian_w2``: four float arrays (U, d) of one shape and dtype, finite, s1 and s2 >= 0
    (standard deviations). One ``flags`` call. Returns ``(U, d)``."""
    float_array(mu1, "mu1", ndims=(2,))
    dt = dtype_name(mu1)
    want = tuple(int(s) for s in mu1.shape)
    names = ("mu1", "s1", "mu2", "s2")
    for name, x in zip(names[1:], (s1, mu2, s2)):
        float_array(x, name, ndims=(2,))
        if dtype_name(x) != dt:
            raise TypeError(f"{name} must have mu1's dtype ({dt}), got {dtype_name(x)}")
        if tuple(int(s) for s in x.shape) != want:
            raise ValueError(f"{name} must have mu1's shape {want} (U, d), got {tuple(x.shape)}")
    checks = [("finite", x, f"{n} contains NaN or inf") for n, x in zip(names, (mu1, s1, mu2, s2))]
    checks += [("nonneg", s1, "s1 must be >= 0 (standard deviations)"),
               ("nonneg", s2, "s2 must be >= 0 (standard deviations)")]
    _rv_run(checks, flags)
    return want


def anneal_beta_args(step, cap, total_anneal_steps) -> tuple[int, float, int]:
    """``anneal_beta``: step an int >= 0 (updates already made), cap finite >= 0,
    total_anneal_steps an int >= 0 (0: beta = cap, as the official code)."""
    step = positive_int(step, "step", minimum=0)
    cap = _finite_nonneg(cap, "cap")
    total = positive_int(total_anneal_steps, "total_anneal_steps", minimum=0)
    return step, cap, total


def multvae_sizes(n_items, hidden, latent, n_users=None) -> tuple[int, ...]:
    """``multvae_init`` / ``multvae_draw`` sizes: ints >= 1."""
    out = [positive_int(n_items, "n_items"), positive_int(hidden, "hidden"),
           positive_int(latent, "latent")]
    if n_users is not None:
        out.append(positive_int(n_users, "n_users"))
    return tuple(out)


# ---- recsys: evaluation
#
# Mult-VAE ranking metrics and the strong-generalisation split (arXiv 1802.05814), reference
# refimpl._recsys_eval. Shapes and dtypes are read from the arrays' metadata; the value checks
# of device arrays go through ONE callable per call so that a GPU backend needs one host read:
# ``stats(scores, X_fold, X_heldout)`` returns ``(scores ok, X_fold binary, X_heldout binary,
# number of overlapping (user, item) pairs)`` (scores ok: no NaN and no +inf), and
# ``stats(X_train)`` of the popularity baseline ``(binary, number of interactions)``. Interaction
# matrices are dense arrays of any numeric dtype or bool, or CSR (scipy / cupyx ``csr_matrix``,
# torch ``sparse_csr`` tensors, or any object with ``shape``, ``data``, ``indices``, ``indptr``);
# for CSR the stored values are what must be 0/1.

RV_INTERACTION_DTYPES = ("bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32",
                         "uint64", "float16", "bfloat16", "float32", "float64")


def rv_is_csr(X) -> bool:
    """Whether ``X`` is a CSR matrix (scipy/cupyx, a torch ``sparse_csr`` tensor, or any object
    with ``shape``, ``data``, ``indices`` and ``indptr``)."""
    layout = getattr(X, "layout", None)
    if layout is not None and "sparse_csr" in str(layout):
        return True
    return all(hasattr(X, a) for a in ("shape", "data", "indices", "indptr"))


def rv_interactions(X, name: str, shape: tuple[int, int] | None = None) -> tuple[int, int]:
    """``X`` a 2-D 0/1 interaction matrix, dense (numeric or bool dtype) or CSR, of ``shape``
    when given (``(U, I)``, the scores' shape). Metadata only; returns (U, I)."""
    if not hasattr(X, "shape"):
        raise TypeError(f"{name} must be a 2-D array or a CSR matrix, got {type(X).__name__}")
    layout = str(getattr(X, "layout", ""))
    fmt = getattr(X, "format", None)
    if ("sparse" in layout and "sparse_csr" not in layout) or (fmt is not None and fmt != "csr"):
        raise TypeError(f"{name} must be a dense array or a CSR matrix, got "
                        f"{type(X).__name__} ({fmt or layout})")
    csr = rv_is_csr(X)
    dt_src = X if hasattr(X, "dtype") else (X.data if csr else None)
    if dt_src is None:
        raise TypeError(f"{name} must be a 2-D array or a CSR matrix, got {type(X).__name__}")
    dt = dtype_name(dt_src)
    if dt not in RV_INTERACTION_DTYPES:
        raise TypeError(f"{name} must have a numeric or bool dtype (0/1 interactions), got {dt}")
    if len(X.shape) != 2:
        raise ValueError(f"{name} must be 2-D (users, items), got shape {tuple(X.shape)}")
    got = (int(X.shape[0]), int(X.shape[1]))
    if shape is not None and got != tuple(shape):
        raise ValueError(f"{name} must have the shape of scores (U, I) = {tuple(shape)}, got {got}")
    return got


def _rv_stored(X):
    """Stored values: the CSR data vector, else the dense array itself."""
    if rv_is_csr(X):
        return X.values() if hasattr(X, "values") and callable(X.values) else X.data
    return X


def _rv_dense_nonzero(X):
    """Host bool (U, I) of a NumPy array or scipy CSR (the reference's default stats)."""
    return (X.toarray() if hasattr(X, "toarray") else np.asarray(X)) != 0


def _default_rv_metric_stats(scores, X_fold, X_heldout) -> tuple[bool, bool, bool, int]:
    """NumPy / scipy version of the metric ``stats`` contract (section comment)."""
    s = np.asarray(scores)
    scores_ok = not bool(np.isnan(s).any() or (s == np.inf).any())
    binary = []
    for X in (X_fold, X_heldout):
        v = np.asarray(_rv_stored(X))
        binary.append(bool(((v == 0) | (v == 1)).all()))
    overlap = int((_rv_dense_nonzero(X_fold) & _rv_dense_nonzero(X_heldout)).sum())
    return scores_ok, binary[0], binary[1], overlap


def rv_k(k) -> int:
    """The cut-off: an int >= 1 (any size; k > I gives a shorter list)."""
    if isinstance(k, bool) or not isinstance(k, numbers.Integral):
        raise TypeError(f"k must be an int >= 1, got {type(k).__name__}")
    if k < 1:
        raise ValueError(f"k must be an int >= 1, got {k}")
    return int(k)


def rv_metric_args(scores, X_fold, X_heldout, k, stats: Callable | None = None
                   ) -> tuple[int, int, int]:
    """``recall_at_k`` / ``ndcg_at_k``: ``scores`` (U, I) float32/float64 with U, I >= 1, no NaN
    or +inf (-inf: the item is not ranked); ``X_fold``, ``X_heldout`` 0/1 of the scores' shape
    (:func:`rv_interactions`), disjoint; ``k`` int >= 1. ``stats`` as in the section comment
    (one host read on GPU backends). Returns (U, I, k)."""
    float_array(scores, "scores", ndims=(2,))
    U, I = (int(s) for s in scores.shape)
    if U < 1 or I < 1:
        raise ValueError(f"scores must have at least one user and one item, got shape {(U, I)}")
    rv_interactions(X_fold, "X_fold", (U, I))
    rv_interactions(X_heldout, "X_heldout", (U, I))
    k = rv_k(k)
    scores_ok, fold_ok, held_ok, overlap = (stats or _default_rv_metric_stats)(
        scores, X_fold, X_heldout)
    if not scores_ok:
        raise ValueError("scores contains NaN or +inf (-inf is allowed: that item is not ranked)")
    if not fold_ok:
        raise ValueError("X_fold must be binary (0/1 interactions), got values outside {0, 1}")
    if not held_ok:
        raise ValueError("X_heldout must be binary (0/1 interactions), got values outside {0, 1}")
    if overlap:
        raise ValueError(f"X_fold and X_heldout overlap in {int(overlap)} (user, item) pairs: a "
                         f"held-out target cannot also be a fold-in item")
    return U, I, k


def _default_rv_popularity_stats(X_train) -> tuple[bool, int]:
    v = np.asarray(_rv_stored(X_train))
    return bool(((v == 0) | (v == 1)).all()), int(np.count_nonzero(v))


def rv_popularity_args(X_train, n_users, stats: Callable | None = None) -> tuple[int, int]:
    """``popularity_scores``: ``X_train`` 0/1 (dense or CSR, :func:`rv_interactions`) with at
    least one interaction and I >= 1 items; ``n_users`` an int >= 1. ``stats(X_train) ->
    (binary, number of interactions)``. Returns (n_users, I)."""
    _, I = rv_interactions(X_train, "X_train")
    if isinstance(n_users, bool) or not isinstance(n_users, numbers.Integral):
        raise TypeError(f"n_users must be an int >= 1, got {type(n_users).__name__}")
    if n_users < 1:
        raise ValueError(f"n_users must be an int >= 1, got {n_users}")
    if I < 1:
        raise ValueError(f"X_train must have at least one item column, got shape "
                         f"{tuple(X_train.shape)}")
    binary, count = (stats or _default_rv_popularity_stats)(X_train)
    if not binary:
        raise ValueError("X_train must be binary (0/1 interactions), got values outside {0, 1}")
    if not count:
        raise ValueError("X_train has no interactions (the popularity of every item is 0)")
    return int(n_users), I


def rv_split_args(users, items, ratings, n_heldout, test_prop, seed, min_rating, min_items):
    """``split_strong_generalization`` (reference only, host arrays): ``users``, ``items``
    integer id arrays (n,), ``ratings`` real (n,) without NaN, n >= 1, one row per (user, item)
    pair; ``n_heldout`` int >= 1; ``0 < test_prop < 1``; ``seed`` an int in [0, 2**32);
    ``min_rating`` finite; ``min_items`` int >= 1. Returns the host arrays and the scalars."""
    arrs = []
    for name, x in (("users", users), ("items", items), ("ratings", ratings)):
        a = host_array(x, name)
        if a.ndim != 1:
            raise ValueError(f"{name} must be 1-D (one entry per rating), got shape {a.shape}")
        arrs.append(a)
    users, items, ratings = arrs
    for name, a in (("users", users), ("items", items)):
        if a.dtype.kind not in "iu":
            raise TypeError(f"{name} must be an integer id array, got dtype {a.dtype}")
    if ratings.dtype.kind not in "iuf":
        raise TypeError(f"ratings must be a real array, got dtype {ratings.dtype}")
    n = users.shape[0]
    if n < 1:
        raise ValueError("users is empty: the ratings table has no rows")
    for name, a in (("items", items), ("ratings", ratings)):
        if a.shape[0] != n:
            raise ValueError(f"{name} must have the length of users ({n}), got {a.shape[0]}")
    ratings = ratings.astype(np.float64)
    if np.isnan(ratings).any():
        raise ValueError("ratings contains NaN")
    n_heldout = positive_int(n_heldout, "n_heldout")
    if isinstance(test_prop, bool) or not isinstance(test_prop, numbers.Real):
        raise TypeError(f"test_prop must be a real number in (0, 1), got {type(test_prop).__name__}")
    test_prop = float(test_prop)
    if not 0 < test_prop < 1:
        raise ValueError(f"test_prop must lie in (0, 1), got {test_prop}")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    if not 0 <= seed < 2 ** 32:
        raise ValueError(f"seed must lie in [0, 2**32) (np.random.seed), got {seed}")
    if isinstance(min_rating, bool) or not isinstance(min_rating, numbers.Real):
        raise TypeError(f"min_rating must be a real number, got {type(min_rating).__name__}")
    min_rating = float(min_rating)
    if not math.isfinite(min_rating):
        raise ValueError(f"min_rating must be finite, got {min_rating}")
    min_items = positive_int(min_items, "min_items")
    pairs = np.stack([users.astype(np.int64), items.astype(np.int64)], axis=1)
    uniq, counts = np.unique(pairs, axis=0, return_counts=True)
    if (counts > 1).any():
        u, i = uniq[np.argmax(counts > 1)]
        raise ValueError(f"the ratings table has {int((counts > 1).sum())} duplicate (user, item) "
                         f"pairs (e.g. user {u}, item {i}); keep one row per pair")
    return users, items, ratings, n_heldout, test_prop, int(seed), min_rating, min_items


# ---- gnn: layers
#
# Graph layers of the gnn family (arXiv 2507.07298; PyG semantics, messages flow
# ``edge_index[0]`` (source) -> ``edge_index[1]`` (destination)), reference refimpl._gnn_layers.
# Shapes, dtypes and Python scalars are read from the arrays' metadata. The VALUE checks (node
# indices inside [0, N), edge weights / attributes finite, GCN edge weights >= 0) go through ONE
# callable per call so that a GPU backend validates with one host read:
# ``stats(requests)`` receives a tuple of ``(kind, array)`` pairs with kind in GNN_STAT_KINDS and
# returns one real number per pair, in order:
#   "min" / "max"  the smallest / largest entry (+inf / -inf for an empty array),
#   "nonfinite"    the number of NaN / inf entries (0 for an empty array);
# compute them on the device, stack them into one vector and read it once. Integer index arrays
# (``edge_index``, ``dst``) may have any integer dtype (int64 and int32 in practice); the float
# arrays of one call (X, weights, G, ...) share X's dtype (float32 or float64), except in
# ``gcn_norm`` / ``add_self_loops``, which have no X (edge_weight: either float dtype).

GNN_STAT_KINDS = ("min", "max", "nonfinite")
GNN_LOOP_MODES = ("remaining", "replace")


class GnnShape(NamedTuple):
    N: int          # nodes (X's rows)
    E: int          # input edges (edge_index's columns)
    F: int          # input features (X's columns)
    F_out: int      # output features
    dtype: str      # the one float dtype of the call


class GatShape(NamedTuple):
    N: int
    E: int
    F: int
    heads: int      # from a_src's shape (heads, C)
    C: int          # channels per head
    D: int          # edge-attribute width (0 without edge_attr)
    F_out: int      # heads*C if concat else C
    dtype: str


class GinShape(NamedTuple):
    N: int
    E: int
    F: int
    hidden: int     # W1's columns
    F_out: int      # W2's columns
    dtype: str


def _gnn_default_stats(requests) -> tuple[float, ...]:
    """The ``stats`` contract of this section for NumPy arrays (and torch CPU tensors)."""
    out = []
    for kind, x in requests:
        a = np.asarray(x)
        if kind == "min":
            out.append(float(a.min()) if a.size else math.inf)
        elif kind == "max":
            out.append(float(a.max()) if a.size else -math.inf)
        elif kind == "nonfinite":
            out.append(float(np.count_nonzero(~np.isfinite(a))))
        else:
            raise ValueError(f"unknown stat kind {kind!r}; expected one of {GNN_STAT_KINDS}")
    return tuple(out)


def _gnn_run(checks: list, stats: Callable | None) -> None:
    """``checks``: list of ``(kind, array, ok(value) -> bool, message(value) -> str)``; ONE
    ``stats`` call for all of them, the first failing check raises ValueError."""
    if not checks:
        return
    values = (stats or _gnn_default_stats)(tuple((k, x) for k, x, _, _ in checks))
    for (_, _, ok, msg), v in zip(checks, values):
        v = float(v)
        if not ok(v):
            raise ValueError(msg(v))


def gnn_n_nodes(n_nodes) -> int:
    """``n_nodes``: an int >= 1."""
    return positive_int(n_nodes, "n_nodes")


def gnn_bool(v, name: str) -> bool:
    """A Python (or NumPy) bool flag (``improved``, ``add_loops``, ``normalize``, ``concat``)."""
    if not isinstance(v, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {type(v).__name__}")
    return bool(v)


def _gnn_index_checks(x, name: str, N: int) -> list:
    """The range checks of an index array: every entry in [0, N)."""
    return [("max", x, lambda v: v < N,
             lambda v: f"{name} has node indices outside [0, {N}): max {int(v)}"),
            ("min", x, lambda v: v >= 0,
             lambda v: f"{name} has node indices outside [0, {N}): min {int(v)}")]


def gnn_edge_index(edge_index, N: int, name: str = "edge_index") -> tuple[int, list]:
    """``edge_index``: an integer array (2, E), E >= 0. Returns ``(E, range checks)`` (the
    checks go to one ``stats`` call with the caller's other value checks)."""
    if not hasattr(edge_index, "shape") or not hasattr(edge_index, "dtype"):
        raise TypeError(f"{name} must be an integer array of shape (2, E), got "
                        f"{type(edge_index).__name__}")
    dt = dtype_name(edge_index)
    if dt not in _INT_DTYPES:
        raise TypeError(f"{name} must be an integer array, got {dt}")
    if len(edge_index.shape) != 2 or int(edge_index.shape[0]) != 2:
        raise ValueError(f"{name} must have shape (2, E) (sources, destinations), got "
                         f"{tuple(edge_index.shape)}")
    return int(edge_index.shape[1]), _gnn_index_checks(edge_index, name, N)


def gnn_nodes(X) -> tuple[int, int, str]:
    """Node features ``X`` (N, F), float32/float64, N >= 1. Returns ``(N, F, dtype)``."""
    float_array(X, "X", ndims=(2,))
    N, F = (int(s) for s in X.shape)
    if N < 1:
        raise ValueError(f"X must have at least one node (row), got shape {(N, F)}")
    return N, F, dtype_name(X)


def _gnn_like(x, name: str, want: tuple[int, ...], dt: str | None, what: str) -> None:
    """``x`` a float array of shape ``want`` (``what`` explains it) and dtype ``dt`` (X's)."""
    float_array(x, name, ndims=(len(want),))
    if dt is not None and dtype_name(x) != dt:
        raise TypeError(f"{name} must have X's dtype ({dt}), got {dtype_name(x)}")
    if tuple(int(s) for s in x.shape) != tuple(want):
        raise ValueError(f"{name} must have shape {what} = {tuple(want)}, got {tuple(x.shape)}")


def _gnn_matrix(x, name: str, rows: int, dt: str, what: str) -> int:
    """A 2-D float array of X's dtype with ``rows`` rows and >= 1 columns (``what`` names the
    expected shape and where ``rows`` comes from). Returns the column count."""
    float_array(x, name, ndims=(2,))
    if dtype_name(x) != dt:
        raise TypeError(f"{name} must have X's dtype ({dt}), got {dtype_name(x)}")
    if int(x.shape[0]) != rows or int(x.shape[1]) < 1:
        raise ValueError(f"{name} must have shape {what} = {rows}, got {tuple(x.shape)}")
    return int(x.shape[1])


def gnn_fill(fill) -> float | str:
    """``fill``: a finite real number or ``"mean"``."""
    if isinstance(fill, str):
        if fill != "mean":
            raise ValueError(f"fill must be a real number or 'mean', got {fill!r}")
        return fill
    if isinstance(fill, bool) or not isinstance(fill, numbers.Real):
        raise TypeError(f"fill must be a real number or 'mean', got {type(fill).__name__}")
    v = float(fill)
    if not math.isfinite(v):
        raise ValueError(f"fill must be finite, got {v}")
    return v


def _gnn_weight_checks(w, name: str, nonneg: bool) -> list:
    checks = [("nonfinite", w, lambda v: v == 0,
               lambda v: f"{name} contains NaN or inf ({int(v)} entries)")]
    if nonneg:
        checks.append(("min", w, lambda v: v >= 0,
                       lambda v: f"{name} must be non-negative for GCN normalisation; min {v:g}"))
    return checks


def _gnn_edge_weight(edge_weight, E: int, dt: str | None) -> None:
    """``edge_weight`` (E,) float (of X's dtype where there is an X)."""
    _gnn_like(edge_weight, "edge_weight", (E,), dt, "(E,) (one weight per edge of edge_index)")


def gnn_to_csr_args(edge_index, n_nodes, stats: Callable | None = None) -> tuple[int, int]:
    """``to_csr``: n_nodes int >= 1, edge_index (2, E) integer in [0, n_nodes). One ``stats``
    call. Returns ``(N, E)``."""
    N = gnn_n_nodes(n_nodes)
    E, checks = gnn_edge_index(edge_index, N)
    _gnn_run(checks, stats)
    return N, E


def gnn_self_loops_args(edge_index, n_nodes, edge_weight, fill, mode,
                        stats: Callable | None = None) -> tuple[int, int, float | str, str]:
    """``add_self_loops``: as :func:`gnn_to_csr_args`; edge_weight None, (E,) or (E, D) float
    (values not checked: they are only moved, or averaged for ``fill="mean"``); fill a finite
    real or "mean"; mode in GNN_LOOP_MODES. One ``stats`` call. Returns ``(N, E, fill, mode)``."""
    N = gnn_n_nodes(n_nodes)
    E, checks = gnn_edge_index(edge_index, N)
    fill = gnn_fill(fill)
    choice(mode, "mode", GNN_LOOP_MODES)
    if edge_weight is not None:
        float_array(edge_weight, "edge_weight", ndims=(1, 2))
        if int(edge_weight.shape[0]) != E:
            raise ValueError(f"edge_weight must have E = {E} rows (one per edge of edge_index), "
                             f"got shape {tuple(edge_weight.shape)}")
    _gnn_run(checks, stats)
    return N, E, fill, mode


def gnn_norm_args(edge_index, n_nodes, edge_weight, improved, add_loops,
                  stats: Callable | None = None) -> tuple[int, int]:
    """``gcn_norm``: as :func:`gnn_to_csr_args`; edge_weight None or (E,) float, finite, >= 0;
    improved and add_loops bools. One ``stats`` call. Returns ``(N, E)``."""
    N = gnn_n_nodes(n_nodes)
    E, checks = gnn_edge_index(edge_index, N)
    gnn_bool(improved, "improved")
    gnn_bool(add_loops, "add_loops")
    if edge_weight is not None:
        _gnn_edge_weight(edge_weight, E, None)
        checks += _gnn_weight_checks(edge_weight, "edge_weight", True)
    _gnn_run(checks, stats)
    return N, E


def gcn_layer_args(X, edge_index, W, b, edge_weight, improved, add_loops, normalize, G=None,
                   stats: Callable | None = None) -> GnnShape:
    """``gcn_layer`` / ``gcn_layer_vjp``: X (N, F); edge_index (2, E) in [0, N); W (F, F_out);
    b None or (F_out,); edge_weight None or (E,), finite, and >= 0 when ``normalize``; improved,
    add_loops, normalize bools; G None or (N, F_out) (the cotangent of H). One float dtype, one
    ``stats`` call."""
    N, F, dt = gnn_nodes(X)
    E, checks = gnn_edge_index(edge_index, N)
    F_out = _gnn_matrix(W, "W", F, dt, "(F, F_out) with F_out >= 1 and F = X.shape[1]")
    if b is not None:
        _gnn_like(b, "b", (F_out,), dt, "(F_out,) (W's columns)")
    gnn_bool(improved, "improved")
    gnn_bool(add_loops, "add_loops")
    normalize = gnn_bool(normalize, "normalize")
    if edge_weight is not None:
        _gnn_edge_weight(edge_weight, E, dt)
        checks += _gnn_weight_checks(edge_weight, "edge_weight", normalize)
    if G is not None:
        _gnn_like(G, "G", (N, F_out), dt, "(N, F_out) (the shape of H)")
    _gnn_run(checks, stats)
    return GnnShape(N, E, F, F_out, dt)


def segment_softmax_args(scores, dst, n_nodes, G=None, stats: Callable | None = None
                         ) -> tuple[int, int, str]:
    """``segment_softmax`` / ``_vjp``: scores (E,) or (E, H) float (values not checked: NaN and
    inf propagate as in PyG); dst (E,) integer in [0, n_nodes); n_nodes int >= 1; G None or of
    the scores' shape and dtype. One ``stats`` call. Returns ``(N, E, dtype)``."""
    float_array(scores, "scores", ndims=(1, 2))
    dt = dtype_name(scores)
    E = int(scores.shape[0])
    N = gnn_n_nodes(n_nodes)
    if not hasattr(dst, "shape") or not hasattr(dst, "dtype"):
        raise TypeError(f"dst must be an integer array of shape (E,), got {type(dst).__name__}")
    if dtype_name(dst) not in _INT_DTYPES:
        raise TypeError(f"dst must be an integer array, got {dtype_name(dst)}")
    if tuple(int(s) for s in dst.shape) != (E,):
        raise ValueError(f"dst must have shape (E,) = ({E},) (one destination per row of "
                         f"scores), got {tuple(dst.shape)}")
    if G is not None:
        want = tuple(int(s) for s in scores.shape)
        float_array(G, "G", ndims=(len(want),))
        if dtype_name(G) != dt:
            raise TypeError(f"G must have the dtype of scores ({dt}), got {dtype_name(G)}")
        if tuple(int(s) for s in G.shape) != want:
            raise ValueError(f"G must have the shape of scores {want}, got {tuple(G.shape)}")
    _gnn_run(_gnn_index_checks(dst, "dst", N), stats)
    return N, E, dt


def gnn_negative_slope(v) -> float:
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise TypeError(f"negative_slope must be a real number >= 0, got {type(v).__name__}")
    v = float(v)
    if not math.isfinite(v) or v < 0:
        raise ValueError(f"negative_slope must be a finite number >= 0, got {v}")
    return v


def gat_layer_args(X, edge_index, W, a_src, a_dst, b, edge_attr, W_e, a_e, negative_slope,
                   concat, add_loops, fill, G=None, stats: Callable | None = None) -> GatShape:
    """``gat_layer`` / ``gat_layer_vjp``: X (N, F); edge_index (2, E) in [0, N); a_src
    (heads, C) with heads, C >= 1 (they define heads and C); W (F, heads*C); a_dst (heads, C);
    b None or (heads*C,) if concat else (C,); edge_attr, W_e, a_e all None or all given:
    edge_attr (E, D) finite, D >= 1, W_e (D, heads*C), a_e (heads, C); negative_slope finite
    >= 0; concat, add_loops bools; fill a finite real or "mean"; G None or (N, F_out). One float
    dtype, one ``stats`` call."""
    N, F, dt = gnn_nodes(X)
    E, checks = gnn_edge_index(edge_index, N)
    float_array(a_src, "a_src", ndims=(2,))
    heads, C = (int(s) for s in a_src.shape)
    if heads < 1 or C < 1:
        raise ValueError(f"a_src must have shape (heads, C) with heads, C >= 1, got {(heads, C)}")
    if dtype_name(a_src) != dt:
        raise TypeError(f"a_src must have X's dtype ({dt}), got {dtype_name(a_src)}")
    HC = heads * C
    float_array(W, "W", ndims=(2,))
    if tuple(int(s) for s in W.shape) != (F, HC):
        raise ValueError(f"W must have shape (F, heads*C) with F = X.shape[1] = {F} and "
                         f"heads*C = {heads}*{C} = {HC} (a_src's shape), got {tuple(W.shape)}")
    _gnn_like(W, "W", (F, HC), dt, "(F, heads*C)")
    _gnn_like(a_dst, "a_dst", (heads, C), dt, "(heads, C) (a_src's shape)")
    concat = gnn_bool(concat, "concat")
    gnn_bool(add_loops, "add_loops")
    gnn_negative_slope(negative_slope)
    gnn_fill(fill)
    F_out = HC if concat else C
    if b is not None:
        _gnn_like(b, "b", (F_out,), dt, "(heads*C,) with concat" if concat else
                  "(C,) without concat (head mean)")
    given = [n for n, v in (("edge_attr", edge_attr), ("W_e", W_e), ("a_e", a_e)) if v is not None]
    if given and len(given) != 3:
        missing = [n for n in ("edge_attr", "W_e", "a_e") if n not in given]
        raise ValueError(f"{' and '.join(given)} given without {' and '.join(missing)}: the edge "
                         f"term needs edge_attr (E, D), W_e (D, heads*C) and a_e (heads, C) "
                         f"together")
    D = 0
    if edge_attr is not None:
        float_array(edge_attr, "edge_attr", ndims=(2,))
        D = int(edge_attr.shape[1])
        if int(edge_attr.shape[0]) != E or D < 1:
            raise ValueError(f"edge_attr must have shape (E, D) with E = {E} (edge_index's "
                             f"columns) and D >= 1, got {tuple(edge_attr.shape)}")
        _gnn_like(edge_attr, "edge_attr", (E, D), dt, "(E, D)")
        _gnn_like(W_e, "W_e", (D, HC), dt, "(D, heads*C) (edge_attr's width, W's columns)")
        _gnn_like(a_e, "a_e", (heads, C), dt, "(heads, C) (a_src's shape)")
        checks.append(("nonfinite", edge_attr, lambda v: v == 0,
                       lambda v: f"edge_attr contains NaN or inf ({int(v)} entries)"))
    if G is not None:
        _gnn_like(G, "G", (N, F_out), dt, "(N, heads*C)" if concat else "(N, C)")
    _gnn_run(checks, stats)
    return GatShape(N, E, F, heads, C, D, F_out, dt)


def gnn_eps(eps) -> float:
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real):
        raise TypeError(f"eps must be a real number, got {type(eps).__name__}")
    v = float(eps)
    if not math.isfinite(v):
        raise ValueError(f"eps must be finite, got {v}")
    return v


def gin_layer_args(X, edge_index, W1, b1, W2, b2, eps, G=None, stats: Callable | None = None
                   ) -> GinShape:
    """``gin_layer`` / ``gin_layer_vjp``: X (N, F); edge_index (2, E) in [0, N); W1 (F, hidden),
    b1 (hidden,), W2 (hidden, F_out), b2 (F_out,); eps finite; G None or (N, F_out). One float
    dtype, one ``stats`` call."""
    N, F, dt = gnn_nodes(X)
    E, checks = gnn_edge_index(edge_index, N)
    hidden = _gnn_matrix(W1, "W1", F, dt, "(F, hidden) with hidden >= 1 and F = X.shape[1]")
    _gnn_like(b1, "b1", (hidden,), dt, "(hidden,) (W1's columns)")
    F_out = _gnn_matrix(W2, "W2", hidden, dt,
                        "(hidden, F_out) with F_out >= 1 and hidden = W1.shape[1]")
    _gnn_like(b2, "b2", (F_out,), dt, "(F_out,) (W2's columns)")
    gnn_eps(eps)
    if G is not None:
        _gnn_like(G, "G", (N, F_out), dt, "(N, F_out) (the shape of H)")
    _gnn_run(checks, stats)
    return GinShape(N, E, F, hidden, F_out, dt)


# ---- gnn: fusion, loss, metrics
#
# Heads of the multilayer GNN (arXiv 2507.07298), reference refimpl._gnn_heads: the edge-weight
# MLP, relation fusion, the focal loss, binary F1 and the cluster-validity indices. Shapes and
# dtypes are read from metadata. The value checks of one call go through ONE callable so that a
# GPU backend needs one host read: ``flags(checks)`` receives a tuple of ``(kind, array)``
# pairs with kind in GNN_HEAD_FLAG_KINDS and returns one bool per pair (compute every flag on
# the device, read them together). ``fuse`` / ``fuse_vjp`` have no value checks (no host read).
# Float arrays of one call share one dtype (float32 or float64); labels ``y`` may be bool,
# integer or float. The metrics (binary_f1, silhouette, Davies-Bouldin) are reference-only and
# take host arrays.

GNN_FUSE_MODES = ("global", "concat", "semantic", "node")
GNN_FUSE_KEYS = {"global": ("w",), "concat": ("W", "b"), "semantic": ("W", "b", "q"),
                 "node": ("W", "b", "q")}
GNN_FOCAL_VARIANTS = ("code", "logits")
GNN_HEAD_FLAG_KINDS = ("finite", "nonneg", "binary", "unit")
GNN_LABEL_DTYPES = ("bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32",
                    "uint64", "float16", "bfloat16", "float32", "float64")
GNN_INT_DTYPES = ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64")


def _gh_default_flags(checks) -> tuple[bool, ...]:
    """One bool per ``(kind, array)`` (NumPy, CuPy and torch arrays alike): "finite" no NaN/inf;
    "nonneg" every entry >= 0; "binary" every entry 0 or 1; "unit" every entry in [0, 1].
    Empty arrays pass."""
    out = []
    for kind, x in checks:
        if kind == "finite":
            ok = (abs(x) < math.inf).all()
        elif kind == "nonneg":
            ok = (x >= 0).all()
        elif kind == "binary":
            ok = ((x == 0) | (x == 1)).all()
        elif kind == "unit":
            ok = ((x >= 0) & (x <= 1)).all()
        else:
            raise ValueError(f"unknown flag kind {kind!r}; expected one of {GNN_HEAD_FLAG_KINDS}")
        out.append(bool(ok))
    return tuple(out)


def _gh_run(checks: list, flags: Callable | None) -> None:
    """``checks``: list of ``(kind, array, message)``; one ``flags`` call, first failure raises."""
    if not checks:
        return
    got = (flags or _gh_default_flags)(tuple((k, x) for k, x, _ in checks))
    for (_, _, msg), ok in zip(checks, got):
        if not ok:
            raise ValueError(msg)


def _gh_shape(x) -> tuple[int, ...]:
    return tuple(int(s) for s in x.shape)


def _gh_like(x, name: str, want: tuple[int, ...], ref_name: str, ref, what: str) -> None:
    """``x`` a float array of ``ref``'s dtype with shape ``want`` (``what`` explains it)."""
    float_array(x, name, ndims=(len(want),))
    same_dtype(ref_name, ref, name, x)
    if _gh_shape(x) != want:
        raise ValueError(f"{name} must have shape {what} = {want}, got {_gh_shape(x)}")


def edge_mlp_args(edge_attr, W1, b1, W2, b2, mean=None, std=None,
                  flags: Callable | None = None) -> tuple[int, int, int]:
    """``edge_mlp_weights``: ``edge_attr`` (E, D) float, E >= 0, D >= 1, finite; ``W1`` (D, Hd),
    Hd >= 1; ``b1`` (Hd,); ``W2`` (Hd, 1); ``b2`` (1,); ``mean`` and ``std`` both None or both
    (D,), finite, std >= 0. One dtype. Returns ``(E, D, Hd)``."""
    float_array(edge_attr, "edge_attr", ndims=(2,))
    E, D = _gh_shape(edge_attr)
    if D < 1:
        raise ValueError(f"edge_attr must have shape (E, D) with D >= 1 attributes, got {(E, D)}")
    float_array(W1, "W1", ndims=(2,))
    same_dtype("edge_attr", edge_attr, "W1", W1)
    if int(W1.shape[0]) != D or int(W1.shape[1]) < 1:
        raise ValueError(f"W1 must have shape (D, hidden) with D = edge_attr.shape[1] = {D} and "
                         f"hidden >= 1, got {_gh_shape(W1)}")
    Hd = int(W1.shape[1])
    _gh_like(b1, "b1", (Hd,), "edge_attr", edge_attr, "(hidden,) with hidden = W1.shape[1]")
    _gh_like(W2, "W2", (Hd, 1), "edge_attr", edge_attr, "(hidden, 1) with hidden = W1.shape[1]")
    _gh_like(b2, "b2", (1,), "edge_attr", edge_attr, "(1,)")
    if (mean is None) != (std is None):
        given = "mean" if mean is not None else "std"
        raise ValueError(f"mean and std must be given together (z = (edge_attr - mean) / "
                         f"(std + 1e-8)) or both be None, got {given} only")
    checks = [("finite", edge_attr, "edge_attr contains NaN or inf")]
    if mean is not None:
        _gh_like(mean, "mean", (D,), "edge_attr", edge_attr, "(D,) with D = edge_attr.shape[1]")
        _gh_like(std, "std", (D,), "edge_attr", edge_attr, "(D,) with D = edge_attr.shape[1]")
        checks += [("finite", mean, "mean contains NaN or inf"),
                   ("finite", std, "std contains NaN or inf"),
                   ("nonneg", std, "std must be >= 0 (a standard deviation), got a negative "
                                   "entry")]
    _gh_run(checks, flags)
    return E, D, Hd


class FuseShape(NamedTuple):
    R: int          # relations
    N: int          # nodes
    F: int          # features per relation
    F_out: int      # width of the fused H (F except for "concat")
    A: int          # attention width (semantic / node), 0 otherwise
    mode: str


def fuse_args(H_stack, mode, params, G=None) -> FuseShape:
    """``fuse`` / ``fuse_vjp``: ``H_stack`` (R, N, F) float, R, N, F >= 1; ``mode`` in
    GNN_FUSE_MODES; ``params`` a dict with exactly the mode's keys (GNN_FUSE_KEYS), of
    H_stack's dtype: global ``w`` (R,) (or params None: w = ones); concat ``W`` (R*F, F_out),
    ``b`` (F_out,); semantic / node ``W`` (F, A), ``b`` (A,), ``q`` (A,). ``G`` (fuse_vjp's
    cotangent) has the shape of fuse's H: (N, F_out). Metadata only (no host read)."""
    float_array(H_stack, "H_stack", ndims=(3,))
    R, N, F = _gh_shape(H_stack)
    if R < 1 or N < 1 or F < 1:
        raise ValueError(f"H_stack must have shape (R, N, F) with R, N, F >= 1 (one (N, F) "
                         f"block per relation), got {(R, N, F)}")
    choice(mode, "mode", GNN_FUSE_MODES)
    keys = GNN_FUSE_KEYS[mode]
    if params is None:
        if mode != "global":
            raise ValueError(f"params is required for mode {mode!r}: a dict with keys "
                             f"{', '.join(keys)}")
    else:
        if not isinstance(params, dict):
            raise TypeError(f"params must be a dict with keys {', '.join(keys)} (mode "
                            f"{mode!r}) or None, got {type(params).__name__}")
        missing = [k for k in keys if k not in params]
        extra = [k for k in params if k not in keys]
        if missing or extra:
            raise ValueError(f"params for mode {mode!r} must have exactly the keys "
                             f"{', '.join(keys)}; missing {missing}, unexpected {extra}")
    F_out, A = F, 0
    if mode == "global" and params is not None:
        _gh_like(params["w"], "params['w']", (R,), "H_stack", H_stack,
                  "(R,) (one logit per relation, R = H_stack.shape[0])")
    elif mode == "concat":
        W = params["W"]
        float_array(W, "params['W']", ndims=(2,))
        same_dtype("H_stack", H_stack, "params['W']", W)
        if int(W.shape[0]) != R * F or int(W.shape[1]) < 1:
            raise ValueError(f"params['W'] must have shape (R*F, F_out) with R*F = {R}*{F} = "
                             f"{R * F} (H_stack's relations times features) and F_out >= 1, "
                             f"got {_gh_shape(W)}")
        F_out = int(W.shape[1])
        _gh_like(params["b"], "params['b']", (F_out,), "H_stack", H_stack,
                  "(F_out,) with F_out = params['W'].shape[1]")
    elif mode in ("semantic", "node"):
        W = params["W"]
        float_array(W, "params['W']", ndims=(2,))
        same_dtype("H_stack", H_stack, "params['W']", W)
        if int(W.shape[0]) != F or int(W.shape[1]) < 1:
            raise ValueError(f"params['W'] must have shape (F, A) with F = H_stack.shape[2] = "
                             f"{F} and A >= 1 (the attention width), got {_gh_shape(W)}")
        A = int(W.shape[1])
        for k in ("b", "q"):
            _gh_like(params[k], f"params['{k}']", (A,), "H_stack", H_stack,
                      "(A,) with A = params['W'].shape[1]")
    if G is not None:
        float_array(G, "G", ndims=(2,))
        same_dtype("H_stack", H_stack, "G", G)
        if _gh_shape(G) != (N, F_out):
            raise ValueError(f"G must have the shape of fuse's H (N, F_out) = {(N, F_out)}, got "
                             f"{_gh_shape(G)}")
    return FuseShape(R, N, F, F_out, A, mode)


def _gh_real(v, name: str, lo: float, hi: float | None) -> float:
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(v).__name__}")
    v = float(v)
    if not math.isfinite(v) or v < lo or (hi is not None and v > hi):
        want = f"in [{lo:g}, {hi:g}]" if hi is not None else f"finite and >= {lo:g}"
        raise ValueError(f"{name} must be {want}, got {v}")
    return v


def _gh_labels(y, name: str, n: int | None, ref_name: str) -> int:
    """``y`` a 1-D label array (bool, integer or float dtype), of length ``n`` when given."""
    if not hasattr(y, "shape") or not hasattr(y, "dtype"):
        raise TypeError(f"{name} must be an array, got {type(y).__name__}")
    dt = dtype_name(y)
    if dt not in GNN_LABEL_DTYPES:
        raise TypeError(f"{name} must have a bool, integer or float dtype (0/1 labels), got {dt}")
    if len(y.shape) != 1:
        raise ValueError(f"{name} must be 1-D (one label per node), got shape {_gh_shape(y)}")
    if n is not None and int(y.shape[0]) != n:
        raise ValueError(f"{name} must have the length of {ref_name} ({n}), got {int(y.shape[0])}")
    return int(y.shape[0])


def focal_args(outputs, y, alpha, gamma, variant,
               flags: Callable | None = None) -> tuple[int, float, float, str]:
    """``focal_bce`` / ``focal_bce_grad``: ``outputs`` (N,) float, N >= 1, finite; ``y`` (N,)
    0/1 labels (bool, integer or float dtype); ``alpha`` in [0, 1]; ``gamma`` >= 0 finite;
    ``variant`` in GNN_FOCAL_VARIANTS; "code" needs outputs in [0, 1] (probabilities).
    Returns ``(N, alpha, gamma, variant)``."""
    float_array(outputs, "outputs", ndims=(1,))
    N = int(outputs.shape[0])
    if N < 1:
        raise ValueError("outputs must not be empty (the loss is a mean over nodes)")
    _gh_labels(y, "y", N, "outputs")
    alpha = _gh_real(alpha, "alpha", 0.0, 1.0)
    gamma = _gh_real(gamma, "gamma", 0.0, None)
    choice(variant, "variant", GNN_FOCAL_VARIANTS)
    checks = [("finite", outputs, "outputs contains NaN or inf"),
              ("binary", y, "y must hold 0/1 labels, got values other than 0 and 1")]
    if variant == "code":
        checks.append(("unit", outputs, "outputs must lie in [0, 1] for variant='code' (the "
                                        "model's sigmoid probabilities, to which the notebook "
                                        "applies BCE-with-logits); pass logits with "
                                        "variant='logits'"))
    _gh_run(checks, flags)
    return N, alpha, gamma, variant


def binary_f1_args(y, y_pred) -> tuple[np.ndarray, np.ndarray]:
    """``binary_f1`` (reference only, host arrays): ``y`` and ``y_pred`` 1-D 0/1 arrays (bool,
    integer or float dtype) of one length >= 1. Returns them as host bool arrays."""
    y, y_pred = host_array(y, "y"), host_array(y_pred, "y_pred")
    n = _gh_labels(y, "y", None, "")
    if n < 1:
        raise ValueError("y must not be empty")
    _gh_labels(y_pred, "y_pred", n, "y")
    for name, a in (("y", y), ("y_pred", y_pred)):
        if not ((a == 0) | (a == 1)).all():
            raise ValueError(f"{name} must hold 0/1 labels, got values other than 0 and 1")
    return y.astype(bool), y_pred.astype(bool)


def cluster_args(E, labels) -> tuple[np.ndarray, np.ndarray, int]:
    """``silhouette_score_np`` / ``davies_bouldin_np`` (reference only, host arrays): ``E``
    (n, d) float, finite, d >= 1; ``labels`` (n,) integer, -1 = noise. After removing the
    noise points, 2 <= #clusters <= n_samples - 1 (scikit-learn's rule). Returns ``(E float64
    without noise, cluster codes 0..K-1, K)``."""
    E, labels = host_array(E, "E"), host_array(labels, "labels")
    float_array(E, "E", ndims=(2,))
    n, d = (int(s) for s in E.shape)
    if d < 1:
        raise ValueError(f"E must have shape (n, d) with d >= 1, got {(n, d)}")
    if labels.dtype.name not in GNN_INT_DTYPES:
        raise TypeError(f"labels must be an integer array (cluster ids, -1 = noise), got dtype "
                        f"{labels.dtype.name}")
    if labels.shape != (n,):
        raise ValueError(f"labels must have shape (n,) = ({n},) (one per row of E), got "
                         f"{labels.shape}")
    if not np.isfinite(E).all():
        raise ValueError("E contains NaN or inf")
    keep = labels != -1
    codes_of, codes = np.unique(labels[keep], return_inverse=True)
    m, K = int(keep.sum()), int(codes_of.size)
    if not 2 <= K <= m - 1:
        raise ValueError(f"the number of clusters after removing noise (-1) is {K} on "
                         f"{m} points; valid values are 2 to n_samples - 1 = {m - 1} "
                         f"(inclusive), as in scikit-learn")
    return np.asarray(E[keep], dtype=np.float64), codes.astype(np.int64).ravel(), K


# ---- crpl
#
# CRPL (arXiv 2506.11493), reference refimpl._crpl. Shapes, dtypes and Python scalars are read
# from metadata. The VALUE checks (unit-norm rows of z and T, finite features / centroids,
# counts >= 0, labels in range, every source domain present) go through ONE callable per call,
# so a GPU backend validates with one host read: ``stats(requests)`` receives a tuple of
# ``(kind, array, param)`` triples with kind in CRPL_STAT_KINDS and returns one real number per
# triple, in order (compute them on the device, stack them into one vector, read it once):
#   "normdev"    max over the rows (last axis) of | ||row||_2 - 1 | (NaN if a row has NaN;
#                0 for an empty array),
#   "nonfinite"  the number of NaN / inf entries,
#   "min" / "max" the smallest / largest entry (+inf / -inf for an empty array),
#   "mincount"   min over v in [0, param) of #{entries == v} (param = S, the number of domains;
#                entries outside [0, param) are ignored: their range check comes first).
# All float arrays of one call share the dtype of the first float argument (float32/float64);
# label arrays have any integer dtype.

CRPL_STAT_KINDS = ("normdev", "nonfinite", "min", "max", "mincount")
CRPL_VARIANTS = ("code", "paper")
CRPL_ACC_VARIANTS = ("code", "exact")
CRPL_NORM_TOL = 1e-4          # (the message below spells it as 1e-4)
CRPL_INTS = ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64")


def _crpl_default_stats(requests) -> tuple[float, ...]:
    """The ``stats`` contract of this section for NumPy arrays (and torch CPU tensors)."""
    out = []
    for kind, x, param in requests:
        a = np.asarray(x)
        if kind == "normdev":
            if a.size == 0:
                out.append(0.0)
            else:
                af = a.astype(np.float64)
                out.append(float(np.abs(np.sqrt((af * af).sum(axis=-1)) - 1.0).max()))
        elif kind == "nonfinite":
            out.append(float(np.count_nonzero(~np.isfinite(a))))
        elif kind == "min":
            out.append(float(a.min()) if a.size else math.inf)
        elif kind == "max":
            out.append(float(a.max()) if a.size else -math.inf)
        elif kind == "mincount":
            a = a.astype(np.int64).ravel()
            a = a[(a >= 0) & (a < int(param))]   # out-of-range entries are reported before
            out.append(float(np.bincount(a, minlength=int(param)).min()))
        else:
            raise ValueError(f"unknown stat kind {kind!r}; expected one of {CRPL_STAT_KINDS}")
    return tuple(out)


def _crpl_run(checks: list, stats: Callable | None) -> None:
    """``checks``: list of ``(kind, array, param, ok(value) -> bool, message(value) -> str)``;
    ONE ``stats`` call for all of them, the first failing check raises ValueError. Checks whose
    value depends on an earlier one (``mincount`` after the range of the same labels) are only
    reported after it."""
    if not checks:
        return
    values = (stats or _crpl_default_stats)(tuple((k, x, p) for k, x, p, _, _ in checks))
    for (_, _, _, ok, msg), v in zip(checks, values):
        v = float(v)
        if not ok(v):
            raise ValueError(msg(v))


def _crpl_shape(x) -> tuple[int, ...]:
    return tuple(int(s) for s in x.shape)


def _crpl_unit(x, name: str) -> tuple:
    return ("normdev", x, None, lambda v: v <= CRPL_NORM_TOL,
            lambda v: f"{name} must have unit-norm rows (|norm - 1| <= 1e-4); "
                      f"max deviation {v:.3g}")


def _crpl_finite(x, name: str) -> tuple:
    return ("nonfinite", x, None, lambda v: v == 0,
            lambda v: f"{name} contains NaN or inf ({int(v)} entries)")


def _crpl_range(y, name: str, hi: int, what: str, lo: int = 0) -> list:
    return [("min", y, None, lambda v: v >= lo,
             lambda v: f"{name} must hold {what} in [{lo}, {hi}), got a minimum of {int(v)}"),
            ("max", y, None, lambda v: v < hi,
             lambda v: f"{name} must hold {what} in [{lo}, {hi}), got a maximum of {int(v)}")]


def _crpl_float(x, name: str, ndims: tuple[int, ...], ref_name: str | None = None, ref=None
                ) -> tuple[int, ...]:
    float_array(x, name, ndims=ndims)
    if ref is not None:
        same_dtype(ref_name, ref, name, x)
    return _crpl_shape(x)


def _crpl_ints(y, name: str, n: int, ref_name: str, what: str) -> None:
    if not hasattr(y, "shape") or not hasattr(y, "dtype"):
        raise TypeError(f"{name} must be an integer array ({what}), got {type(y).__name__}")
    if dtype_name(y) not in CRPL_INTS:
        raise TypeError(f"{name} must be an integer array ({what}), got dtype {dtype_name(y)}")
    if len(y.shape) != 1 or int(y.shape[0]) != n:
        raise ValueError(f"{name} must have shape ({n},) (one per row of {ref_name}), got "
                         f"{_crpl_shape(y)}")


def _crpl_batch(x, name: str) -> tuple[int, int]:
    """A (B, D) embedding batch, B >= 1 (the empty batch is refused), D >= 1."""
    B, D = _crpl_shape(x)
    if B < 1:
        raise ValueError(f"{name} has an empty batch (B = 0); B >= 1 is needed")
    if D < 1:
        raise ValueError(f"{name} must have D >= 1 features, got shape {(B, D)}")
    return B, D


def _crpl_text(T, name: str, D: int, z_name: str, z, K: int | None = None,
               K_name: str = "") -> int:
    """A (K, D) text-embedding matrix of z's dtype, K >= 1, D matching z; K matching K_name's."""
    K_T, D_T = _crpl_float(T, name, (2,), z_name, z)
    if D_T != D:
        raise ValueError(f"{name} must have D = {D} columns (the feature dim of {z_name}), got "
                         f"shape {(K_T, D_T)}")
    if K_T < 1:
        raise ValueError(f"{name} must have K >= 1 classes, got shape {(K_T, D_T)}")
    if K is not None and K_T != K:
        raise ValueError(f"{name} has K = {K_T} classes but {K_name} has K = {K}; the class "
                         f"counts must match")
    return K_T


def _crpl_bool(v, name: str) -> bool:
    if not isinstance(v, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {type(v).__name__}")
    return bool(v)


def crpl_centroid_args(means, counts, feats, labels, domains,
                       stats: Callable | None = None) -> tuple[int, int, int, int]:
    """``update_class_centroids``: means (S, K, D) float finite, counts (S, K) of means' dtype,
    finite and >= 0, feats (N, D) finite (pre-norm features; N >= 1), labels (N,) int in
    [0, K), domains (N,) int in [0, S). Returns (S, K, D, N)."""
    S, K, D = _crpl_float(means, "means", (3,))
    if S < 1 or K < 1 or D < 1:
        raise ValueError(f"means must have shape (S, K, D) with S, K, D >= 1, got {(S, K, D)}")
    if _crpl_float(counts, "counts", (2,), "means", means) != (S, K):
        raise ValueError(f"counts must have shape (S, K) = {(S, K)} (one per centroid of means), "
                         f"got {_crpl_shape(counts)}")
    N, D_f = _crpl_float(feats, "feats", (2,), "means", means)
    if N < 1:
        raise ValueError("feats has an empty batch (N = 0); N >= 1 is needed")
    if D_f != D:
        raise ValueError(f"feats must have D = {D} columns (the feature dim of means), got "
                         f"shape {(N, D_f)}")
    _crpl_ints(labels, "labels", N, "feats", "class indices")
    _crpl_ints(domains, "domains", N, "feats", "source-domain indices")
    checks = [_crpl_finite(means, "means"), _crpl_finite(counts, "counts"),
              ("min", counts, None, lambda v: v >= 0,
               lambda v: f"counts must be >= 0 (numbers of features seen), got a minimum of {v}"),
              _crpl_finite(feats, "feats")]
    checks += _crpl_range(labels, "labels", K, "class indices")
    checks += _crpl_range(domains, "domains", S, "source-domain indices")
    _crpl_run(checks, stats)
    return S, K, D, N


def crpl_probs_args(z, u, T_base, T_S, T_Si, centroids, counts, gamma, scale, variant,
                    stats: Callable | None = None) -> tuple[int, int, int, int, float, float, str]:
    """``crpl_reference_probs``: z (B, D) unit rows, u (B, D) finite (pre-norm features),
    T_base, T_S (K, D) unit rows; multi-source: T_Si (S, K, D) unit rows, centroids (S, K, D)
    finite, counts (S, K) finite >= 0 (both required); source-combined: T_Si, centroids and
    counts None. gamma, scale > 0 finite; variant in CRPL_VARIANTS. Returns
    (B, K, D, S (0 = source-combined), gamma, scale, variant)."""
    _crpl_float(z, "z", (2,))
    B, D = _crpl_batch(z, "z")
    if _crpl_float(u, "u", (2,), "z", z) != (B, D):
        raise ValueError(f"u must have the shape of z {(B, D)} (the pre-norm features of the "
                         f"same images), got {_crpl_shape(u)}")
    K = _crpl_text(T_base, "T_base", D, "z", z)
    _crpl_text(T_S, "T_S", D, "z", z, K, "T_base")
    gamma = positive_float(gamma, "gamma")
    scale = positive_float(scale, "scale")
    choice(variant, "variant", CRPL_VARIANTS)
    checks = [_crpl_unit(z, "z"), _crpl_finite(u, "u"), _crpl_unit(T_base, "T_base"),
              _crpl_unit(T_S, "T_S")]
    S = 0
    if T_Si is None:
        if centroids is not None or counts is not None:
            raise ValueError("centroids and counts are used only in multi-source mode (T_Si "
                             "given); pass None for them in source-combined mode (T_Si=None)")
    else:
        S, K_i, D_i = _crpl_float(T_Si, "T_Si", (3,), "z", z)
        if S < 1:
            raise ValueError(f"T_Si must have S >= 1 source domains, got shape {(S, K_i, D_i)}")
        if D_i != D:
            raise ValueError(f"T_Si must have D = {D} features (the feature dim of z), got shape "
                             f"{(S, K_i, D_i)}")
        if K_i != K:
            raise ValueError(f"T_Si has K = {K_i} classes but T_base has K = {K}; the class "
                             f"counts must match")
        if centroids is None or counts is None:
            raise ValueError("centroids (S, K, D) and counts (S, K) are required in multi-source "
                             "mode (T_Si given); see update_class_centroids")
        if _crpl_float(centroids, "centroids", (3,), "z", z) != (S, K, D):
            raise ValueError(f"centroids must have shape (S, K, D) = {(S, K, D)} (as T_Si), got "
                             f"{_crpl_shape(centroids)}")
        if _crpl_float(counts, "counts", (2,), "z", z) != (S, K):
            raise ValueError(f"counts must have shape (S, K) = {(S, K)}, got "
                             f"{_crpl_shape(counts)}")
        checks += [_crpl_unit(T_Si, "T_Si"), _crpl_finite(centroids, "centroids"),
                   _crpl_finite(counts, "counts"),
                   ("min", counts, None, lambda v: v >= 0,
                    lambda v: f"counts must be >= 0 (numbers of features seen), got a minimum "
                              f"of {v}")]
    _crpl_run(checks, stats)
    return B, K, D, S, gamma, scale, variant


def crpl_sce_args(logits, p, stats: Callable | None = None) -> tuple[int, int]:
    """``soft_cross_entropy(_grad)``: logits (B, K) float finite, B >= 1, K >= 1; p of the same
    shape and dtype, finite (soft targets; rows on the simplex in the method). Returns (B, K)."""
    _crpl_float(logits, "logits", (2,))
    B, K = _crpl_shape(logits)
    if B < 1:
        raise ValueError("logits has an empty batch (B = 0); B >= 1 is needed")
    if K < 1:
        raise ValueError(f"logits must have K >= 1 classes, got shape {(B, K)}")
    if _crpl_float(p, "p", (2,), "logits", logits) != (B, K):
        raise ValueError(f"p must have the shape of logits {(B, K)} (one soft target per row), "
                         f"got {_crpl_shape(p)}")
    _crpl_run([_crpl_finite(logits, "logits"), _crpl_finite(p, "p")], stats)
    return B, K


def crpl_ot_args(Z, T, stats: Callable | None = None) -> tuple[int, int, int]:
    """``ot_cluster_loss``: Z (B, D), T (K, D) of one float dtype, unit-norm rows (the cost
    1 - Z T^T assumes it), B, K >= 1. Returns (B, K, D)."""
    _crpl_float(Z, "Z", (2,))
    B, D = _crpl_batch(Z, "Z")
    K = _crpl_text(T, "T", D, "Z", Z)
    _crpl_run([_crpl_unit(Z, "Z"), _crpl_unit(T, "T")], stats)
    return B, K, D


def _crpl_target_checks(z, T_T, p, z_name: str) -> tuple[int, int, int, bool, list]:
    """Shape/dtype checks of the target branch; returns (B, K, D, baseline, value checks)."""
    _crpl_float(z, z_name, (2,))
    B, D = _crpl_batch(z, z_name)
    K = _crpl_text(T_T, "T_T", D, z_name, z)
    if not hasattr(p, "shape") or not hasattr(p, "dtype"):
        raise TypeError(f"p must be an array: soft targets (B, K) float or CLIP pseudo-labels "
                        f"(B,) int (-1 = unlabelled), got {type(p).__name__}")
    checks = [_crpl_unit(z, z_name), _crpl_unit(T_T, "T_T")]
    if dtype_name(p) in CRPL_INTS:
        if len(p.shape) != 1 or int(p.shape[0]) != B:
            raise ValueError(f"p (integer pseudo-labels) must have shape ({B},) (one per row of "
                             f"{z_name}), got {_crpl_shape(p)}")
        checks += _crpl_range(p, "p", K, "pseudo-labels (-1 = unlabelled)", lo=-1)
        return B, K, D, True, checks
    if dtype_name(p) not in FLOATS:
        raise TypeError(f"p must be soft targets (B, K) of {z_name}'s dtype or integer "
                        f"pseudo-labels (B,), got dtype {dtype_name(p)}")
    same_dtype(z_name, z, "p", p)
    if _crpl_shape(p) != (B, K):
        raise ValueError(f"p (soft targets) must have shape (B, K) = {(B, K)} ({z_name}'s rows, "
                         f"T_T's classes), got {_crpl_shape(p)}")
    checks.append(_crpl_finite(p, "p"))
    return B, K, D, False, checks


def crpl_target_args(z, T_T, p, scale, use_ot, stats: Callable | None = None
                     ) -> tuple[int, int, int, float, bool, bool]:
    """``crpl_target_loss``: z (B, D) unit rows, T_T (K, D) unit rows; p soft (B, K) float
    finite, or integer pseudo-labels (B,) in [-1, K) (the baseline branch); scale > 0 finite;
    use_ot a bool. Returns (B, K, D, scale, use_ot, baseline)."""
    scale = positive_float(scale, "scale")
    use_ot = _crpl_bool(use_ot, "use_ot")
    B, K, D, baseline, checks = _crpl_target_checks(z, T_T, p, "z")
    _crpl_run(checks, stats)
    return B, K, D, scale, use_ot, baseline


def crpl_loss_args(z_src, y_src, dom_src, z_tgt, T_S, T_Si, T_T, p, scale, lam_W, lam_T, use_ot,
                   stats: Callable | None = None) -> tuple:
    """``crpl_loss(_grad)``: z_src (N, D) unit rows, y_src (N,) int in [0, K); z_tgt (B, D)
    unit rows; T_S, T_T (K, D) unit rows; multi-source: T_Si (S, K, D) unit rows and dom_src
    (N,) int in [0, S) with every domain present (its CE is a mean over its rows); source-
    combined (T_Si None): dom_src None or an (N,) int array (unused); p as in
    :func:`crpl_target_args`; scale > 0, lam_W, lam_T >= 0 finite; use_ot a bool.
    Returns (N, B, K, D, S (0 = source-combined), scale, lam_W, lam_T, use_ot, baseline)."""
    scale = positive_float(scale, "scale")
    lam_W = nonneg_float(lam_W, "lam_W")
    lam_T = nonneg_float(lam_T, "lam_T")
    for v, name in ((lam_W, "lam_W"), (lam_T, "lam_T")):
        if not math.isfinite(v):
            raise ValueError(f"{name} must be finite, got {v}")
    use_ot = _crpl_bool(use_ot, "use_ot")
    _crpl_float(z_src, "z_src", (2,))
    N, D = _crpl_batch(z_src, "z_src")
    K = _crpl_text(T_S, "T_S", D, "z_src", z_src)
    _crpl_ints(y_src, "y_src", N, "z_src", "class indices")
    _crpl_float(z_tgt, "z_tgt", (2,), "z_src", z_src)
    B, K_T, D_T, baseline, tchecks = _crpl_target_checks(z_tgt, T_T, p, "z_tgt")
    if D_T != D:
        raise ValueError(f"z_tgt must have D = {D} features (the feature dim of z_src), got "
                         f"shape {(B, D_T)}")
    if K_T != K:
        raise ValueError(f"T_T has K = {K_T} classes but T_S has K = {K}; the class counts must "
                         f"match")
    same_dtype("z_src", z_src, "T_T", T_T)
    checks = [_crpl_unit(z_src, "z_src"), _crpl_unit(T_S, "T_S")]
    checks += _crpl_range(y_src, "y_src", K, "class indices")
    S = 0
    if T_Si is None:
        if dom_src is not None:
            _crpl_ints(dom_src, "dom_src", N, "z_src", "source-domain indices")
    else:
        S, K_i, D_i = _crpl_float(T_Si, "T_Si", (3,), "z_src", z_src)
        if S < 1:
            raise ValueError(f"T_Si must have S >= 1 source domains, got shape {(S, K_i, D_i)}")
        if D_i != D:
            raise ValueError(f"T_Si must have D = {D} features (the feature dim of z_src), got "
                             f"shape {(S, K_i, D_i)}")
        if K_i != K:
            raise ValueError(f"T_Si has K = {K_i} classes but T_S has K = {K}; the class counts "
                             f"must match")
        if dom_src is None:
            raise ValueError("dom_src (N,) is required in multi-source mode (T_Si given): the "
                             "source domain of each row of z_src")
        _crpl_ints(dom_src, "dom_src", N, "z_src", "source-domain indices")
        checks.append(_crpl_unit(T_Si, "T_Si"))
        checks += _crpl_range(dom_src, "dom_src", S, "source-domain indices")
        checks.append(("mincount", dom_src, S, lambda v: v >= 1,
                       lambda v: f"every source domain must appear in the source batch when "
                                 f"T_Si is given (its CE is a mean over its rows); dom_src "
                                 f"misses at least one of the S = {S} domains"))
    checks += tchecks
    _crpl_run(checks, stats)
    return N, B, K, D, S, scale, lam_W, lam_T, use_ot, baseline


def crpl_acc_args(z, T_list, labels, batch_size, variant, stats: Callable | None = None
                  ) -> tuple[int, int, int, int, int, str]:
    """``target_accuracy``: z (n, D) float finite, n >= 1; T_list a (K, D) array, an (M, K, D)
    stack, or a non-empty list/tuple of (K, D) arrays of z's dtype, finite (averaged prompts
    need not be unit-norm, nor z: only argmax_k z . t_k is used); labels (n,) int in [0, K);
    batch_size an int >= 1; variant in CRPL_ACC_VARIANTS. Returns (n, K, D, M, batch_size,
    variant)."""
    _crpl_float(z, "z", (2,))
    n, D = _crpl_batch(z, "z")
    batch_size = positive_int(batch_size, "batch_size")
    choice(variant, "variant", CRPL_ACC_VARIANTS)
    if isinstance(T_list, (list, tuple)):
        if len(T_list) == 0:
            raise ValueError("T_list must hold at least one (K, D) text-embedding matrix")
        items = [(f"T_list[{j}]", T) for j, T in enumerate(T_list)]
    else:
        float_array(T_list, "T_list", ndims=(2, 3))
        if len(T_list.shape) == 3:
            if int(T_list.shape[0]) < 1:
                raise ValueError("T_list must hold at least one (K, D) text-embedding matrix")
        items = [("T_list", T_list)]
    K = None
    for name, T in items:
        float_array(T, name, ndims=(2,) if len(items) > 1 or isinstance(T_list, (list, tuple))
                    else (2, 3))
        same_dtype("z", z, name, T)
        K_T, D_T = _crpl_shape(T)[-2:]
        if D_T != D:
            raise ValueError(f"{name} must have D = {D} columns (the feature dim of z), got shape "
                             f"{_crpl_shape(T)}")
        if K_T < 1:
            raise ValueError(f"{name} must have K >= 1 classes, got shape {_crpl_shape(T)}")
        if K is not None and K_T != K:
            raise ValueError(f"{name} has K = {K_T} classes but T_list[0] has K = {K}; the "
                             f"class counts must match")
        K = K_T
    M = len(items) if len(items) > 1 or isinstance(T_list, (list, tuple)) else (
        int(T_list.shape[0]) if len(T_list.shape) == 3 else 1)
    _crpl_ints(labels, "labels", n, "z", "class indices")
    checks = [_crpl_finite(z, "z")] + [_crpl_finite(T, name) for name, T in items]
    checks += _crpl_range(labels, "labels", K, "class indices")
    _crpl_run(checks, stats)
    return n, K, D, M, batch_size, variant


def crpl_pseudo_args(z, T_base, threshold, scale, stats: Callable | None = None
                     ) -> tuple[int, int, int, float, float]:
    """``clip_pseudo_labels``: z (B, D), T_base (K, D) of one float dtype, unit-norm rows;
    threshold in [0, 1]; scale > 0 finite. Returns (B, K, D, threshold, scale)."""
    if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real):
        raise TypeError(f"threshold must be a real number in [0, 1], got "
                        f"{type(threshold).__name__}")
    threshold = float(threshold)
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1] (a softmax confidence), got {threshold}")
    scale = positive_float(scale, "scale")
    _crpl_float(z, "z", (2,))
    B, D = _crpl_batch(z, "z")
    K = _crpl_text(T_base, "T_base", D, "z", z)
    _crpl_run([_crpl_unit(z, "z"), _crpl_unit(T_base, "T_base")], stats)
    return B, K, D, threshold, scale
