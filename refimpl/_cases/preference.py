"""Registry cases, tolerances and reference VJPs of the preference ops (preference.md sec. 7, 11).

Masks are bool arrays (the harness casts only float arrays to the tested dtype): a prompt
prefix of random length plus right padding, with ``labels = -100`` at every masked position,
so every cross-check also checks that masked labels are never gathered. Hidden states are
scaled so the logits are O(1); ``ref_logp`` is the policy's own log-prob plus noise so that
``u = beta h`` is O(1) (sigmoid and hinge both have non-trivial gradients).
"""

from __future__ import annotations

import numpy as np

from refimpl._cases import Case

PAPER = "2603.18258"
DPO_PAPER = "2305.18290"

# dtype -> output -> (rtol, atol). Calibrated against float32 arithmetic: the float64 reference
# on float32-rounded inputs vs a float32 NumPy evaluation of logits_sam_dpo_grad (dense, all
# "small"/"tiny" cases): max abs error loss 1.9e-6 (rel 2.9e-6), dH 1.8e-7, dW 1.1e-6,
# db 5.2e-7, eps_W 1.1e-8. Weight grads get atol 5e-5 to leave room for blockwise fp32
# accumulation orders over N tokens.
TOL = {
    "float64": {"*": (1e-10, 1e-10)},
    "float32": {"*": (5e-4, 1e-5), "dW": (5e-4, 5e-5), "db": (5e-4, 5e-5), "eps_W": (5e-4, 5e-5),
                "logp": (5e-4, 1e-4), "dlogp": (5e-4, 1e-6)},
    # bf16 inputs (torch): bf16 GEMM operands with fp32 accumulation — the logit gradient G
    # is rounded to bf16 before the dH/dW GEMMs, as tensor cores need — and gradients rounded
    # to bf16 at the end. Measured on every small case: scalars rel 5e-6 (they stay fp32),
    # gradients max abs 3.9e-3 where entries cancel, rel 3.9e-3 (= 2^-8) elsewhere. rtol is
    # 4 bf16 ulps; the spec's Liger tolerances (rtol 0.5, weight-grad atol 0.5) are far looser.
    "bfloat16": {"*": (1.6e-2, 1e-3), "dH": (1.6e-2, 1e-2), "dW": (1.6e-2, 1e-2),
                 "db": (1.6e-2, 1e-2)},
}

DTYPES = ("float32", "float64", "bfloat16")  # the linear-head ops; log-prob-level ops: no bf16

TINY = (2, 5, 8, 11)                       # (B, T, d, V)
SMALL = ((4, 16, 32, 257), (3, 47, 31, 123))
CHUNKS = (None, (7, 50))                   # (token_chunk, vocab_chunk): blocks do not divide
LOSSES = (("sigmoid", 0.0), ("sigmoid", 0.1), ("hinge", 0.0), ("ipo", 0.0))


