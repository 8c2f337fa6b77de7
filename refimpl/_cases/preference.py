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
    "bfloat16": {"*": (5e-1, 5e-2), "dW": (5e-1, 5e-1), "db": (5e-1, 5e-1), "eps_W": (5e-1, 5e-1)},
}

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


def _bench_head(rng, N, d, V, B):
    """Full-completion bench inputs, (N, d, V) with N = 2 B T."""
    T = N // (2 * B)
    H, W, b, labels, mask = head_inputs(rng, B, T, d, V, bias=False, min_completion=T)
    mask[:] = True
    labels = rng.integers(0, V, size=labels.shape).astype(np.int64)
    return H, W, labels, mask


# Bench sizes (spec sec. 11): CPU (64, 256, 32768) B = 2, T = 16; GPU (4096, 4096, 131072)
# B = 2, T = 1024.
BENCH = (("N64_d256_V32768", 64, 256, 32768, 2, "cpu", 8192),
         ("N4096_d4096_V131072", 4096, 4096, 131072, 2, "gpu", 8192))


def cases_seq_logps(rng, scale):
    if scale == "bench":
        out = []
        for label, N, d, V, B, where, vc in BENCH:
            def build(N=N, d=d, V=V, B=B, vc=vc):
                H, W, labels, mask = _bench_head(rng, N, d, V, B)
                return dict(H=H, W=W, labels=labels, mask=mask, vocab_chunk=vc)
            out.append(Case(label, build, where))
        return out
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
    for B in Bs:
        for lt, eps in LOSSES:
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


def _bench_linear(rng, N, d, V, B, vc, extra):
    H, W, labels, mask = _bench_head(rng, N, d, V, B)
    ref = np.zeros(2 * B)  # sequence log-probs are ~ -T log V; h = O(noise) is not needed here
    return dict(H=H, W=W, labels=labels, mask=mask, ref_logp=ref, beta=0.1, vocab_chunk=vc,
                **extra)


def cases_linear_dpo(rng, scale):
    if scale == "bench":
        return [Case(label, (lambda N=N, d=d, V=V, B=B, vc=vc: _bench_linear(rng, N, d, V, B, vc, {})),
                     where) for label, N, d, V, B, where, vc in BENCH]
    out = []
    sizes = _sizes(scale)
    for i, (B, T, d, V) in enumerate(sizes):
        for j, (lt, eps) in enumerate(LOSSES):
            for chunks in CHUNKS:
                bias = (i + j) % 2 == 0
                out.append(Case(f"{_label(B, T, d, V)}_{lt}_eps{eps}_b{int(bias)}_chunks{chunks}",
                                _linear_kw(rng, B, T, d, V, lt, eps, chunks, bias)))
    return out


def cases_logits_sam(rng, scale):
    if scale == "bench":
        return [Case(label, (lambda N=N, d=d, V=V, B=B, vc=vc:
                             _bench_linear(rng, N, d, V, B, vc, dict(rho=1e-3))), where)
                for label, N, d, V, B, where, vc in BENCH]
    out = []
    sizes = _sizes(scale)
    rhos = (0.0, 1e-3, 0.05)
    for i, (B, T, d, V) in enumerate(sizes):
        for j, (lt, eps) in enumerate(LOSSES):
            rho = rhos[(i + j) % 3]
            for chunks in CHUNKS:
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
