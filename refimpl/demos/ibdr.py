"""``refimpl demo ibdr``: IBDR's DPP diversity term and its distributionally robust step
(arXiv 2506.07247; official code ``ngocquanofficial/DRO``) on a toy ensemble. The toy is
**ours** (spec ``safety_ensembles.md``, "Demo ``refimpl demo ibdr``"); no number of the paper
is claimed or reproduced.

Set-up (NumPy, float64, CPU, seeded). Data: 2-D three-class spirals (N_PER_CLASS training and
N_TEST_PER_CLASS test points per class; class c's arm has angle ``TURNS 2 pi t + 2 pi c / 3``
at radius ``t``, ``t = sqrt(U(0, 1))``, plus Gaussian noise NOISE). A shared, frozen
random-feature layer stands in for the frozen backbone: D_FEAT random Fourier features
``z(x) = sqrt(2 / D) cos(Omega x + b)``, ``Omega ~ N(0, I / LENGTHSCALE^2)``,
``b ~ U(0, 2 pi)``, plus a constant 1 for the bias. K = K_PARTICLES particles = separate linear
heads ``F_k = z W_k^T`` (the official runs' per-particle LoRA + head reduced to a head),
initialised ``N(0, INIT_STD^2)`` independently per particle.

Training: the official code's ``optimizer == "dro"`` step (spec B.3), per minibatch of BATCH:

1. ``loss = CE(mean_k F_k) - alpha_div LD`` and its gradient (``ibdr_loss_grad``; chained to
   the head weights by ``dW_k = dF_k^T z``, :func:`loss_and_grad`);
2. ``theta' = dro_ascent(theta, g, lam, clip=CLIP)`` (global-norm clip 0.12 as
   ``torch.nn.utils.clip_grad_norm_`` does in the official code, then ``+ g / (2 lam)``);
3. the gradient at ``theta'``; theta restored; an SGD step with momentum MOMENTUM (torch's
   form: ``v <- m v + g'``, ``theta <- theta - lr_t v``) with that gradient — the descent
   gradient is not clipped (the official code clips only the first gradient);
4. ``lam <- ibdr_dual_update(lam, prediction_distance(Fbar', Fbar), lr_t, bound=BOUND)``
   (lam_0 = LAM0 = 3, clipped to [0.5, 5]), with ``lr_t`` the current learning rate.

Learning rate: a cosine schedule with linear warm-up (``get_cosine_schedule_with_warmup``'s
shape, as in the official configs), peak LR over WARMUP_FRAC of the steps, to 0 at the end.
Peak LR = 0.5 (the official configs use 0.2-0.25 for ViT LoRA; at 0.2 and 40 epochs this toy
underfits: ensemble ECE ~0.08, all of it under-confidence).
Runs: alpha_div in ALPHAS = (0, 0.02, 0.15), same data, features, initial heads and minibatch
order. With alpha_div = 0 every head gets the same gradient (CE of the averaged logits), so
the heads' differences stay those of the initialisation and the growing shared part makes
them agree; the diversity term is what keeps them apart. Optional baseline (SVGD = True):
SVGD over the same K heads (RBF kernel on the flattened head weights, median heuristic
``h = med^2 / log(K + 1)``; each particle's own CE, the driving term and the repulsion divided
by the training-set size so that the same LR and momentum apply), plain gradients.

Measured each epoch on the test set: the mean pairwise cosine of the ``qh`` vectors (the
probabilities without the true class, normalised — what the DPP acts on), the accuracy and
the 15-bin ECE of the ensemble (``softmax`` of the mean logits: the official code's
``pred_``, fed to torchmetrics' ``MulticlassCalibrationError``, 15 bins, L1); lam at every
step. Panels: ensemble decision regions for alpha_div = 0 and 0.15; mean pairwise cosine vs
epoch; reliability diagram (15 bins) with each run's ECE; lam over steps. Verdict ``pass``:
the final mean pairwise cosine at alpha_div = 0.15 is below that at alpha_div = 0 (accuracy
and ECE are reported, not asserted). Writes ``ibdr.png`` and ``ibdr.json``. Runs in seconds.

What we measured (2026-11-22, seed 0; about 5 s on a CPU): final qh cosine 0.928 / 0.460 /
0.375 for alpha_div = 0 / 0.02 / 0.15 (SVGD 0.992) — pass, and in seeds 1-3 too; test
accuracy 0.970 / 0.970 / 0.971 (SVGD 0.973), ECE 0.020 / 0.020 / 0.021 (SVGD 0.015): the
diversity does **not** improve calibration here. Reason: the code's CE sees only the averaged
logits, so the heads' deviations from their mean are free for the DPP term, which spreads them
with the ensemble's prediction almost unchanged. With 3 classes qh has C - 1 = 2 dimensions,
so the 4 x 4 Gram has rank <= 2 and LD = 2 log(jitter) + the log-volume of a 2 x 2 part. The
prediction distance stays ~1e-3, far below bound = 0.03, so lam follows the bound-only path
``lam_0 - bound sum lr_t`` (max deviation 0.07) to the floor 0.5 after ~200 of 1140 steps and
stays there: in this toy the dual update never reacts to the data.
"""

