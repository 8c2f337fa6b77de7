"""What torch autograd keeps for backward: shared by the torch test files that bound the
memory of a custom ``autograd.Function`` (no N x V or quadratic tensor saved)."""

import torch


def saved_numels(fn):
    """``(fn(), [numel of every tensor autograd saved while fn() ran])``."""
    sizes = []

    def pack(t):
        sizes.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, sizes
