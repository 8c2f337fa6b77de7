"""Registry cases, tolerances and reference VJPs of the CTPD and TIS-DPO ops
(``cross_tokenizer.md`` secs. 8-11).

Segment ids come from random contiguous segmentations of each row's response (a prompt
prefix and right padding get -1), as :func:`refimpl._ctpd.span_align` produces them. CTPD span
log-probs are negative, the teacher's are the student's plus noise so that ``beta d`` is O(1),
and padded spans have ``w = 0`` (and zero log-probs). TIS-DPO masks are bool arrays (a prompt
prefix plus right padding, labels -100 there); reference logits are the policy's plus noise.
"""

from __future__ import annotations

import numpy as np

from refimpl._cases import Case

CTPD_PAPER = "2601.11865"
TIS_PAPER = "2410.04350"

# dtype -> output -> (rtol, atol): the spec's fp64 1e-10 and fp32 atol 1e-5 / rtol 5e-4; bf16
# (tis_dpo_loss only, torch) atol 5e-2 / rtol 5e-1.
TOL = {
    "float64": {"*": (1e-10, 1e-10)},
    "float32": {"*": (5e-4, 1e-5)},
}
TIS_TOL = dict(TOL, bfloat16={"*": (5e-1, 5e-2)})
TIS_DTYPES = ("float32", "float64", "bfloat16")

REDUCES = ("sum", "mean", "padded_mean")