from __future__ import annotations

import json
import pathlib
import time

import numpy as np
from scipy.special import log_softmax, softmax

from refimpl import safety_ensembles as B

SEED = 0
N_PER_CLASS, N_TEST_PER_CLASS, C = 200, 1000, 3
TURNS, NOISE = 0.75, 0.08
D_FEAT, LENGTHSCALE = 256, 0.25
K_PARTICLES, INIT_STD = 4, 0.5
ALPHAS = (0.0, 0.02, 0.15)
EPOCHS, BATCH, LR, WARMUP_FRAC, MOMENTUM = 60, 32, 0.5, 0.05, 0.9
CLIP, LAM0, BOUND = 0.12, 3.0, 0.03
ECE_BINS, GRID = 15, 150
SVGD = True


# ------------------------------------------------------------------ data, features, model

def spirals(n_per_class: int, rng) -> tuple[np.ndarray, np.ndarray]:
    """``(X (3n, 2), y (3n,))``: three noisy spiral arms."""
    t = np.sqrt(rng.uniform(size=(C, n_per_class)))
    ang = TURNS * 2 * np.pi * t + 2 * np.pi * np.arange(C)[:, None] / C
    X = np.stack([t * np.cos(ang), t * np.sin(ang)], -1).reshape(-1, 2)
    X = X + NOISE * rng.normal(size=X.shape)
    return X, np.repeat(np.arange(C), n_per_class)


class Features:
    """The frozen random Fourier feature layer, with a trailing constant 1 (the bias)."""

    def __init__(self, rng):
        self.Omega = rng.normal(size=(D_FEAT, 2)) / LENGTHSCALE
        self.b = rng.uniform(0, 2 * np.pi, D_FEAT)

    def __call__(self, X):
        Z = np.sqrt(2.0 / D_FEAT) * np.cos(X @ self.Omega.T + self.b)
        return np.concatenate([Z, np.ones((len(X), 1))], 1)


def make_problem(seed: int = SEED) -> dict:
    rng = np.random.default_rng(seed)
    Xtr, ytr = spirals(N_PER_CLASS, rng)
    Xte, yte = spirals(N_TEST_PER_CLASS, rng)
    feat = Features(rng)
    theta0 = INIT_STD * rng.normal(size=(K_PARTICLES, C, D_FEAT + 1))
    return {"Xtr": Xtr, "ytr": ytr, "Xte": Xte, "yte": yte, "feat": feat,
            "Ztr": feat(Xtr), "Zte": feat(Xte), "theta0": theta0}


def logits_of(theta: np.ndarray, Z: np.ndarray) -> np.ndarray:
    """``(K, B, C)``: every head on the features ``Z (B, D+1)``; theta is ``(K, C, D+1)``."""
    return np.einsum("kcd,bd->kbc", theta, Z)


def loss_and_grad(theta, Z, y, alpha_div):
    """``(loss, dtheta (K, C, D+1), Fbar (B, C))``: ``ibdr_loss_grad`` chained to the heads,
    ``dW_k = dF_k^T Z``."""
    F = logits_of(theta, Z)
    loss, dF = B.ibdr_loss_grad(F, y, alpha_div=alpha_div)
    return loss, np.einsum("kbc,bd->kcd", dF, Z), F.mean(0)


def lr_at(step: int, total: int) -> float:
    """Linear warm-up over ``WARMUP_FRAC`` of the steps, then a half cosine to 0."""
    warm = max(1, round(WARMUP_FRAC * total))
    if step < warm:
        return LR * (step + 1) / warm
    return LR * 0.5 * (1 + np.cos(np.pi * (step - warm) / max(1, total - warm)))


