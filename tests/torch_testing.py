"""Helpers shared by the torch backend's test files: host/tensor conversions and what autograd
keeps for backward (to bound the memory of a custom ``autograd.Function``)."""

import re

import numpy as np
import pytest
import torch

F64 = torch.float64


def npy(x):
    """A tensor (dense or sparse CSR; bf16 read as float32) or array as a NumPy array."""
    if isinstance(x, torch.Tensor):
        x = x.detach()
        if x.layout == torch.sparse_csr:
            x = x.to_dense()
        return (x.float() if x.dtype == torch.bfloat16 else x).cpu().numpy()
    return np.asarray(x)


def tt(x, dtype=F64):
    """A CPU tensor of ``x``: integer and bool arrays keep their dtype, floats get ``dtype``."""
    x = np.asarray(x)
    if x.dtype.kind in "iub":
        return torch.as_tensor(x)
    return torch.as_tensor(np.asarray(x, dtype=np.float64)).to(dtype)


def up(x):
    """The float64 values a tensor holds (what the reference is given)."""
    a = npy(x)
    return a.astype(np.float64) if a.dtype.kind == "f" else a


def close_to(tol):
    """``assert_close(got, want, dtype=float64, atol=None, rtol=None)`` with the per-dtype
    defaults ``tol[dtype] = (atol, rtol)``; ``want`` None asserts that ``got`` is None."""
    def assert_close(got, want, dtype=F64, atol=None, rtol=None):
        a0, r0 = tol[dtype]
        if want is None:
            assert got is None
            return
        g, w = np.asarray(npy(got), dtype=np.float64), np.asarray(npy(want), dtype=np.float64)
        assert g.shape == w.shape, (g.shape, w.shape)
        np.testing.assert_allclose(g, w, atol=a0 if atol is None else atol,
                                   rtol=r0 if rtol is None else rtol)
    return assert_close


def saved_numels(fn):
    """``(fn(), [numel of every tensor autograd saved while fn() ran])``."""
    sizes = []

    def pack(t):
        sizes.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, sizes


def raises_like_reference(ref_call, torch_call):
    """``torch_call`` raises the reference's exception type with the reference's exact message."""
    with pytest.raises(Exception) as ref_exc:
        ref_call()
    with pytest.raises(ref_exc.type, match="^" + re.escape(str(ref_exc.value)) + "$"):
        torch_call()