def random_seg(rng, K, num_spans):
    """One row's segment ids (K,): -1 on a prompt prefix and right padding, and the response
    tokens cut into ``r <= num_spans`` non-empty contiguous spans numbered 0..r-1."""
    seg = np.full(K, -1, dtype=np.int64)
    prompt = int(rng.integers(0, max(K // 4, 1)))
    n = int(rng.integers(1, K - prompt + 1))                # response tokens
    r = int(rng.integers(1, min(num_spans, n) + 1))          # spans used by this row
    cuts = np.sort(rng.choice(np.arange(1, n), size=r - 1, replace=False)) if r > 1 else []
    starts = np.concatenate([[0], cuts]).astype(np.int64)
    for i, s in enumerate(starts):
        end = starts[i + 1] if i + 1 < len(starts) else n
        seg[prompt + s:prompt + end] = i
    return seg


def _span_sum_kw(rng, lead, K, R, reduce, shared):
    x = -np.abs(rng.normal(size=lead + (K,))) * 2.0
    if shared:
        seg = random_seg(rng, K, R)
    else:
        rows = int(np.prod(lead)) if lead else 1
        seg = np.stack([random_seg(rng, K, R) for _ in range(rows)]).reshape(lead + (K,))
    return dict(token_logps=x, seg=seg, num_spans=R, reduce=reduce)


def cases_span_sum(rng, scale):
    if scale == "bench":
        return [Case("rows16_K1024_R400", lambda: _span_sum_kw(rng, (16,), 1024, 400, "sum", False),
                     "cpu")]
    sizes = {"tiny": (((2,), 7, 3),), "small": (((4,), 64, 20), ((2, 3), 50, 11))}.get(scale)
    if sizes is None:
        raise ValueError(f"unknown scale {scale!r}")
    out = []
    for lead, K, R in sizes:
        for reduce in REDUCES:
            for shared in (False, True):
                out.append(Case(f"lead{'x'.join(map(str, lead))}_K{K}_R{R}_{reduce}"
                                f"{'_shared' if shared else ''}",
                                _span_sum_kw(rng, lead, K, R, reduce, shared)))
    return out


def cases_span_weights(rng, scale):
    sizes = {"tiny": ((2, 5),), "small": ((8, 37), (3, 64)), "bench": ((16, 400),)}.get(scale)
    if sizes is None:
        raise ValueError(f"unknown scale {scale!r}")
    out = []
    for rows, R in sizes:
        mu = np.concatenate([np.ones(rows // 2), -np.ones(rows - rows // 2)])[:, None]
        for decimals in ((2, None) if scale != "bench" else (2,)):
            lp_pos = -np.abs(rng.normal(size=(rows, R))) * 3
            lp_neg = lp_pos + rng.normal(size=(rows, R))     # differences span the clip range
            out.append(Case(f"rows{rows}_R{R}_dec{decimals}",
                            dict(lp_pos=lp_pos, lp_neg=lp_neg, mu=mu, decimals=decimals),
                            "any" if scale != "bench" else "cpu"))
    return out


def ctpd_inputs(rng, B, R, beta):
    """``ellS, ellT, w`` (2B, R) with a random number of used spans per row (rest w = 0)."""
    rows = 2 * B
    ellS = -np.abs(rng.normal(size=(rows, R))) * 3.0
    ellT = ellS + rng.normal(size=(rows, R)) * (0.3 / np.sqrt(R) / beta)
    mu = np.concatenate([np.ones(B), -np.ones(B)])[:, None]
    w = np.exp(mu * np.clip(rng.normal(size=(rows, R)), -0.5, 1.5))
    for i in range(rows):
        used = int(rng.integers(1, R + 1))
        w[i, used:] = ellS[i, used:] = ellT[i, used:] = 0.0
    return dict(ellS=ellS, ellT=ellT, w=w, beta=beta)


def cases_ctpd_loss(rng, scale):
    if scale == "bench":
        return [Case("B8_R400", lambda: ctpd_inputs(rng, 8, 400, 0.1), "cpu")]
    sizes = {"tiny": ((2, 5),), "small": ((4, 37), (3, 64))}.get(scale)
    if sizes is None:
        raise ValueError(f"unknown scale {scale!r}")
    return [Case(f"B{B}_R{R}_beta{beta}", ctpd_inputs(rng, B, R, beta))
            for B, R in sizes for beta in (0.1, 0.5)]


def tis_inputs(rng, B, T, V, beta, alpha, token_level, *, full=False):
    """Logits, reference logits, labels, bool mask and weights for 2B rows of T tokens."""
    R = 2 * B
    logits = rng.normal(size=(R, T, V))
    ref = logits + 0.3 * rng.normal(size=(R, T, V))
    labels = rng.integers(0, V, size=(R, T)).astype(np.int64)
    mask = np.ones((R, T), dtype=bool)
    if not full:
        for r in range(R):
            prompt = int(rng.integers(0, max(T // 3, 1)))
            end = int(rng.integers(prompt + 1, T + 1))
            mask[r] = False
            mask[r, prompt:end] = True
    labels[~mask] = -100
    weights = np.exp(np.clip(rng.normal(size=(R, T)), -0.5, 1.5))
    return dict(logits=logits, ref_logits=ref, labels=labels, mask=mask, weights=weights,
                beta=beta, alpha=alpha, token_level=token_level)


def cases_tis_dpo_loss(rng, scale):
    if scale == "bench":
        return [Case("R4_T32_V4096", lambda: tis_inputs(rng, 2, 32, 4096, 0.1, 0.5, True,
                                                        full=True), "cpu"),
                Case("R16_T512_V32000", lambda: tis_inputs(rng, 8, 512, 32000, 0.1, 0.5, True,
                                                           full=True), "gpu", ("bfloat16",))]
    sizes = {"tiny": ((2, 5, 11),), "small": ((4, 16, 257), (3, 23, 123))}.get(scale)
    if sizes is None:
        raise ValueError(f"unknown scale {scale!r}")
    out = []
    for B, T, V in sizes:
        for token_level, alpha, beta in ((True, 0.5, 0.5), (True, 1.0, 0.1), (False, 0.5, 0.5)):
            out.append(Case(f"B{B}_T{T}_V{V}_tl{int(token_level)}_alpha{alpha}_beta{beta}",
                            tis_inputs(rng, B, T, V, beta, alpha, token_level)))
    return out


# --------------------------------------------------------------------------- reference VJPs


def vjp_span_sum(kw, cot):
    """``d token_logps_k = scale[seg_k] cot[seg_k]`` (0 where seg = -1), scale of ``reduce``."""
    from refimpl import _ctpd

    x, sg, lead, R = _ctpd._segments(kw["token_logps"], kw["seg"], kw["num_spans"])
    c = np.asarray(cot, dtype=np.float64).reshape(-1, R) * _ctpd._span_scale(
        sg, R, kw.get("reduce", "sum"))
    rows = np.arange(x.shape[0])[:, None]
    d = np.where(sg >= 0, c[rows, np.maximum(sg, 0)], 0.0)
    return {"dtoken_logps": d.reshape(lead + (x.shape[1],))}


def vjp_ctpd_loss(kw, cot):
    from refimpl._ctpd import ctpd_loss_grad

    _, d = ctpd_loss_grad(**kw)
    return {"dellS": float(np.asarray(cot)) * d}


def vjp_tis_dpo_loss(kw, cot):
    from refimpl._ctpd import tis_dpo_loss_grad

    _, d = tis_dpo_loss_grad(**kw)
    return {"dlogits": float(np.asarray(cot)) * d}