# ------------------------------------------------------------------ metrics

def pairwise_qh_cosine(F: np.ndarray, y: np.ndarray) -> float:
    """Mean over points and particle pairs i < j of ``qh_i . qh_j``."""
    P = softmax(F, axis=2)
    K, n, _ = P.shape
    keep = np.ones((n, C), bool)
    keep[np.arange(n), y] = False
    Q = P[:, keep].reshape(K, n, C - 1)
    qh = Q / np.maximum(np.linalg.norm(Q, axis=2, keepdims=True), 1e-12)
    G = np.einsum("ibc,jbc->ijb", qh, qh).mean(2)
    iu = np.triu_indices(K, 1)
    return float(G[iu].mean())


def reliability(probs: np.ndarray, y: np.ndarray, bins: int = ECE_BINS) -> dict:
    """Equal-width confidence bins on [0, 1] (right-closed, as torchmetrics): per bin the
    count, mean confidence and accuracy; ``ece = sum_b n_b / n |acc_b - conf_b|``."""
    conf = probs.max(1)
    correct = (probs.argmax(1) == y).astype(float)
    idx = np.clip(np.ceil(conf * bins).astype(int) - 1, 0, bins - 1)
    count = np.bincount(idx, minlength=bins)
    s_conf = np.bincount(idx, conf, minlength=bins)
    s_acc = np.bincount(idx, correct, minlength=bins)
    nz = count > 0
    mconf = np.where(nz, s_conf / np.maximum(count, 1), np.nan)
    macc = np.where(nz, s_acc / np.maximum(count, 1), np.nan)
    ece = float(np.sum(count[nz] / len(y) * np.abs(macc[nz] - mconf[nz])))
    return {"count": count.tolist(), "confidence": [None if np.isnan(v) else float(v) for v in mconf],
            "accuracy": [None if np.isnan(v) else float(v) for v in macc], "ece": ece}


def evaluate(theta, Z, y) -> dict:
    F = logits_of(theta, Z)
    lp = log_softmax(F.mean(0), axis=1)
    return {"cos": pairwise_qh_cosine(F, y), "acc": float((lp.argmax(1) == y).mean()),
            "nll": float(-lp[np.arange(len(y)), y].mean()),
            "ece": reliability(np.exp(lp), y)["ece"]}


# ------------------------------------------------------------------ training

def batches(n: int, seed: int):
    """The minibatch order of every epoch (shared by all runs)."""
    rng = np.random.default_rng(seed + 1)
    return [np.array_split(rng.permutation(n), int(np.ceil(n / BATCH))) for _ in range(EPOCHS)]


def svgd_direction(theta, Z, y, n_train):
    """SVGD's descent direction for the heads (each particle's own CE, RBF kernel with the
    median heuristic), scaled by ``1 / n_train``: ``-(1/K) sum_j [k_ji grad log p_j +
    grad_j k_ji] / n_train`` with ``log p_j = -n_train CE_j``."""
    F = logits_of(theta, Z)
    K, n, _ = F.shape
    dF = softmax(F, axis=2)
    dF[:, np.arange(n), y] -= 1.0
    gce = np.einsum("kbc,bd->kcd", dF / n, Z).reshape(K, -1)        # grad of each CE_j
    x = theta.reshape(K, -1)
    d2 = ((x[:, None] - x[None]) ** 2).sum(-1)
    h = max(np.median(d2[np.triu_indices(K, 1)]) / np.log(K + 1), 1e-12)
    kern = np.exp(-d2 / h)
    # sum_j grad_{x_j} k(x_j, x_i) = sum_j -2 (x_j - x_i) k_ji / h
    rep = (2.0 / h) * (kern.sum(1)[:, None] * x - kern @ x)
    return ((kern @ gce) - rep / n_train).reshape(theta.shape) / K