def head_inputs(rng, B, T, d, V, *, bias=True, min_completion=1):
    """``H, W, b, labels, mask`` with a prompt prefix + right padding (-100 labels there)."""
    R = 2 * B
    H = rng.normal(size=(R, T, d))
    W = rng.normal(size=(V, d)) / np.sqrt(d)
    b = 0.1 * rng.normal(size=V) if bias else None
    labels = rng.integers(0, V, size=(R, T)).astype(np.int64)
    mask = np.zeros((R, T), dtype=bool)
    for r in range(R):
        prompt = int(rng.integers(0, max(T // 3, 1)))
        end = int(rng.integers(min(prompt + min_completion, T), T + 1))
        mask[r, prompt:end] = True
    labels[~mask] = -100
    return H, W, b, labels, mask


def _ref_logp(rng, H, W, b, labels, mask, average):
    from refimpl.preference import seq_logps

    l = seq_logps(H, W, labels, mask, b, average=average)
    return l + (0.3 if average else 2.0) * rng.normal(size=l.shape)


def _chunk_kw(chunks):
    return {} if chunks is None else dict(token_chunk=chunks[0], vocab_chunk=chunks[1])


def _label(B, T, d, V):
    return f"B{B}_T{T}_d{d}_V{V}"


def _sizes(scale):
    if scale == "tiny":
        return (TINY,)
    if scale == "small":
        return SMALL
    raise ValueError(f"unknown scale {scale!r}")


def _chunk_paths(scale, j):
    """The chunking paths of loss ``j``: both at "small"; at "tiny" (the Numba simulator, where
    a case costs seconds) both for the first loss and one, alternating, for the others."""
    return CHUNKS if scale != "tiny" or j == 0 else (CHUNKS[j % 2],)


def _bench_head(rng, B, T, d, V):
    """Full-completion bench inputs (every token of the 2 B rows is a completion token)."""
    H, W, b, labels, mask = head_inputs(rng, B, T, d, V, bias=False, min_completion=T)
    mask[:] = True
    labels = rng.integers(0, V, size=labels.shape).astype(np.int64)
    return H, W, labels, mask


class _Bench:
    """One bench size of the issue: (B, T, d, V), device, chunks, dtypes (None = all)."""

    def __init__(self, B, T, d, V, where, token_chunk, vocab_chunk, dtypes=None):
        self.B, self.T, self.d, self.V = B, T, d, V
        self.where, self.dtypes = where, dtypes
        self.chunks = dict(token_chunk=token_chunk, vocab_chunk=vocab_chunk)
        self.label = _label(B, T, d, V)

    def case(self, build):
        return Case(self.label, build, self.where, self.dtypes)


# Bench sizes (issue 3): CPU B = 4, T = 128, d = 256, V = 8192 (N = 1024 tokens); GPU B = 8,
# T = 1024, d = 4096, V = 128256 (Llama-3's vocabulary; N = 16384), bf16 only there. Blocks
# of 8192 x 8192 fp32 logits (256 MiB) on the GPU, 1024 x 2048 on the CPU.
BENCH = (_Bench(4, 128, 256, 8192, "cpu", None, 2048),
         _Bench(8, 1024, 4096, 128256, "gpu", 8192, 8192, ("bfloat16",)))


def cases_seq_logps(rng, scale):
    if scale == "bench":
        def build(s):
            H, W, labels, mask = _bench_head(rng, s.B, s.T, s.d, s.V)
            return dict(H=H, W=W, labels=labels, mask=mask, **s.chunks)
        return [s.case(lambda s=s: build(s)) for s in BENCH]
    out = []
    for B, T, d, V in _sizes(scale):
        for chunks in CHUNKS:
            for average in (False, True):
                H, W, b, labels, mask = head_inputs(rng, B, T, d, V, bias=not average)
                kw = dict(H=H, W=W, labels=labels, mask=mask, average=average, **_chunk_kw(chunks))
                if b is not None:
                    kw["b"] = b
                out.append(Case(f"{_label(B, T, d, V)}_avg{int(average)}_chunks{chunks}", kw))
    return out


def cases_dpo_loss(rng, scale):
    Bs = {"tiny": (2,), "small": (4, 3), "bench": (4096,)}.get(scale)
    if Bs is None:
        raise ValueError(f"unknown scale {scale!r}")
    out = []
    losses = LOSSES if scale != "bench" else LOSSES[:1]   # timing: one loss type is enough
    for B in Bs:
        for lt, eps in losses:
            for beta in ((0.1, 0.5) if scale != "bench" else (0.1,)):
                ref = -30 + 5 * rng.normal(size=2 * B)
                if lt == "ipo":
                    ref = -2 + 0.5 * rng.normal(size=2 * B)
                logp = ref + (0.5 if lt == "ipo" else 5.0) * rng.normal(size=2 * B)
                out.append(Case(f"B{B}_{lt}_eps{eps}_beta{beta}",
                                dict(logp=logp, ref_logp=ref, beta=beta, loss_type=lt,
                                     label_smoothing=eps),
                                "any" if scale != "bench" else "cpu"))
    return out


def _linear_kw(rng, B, T, d, V, lt, eps, chunks, bias):
    H, W, b, labels, mask = head_inputs(rng, B, T, d, V, bias=bias)
    ref = _ref_logp(rng, H, W, b, labels, mask, lt == "ipo")
    kw = dict(H=H, W=W, labels=labels, mask=mask, ref_logp=ref, beta=0.5, loss_type=lt,
              label_smoothing=eps, **_chunk_kw(chunks))
    if b is not None:
        kw["b"] = b
    return kw


def _bench_linear(rng, s: _Bench, extra):
    H, W, labels, mask = _bench_head(rng, s.B, s.T, s.d, s.V)
    ref = np.zeros(2 * s.B)  # sequence log-probs are ~ -T log V; h = O(noise) is not needed
    return dict(H=H, W=W, labels=labels, mask=mask, ref_logp=ref, beta=0.1, **s.chunks, **extra)


def cases_linear_dpo(rng, scale):
    if scale == "bench":
        return [s.case(lambda s=s: _bench_linear(rng, s, {})) for s in BENCH]
    out = []
    sizes = _sizes(scale)
    for i, (B, T, d, V) in enumerate(sizes):
        for j, (lt, eps) in enumerate(LOSSES):
            for chunks in _chunk_paths(scale, j):
                bias = (i + j) % 2 == 0
                out.append(Case(f"{_label(B, T, d, V)}_{lt}_eps{eps}_b{int(bias)}_chunks{chunks}",
                                _linear_kw(rng, B, T, d, V, lt, eps, chunks, bias)))
    return out


def cases_logits_sam(rng, scale):
    if scale == "bench":
        return [s.case(lambda s=s: _bench_linear(rng, s, dict(rho=1e-3))) for s in BENCH]
    out = []
    sizes = _sizes(scale)
    rhos = (0.0, 1e-3, 0.05)
    for i, (B, T, d, V) in enumerate(sizes):
        for j, (lt, eps) in enumerate(LOSSES):
            rho = rhos[(i + j) % 3]
            for chunks in _chunk_paths(scale, j):
                bias = (i + j) % 2 == 1
                kw = _linear_kw(rng, B, T, d, V, lt, eps, chunks, bias)
                kw["rho"] = rho
                out.append(Case(f"{_label(B, T, d, V)}_{lt}_eps{eps}_rho{rho}_b{int(bias)}"
                                f"_chunks{chunks}", kw))
        # the other options, once per size
        kw = _linear_kw(rng, B, T, d, V, "sigmoid", 0.0, None, True)
        out.append(Case(f"{_label(B, T, d, V)}_gram_rho0.05", dict(kw, rho=0.05, delta="gram")))
        kw = _linear_kw(rng, B, T, d, V, "sigmoid", 0.0, CHUNKS[1], False)
        out.append(Case(f"{_label(B, T, d, V)}_adaptive_rho0.05_chunks{CHUNKS[1]}",
                        dict(kw, rho=0.05, adaptive=True)))
    return out


# --------------------------------------------------------------------------- reference VJPs


def _head_kw(kw):
    return {k: kw[k] for k in ("H", "W", "labels", "mask", "b") if k in kw}


def vjp_seq_logps(kw, cot):
    """d(sum_r cot_r l_r)/d(H, W, b) by the closed form (per-token coefficient cot_r a_r)."""
    from refimpl import preference as P

    head = P._Head(kw["H"], kw["W"], kw["labels"], kw["mask"], kw.get("b"))
    blocks = head.blocks(kw.get("token_chunk"), kw.get("vocab_chunk"))
    zfun = lambda r0, r1, v0, v1: head.logits(head.W, r0, r1, v0, v1)
    lse, zy = P._lse_zy(head, zfun, blocks)
    _, a = P._seq(head, lse, zy, bool(kw.get("average", False)))
    c = (np.asarray(cot, dtype=np.float64) * a)[head.rows]
    dHc, dW, db = P._backward(head, zfun, lse, c, blocks, W_dH=head.W)
    out = {"dH": head.full_dH(dHc), "dW": dW}
    if kw.get("b") is not None:
        out["db"] = db
    return out


def vjp_dpo_loss(kw, cot):
    from refimpl.preference import dpo_loss_grad

    _, dlogp = dpo_loss_grad(**kw)
    return {"dlogp": float(np.asarray(cot)) * dlogp}


def vjp_linear_dpo(kw, cot):
    from refimpl.preference import linear_dpo_loss_grad

    _, dH, dW, db = linear_dpo_loss_grad(**kw)
    c = float(np.asarray(cot))
    out = {"dH": c * dH, "dW": c * dW}
    if db is not None:
        out["db"] = c * db
    return out


def vjp_logits_sam(kw, cot):
    """VJP of L_post with eps_W frozen: ``cot * (dH, dW, db)`` of :func:`logits_sam_dpo_grad`."""
    from refimpl.preference import logits_sam_dpo_grad

    g = logits_sam_dpo_grad(**kw)
    c = float(np.asarray(cot))
    out = {"dH": c * g["dH"], "dW": c * g["dW"]}
    if g["db"] is not None:
        out["db"] = c * g["db"]
    return out


def dpo_outputs(result, kwargs):
    """``dpo_loss`` -> {loss, chosen_rewards, rejected_rewards}."""
    loss, cr, rr = result
    return {"loss": loss, "chosen_rewards": cr, "rejected_rewards": rr}


def sam_outputs(result, kwargs):
    """``logits_sam_dpo_grad``'s dict as is (None entries, e.g. db without b, are skipped)."""
    return {k: v for k, v in dict(result).items() if v is not None}