def train(prob: dict, alpha_div: float | None, order) -> dict:
    """One run: ``alpha_div`` a number = the IBDR step; ``None`` = the SVGD baseline."""
    theta = prob["theta0"].copy()
    v = np.zeros_like(theta)
    lam = LAM0
    total = sum(len(e) for e in order)
    Z, y = prob["Ztr"], prob["ytr"]
    hist = {"epoch": [0], **{k: [val] for k, val in evaluate(theta, prob["Zte"], prob["yte"]).items()}}
    lams, dists, lrs = [], [], []
    step = 0
    for epoch, idx_list in enumerate(order, 1):
        for idx in idx_list:
            lr = lr_at(step, total)
            Zb, yb = Z[idx], y[idx]
            if alpha_div is None:
                g = svgd_direction(theta, Zb, yb, len(y))
            else:
                _, g, Fbar = loss_and_grad(theta, Zb, yb, alpha_div)
                theta_p = B.dro_ascent(theta.ravel(), g.ravel(), lam, clip=CLIP).reshape(theta.shape)
                _, g, Fbar_p = loss_and_grad(theta_p, Zb, yb, alpha_div)   # theta is untouched
                d_raw = B.prediction_distance(Fbar_p, Fbar)
                lam = B.ibdr_dual_update(lam, d_raw, lr, bound=BOUND)
                lams.append(lam)
                dists.append(d_raw)
            v = MOMENTUM * v + g
            theta = theta - lr * v
            lrs.append(lr)
            step += 1
        hist["epoch"].append(epoch)
        for k, val in evaluate(theta, prob["Zte"], prob["yte"]).items():
            hist[k].append(val)
    return {"theta": theta, "history": hist, "lam": lams, "d_raw": dists, "lr": lrs}


def bound_only_lam(lrs) -> np.ndarray:
    """lam's path if every prediction distance were 0: ``lam <- clip(lam - lr_t bound, 0.5, 5)``
    (what the dual update reduces to when ``d_raw << bound``)."""
    lam, out = LAM0, []
    for lr in lrs:
        lam = min(max(lam - lr * BOUND, 0.5), 5.0)
        out.append(lam)
    return np.array(out)


# ------------------------------------------------------------------ run

def _label(a):
    return "SVGD" if a is None else f"alpha_div={a:g}"


def run(outdir: pathlib.Path) -> dict:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    t0 = time.perf_counter()
    outdir = pathlib.Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    prob = make_problem(SEED)
    order = batches(len(prob["ytr"]), SEED)
    cases = list(ALPHAS) + ([None] if SVGD else [])
    runs = {_label(a): train(prob, a, order) for a in cases}
    lo_a, hi_a = _label(min(ALPHAS)), _label(max(ALPHAS))

    final, rel = {}, {}
    for name, r in runs.items():
        F = logits_of(r["theta"], prob["Zte"])
        probs = softmax(F.mean(0), axis=1)
        rel[name] = reliability(probs, prob["yte"])
        final[name] = {k: r["history"][k][-1] for k in ("cos", "acc", "nll", "ece")}
        final[name]["train_acc"] = float(
            (logits_of(r["theta"], prob["Ztr"]).mean(0).argmax(1) == prob["ytr"]).mean())
        if r["lam"]:
            final[name].update(lam_min=float(min(r["lam"])), lam_max=float(max(r["lam"])),
                               lam_final=float(r["lam"][-1]),
                               lam_minus_bound_only_max=float(np.max(np.abs(
                                   np.array(r["lam"]) - bound_only_lam(r["lr"])))),
                               d_raw_max=float(max(r["d_raw"])))
    cos_lo, cos_hi = final[lo_a]["cos"], final[hi_a]["cos"]
    verdicts = {"final_cos_lowest_alpha": cos_lo, "final_cos_highest_alpha": cos_hi,
                "pass": bool(cos_hi < cos_lo)}

    # ---- figure
    fig, axes = plt.subplots(2, 3, figsize=(16, 9.5))
    X, y = prob["Xtr"], prob["ytr"]
    pad = 0.2
    g0 = np.linspace(X[:, 0].min() - pad, X[:, 0].max() + pad, GRID)
    g1 = np.linspace(X[:, 1].min() - pad, X[:, 1].max() + pad, GRID)
    G0, G1 = np.meshgrid(g0, g1)
    Zg = prob["feat"](np.stack([G0.ravel(), G1.ravel()], 1))
    colours = np.array([[0.85, 0.3, 0.25], [0.25, 0.55, 0.85], [0.3, 0.7, 0.35]])
    for ax, name in zip(axes[0, :2], (lo_a, hi_a)):
        Fg = logits_of(runs[name]["theta"], Zg)
        pg = softmax(Fg.mean(0), axis=1)
        img = colours[pg.argmax(1)] * pg.max(1)[:, None] + (1 - pg.max(1)[:, None])
        ax.imshow(img.reshape(GRID, GRID, 3), origin="lower", extent=(g0[0], g0[-1], g1[0], g1[-1]))
        ax.scatter(X[:, 0], X[:, 1], c=y, cmap=ListedColormap(colours), s=6, edgecolors="k",
                   linewidths=0.2)
        f = final[name]
        ax.set_title(f"ensemble, {name} (shade = confidence)\n"
                     f"test acc {f['acc']:.3f}, ECE {f['ece']:.3f}, qh cosine {f['cos']:.3f}")
    ax = axes[0, 2]
    for name, r in runs.items():
        ax.plot(r["history"]["epoch"], r["history"]["cos"], label=name,
                ls="--" if name == "SVGD" else "-")
    ax.set_xlabel("epoch")
    ax.set_title("mean pairwise cosine of qh (test set)")
    ax.legend(fontsize=8)
    ax = axes[1, 0]
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8)
    for name in runs:
        cf = np.array([np.nan if c is None else c for c in rel[name]["confidence"]])
        ac = np.array([np.nan if a is None else a for a in rel[name]["accuracy"]])
        ax.plot(cf, ac, marker="o", ms=3, label=f"{name}: ECE {rel[name]['ece']:.3f}",
                ls="--" if name == "SVGD" else "-")
    ax.set_xlabel("mean confidence (bin)")
    ax.set_ylabel("accuracy (bin)")
    ax.set_title(f"reliability, {ECE_BINS} bins, test set")
    ax.legend(fontsize=8)
    ax = axes[1, 1]
    for name, r in runs.items():
        if r["lam"]:
            ax.plot(r["lam"], label=name, lw=0.9)
    ax.plot(bound_only_lam(runs[lo_a]["lr"]), color="k", ls=":", lw=1.0,
            label="if d_raw = 0: lam_0 - bound sum lr_t")
    ax.set_xlabel("step")
    ax.set_title(f"lam (lam_0 = {LAM0:g}, bound = {BOUND:g}, clipped to [0.5, 5])")
    ax.legend(fontsize=8)
    ax = axes[1, 2]
    for name, r in runs.items():
        if r["d_raw"]:
            ax.plot(r["d_raw"], label=name, lw=0.6, alpha=0.8)
    ax.axhline(BOUND, color="grey", ls=":", lw=0.8)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_title("prediction distance d_raw (dotted: bound)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(outdir / "ibdr.png", dpi=100)
    plt.close(fig)

    seconds = time.perf_counter() - t0
    summary = {
        "note": "toy of ours (spec safety_ensembles.md, demo ibdr); no paper number claimed",
        "setup": {"seed": SEED, "n_train": len(prob["ytr"]), "n_test": len(prob["yte"]),
                  "classes": C, "turns": TURNS, "noise": NOISE, "d_feat": D_FEAT,
                  "lengthscale": LENGTHSCALE, "particles": K_PARTICLES, "init_std": INIT_STD,
                  "alphas": list(ALPHAS), "epochs": EPOCHS, "batch": BATCH, "lr": LR,
                  "schedule": f"linear warm-up over {WARMUP_FRAC:g} of the steps, cosine to 0",
                  "momentum": MOMENTUM, "clip": CLIP, "lam0": LAM0, "bound": BOUND,
                  "ece_bins": ECE_BINS, "svgd": SVGD,
                  "ensemble": "softmax of the mean logits (official code's pred_)"},
        "verdicts": verdicts,
        "final": final,
        "reliability": rel,
        "curves": {name: {**r["history"], "lam": r["lam"], "d_raw": r["d_raw"], "lr": r["lr"]}
                   for name, r in runs.items()},
        "seconds": seconds,
        "pass": verdicts["pass"],
    }
    summary["headline"] = {
        **{f"{name}: final qh cosine / test acc / ECE / NLL": (
            f"{f['cos']:.3f} / {f['acc']:.3f} / {f['ece']:.3f} / {f['nll']:.3f}")
           for name, f in final.items()},
        **{f"{name}: lam range": f"{f['lam_min']:.3f} .. {f['lam_max']:.3f}"
           for name, f in final.items() if "lam_min" in f},
        "max |lam - bound-only path|": f"{max(f.get('lam_minus_bound_only_max', 0) for f in final.values()):.2e}",
        "run time (s)": f"{seconds:.1f}",
        f"final qh cosine {hi_a} < {lo_a}": verdicts["pass"],
        "pass": verdicts["pass"],
    }
    (outdir / "ibdr.json").write_text(json.dumps(summary, indent=1))
    return summary
