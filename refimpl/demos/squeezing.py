"""``refimpl demo squeezing``: DPO's squeezing effect and logits-SAM (arXiv 2603.18258).

The squeezing effect (likelihood displacement): pushing a rejected token down in logit space,
``z <- z - eta (e_{y-} - p)``, changes every other token's log-prob by
``eta (p_k + p_{y-} - ||p||^2)`` to first order (:func:`refimpl.preference.squeeze_first_order`),
so only tokens with ``p_k > ||p||^2 - p_{y-}`` gain: mass moves to the argmax, and a chosen
token that is not the argmax can lose probability even though DPO raises its margin.

Toy (a **reconstruction**, preference.md sec. 10; not the paper's experiment): a softmax model
``logits = W tanh(A x)``, x in R^8, 16 hidden units, V = 30 tokens, 32 preference pairs with
one-token completions; the rejected context is the chosen context plus 0.2 Gaussian noise;
y+ is the 3rd most likely token and y- the least likely token of the initial model, which is
also the reference model. Full-batch gradient descent on the DPO sigmoid loss (beta = 0.1,
lr 1.0, 3000 steps), with

* plain DPO (``linear_dpo_loss_grad``),
* logits-SAM (``logits_sam_dpo_grad``: W perturbed by ``rho g_W / ||g_W||``, the body A
  trained through ``dH`` by the chain rule) for rho in {0.5, 2.0},
* full SAM (A and W perturbed together by ``rho g / ||g||``), rho = 2.0,
* head-only DPO and head-only logits-SAM rho = 2.0: A frozen at its initial value, W trained
  alone, so that logits-SAM is SAM on every trained parameter (the paper's logit-space
  setting: a softmax head on fixed features),

each over 8 seeds (the model, data and tokens are redrawn per seed; every method sees the
same seeds). Panels: mean chosen log-prob, mean rejected log-prob and mean argmax probability
at the chosen contexts vs step (mean over seeds, band = one standard error); chosen log-prob
vs the mean log-ratio margin ``h`` (is the chosen token kept at an equal margin?); the
first-order identity against the exact one-step change; per seed, each method's final chosen
log-prob minus plain DPO's (head-only: minus head-only DPO's; dashed curves).

Writes ``squeezing.png`` and ``squeezing.json`` (curves, per-seed final values, the verdicts,
the set-up). Verdicts: ``squeezing`` — the mean chosen log-prob under plain DPO rises, then
ends below its start (and in how many seeds); per method, the paired difference of the final
chosen log-prob to plain DPO (mean, standard error) and ``damps`` — positive beyond two
standard errors. What we measured (2026-11-22): squeezing in the mean and in 6 of 8 seeds;
the official code's logits-SAM (one positive rho) does **not** damp it in this toy (rho 0.5:
-0.05 +- 0.02; at an equal margin its curve lies on plain DPO's: it only moves faster along
the same path), full SAM does (rho 2: +0.19 +- 0.08); with the body frozen, logits-SAM (then
plain SAM) makes it slightly worse (rho 2: -0.09 +- 0.02). Runs on a CPU in about 30 s.
"""

from __future__ import annotations

import json
import pathlib

import numpy as np
from scipy.special import log_softmax

from refimpl import preference as P

D_IN, D_H, V, PAIRS = 8, 16, 30, 32
NOISE, CHOSEN_RANK = 0.2, 2          # y+ = 3rd most likely token (rank 2 from the top)
BETA, LR, STEPS, RECORD_EVERY = 0.1, 1.0, 3000, 50
SEEDS = tuple(range(8))
# (label, update, rho, train the body A): the head-only pair freezes A, so that logits-SAM is
# SAM on every trained parameter -- the paper's logit-space setting
METHODS = (("DPO", "dpo", 0.0, True), ("logits-SAM rho=0.5", "logits_sam", 0.5, True),
           ("logits-SAM rho=2.0", "logits_sam", 2.0, True),
           ("full SAM rho=2.0", "full_sam", 2.0, True),
           ("head-only DPO", "dpo", 0.0, False),
           ("head-only logits-SAM rho=2.0", "logits_sam", 2.0, False))


class Toy:
    """One seed's model, contexts and preference tokens (``logits = W tanh(A x)``)."""

    def __init__(self, seed: int):
        rng = np.random.default_rng(seed)
        self.A0 = rng.normal(size=(D_H, D_IN)) / np.sqrt(D_IN)
        self.W0 = 3.0 * rng.normal(size=(V, D_H)) / np.sqrt(D_H)
        xc = rng.normal(size=(PAIRS, D_IN))
        self.X = np.concatenate([xc, xc + NOISE * rng.normal(size=xc.shape)])   # chosen first
        L0 = self.log_probs(self.A0, self.W0)
        self.y_pos = np.argsort(-L0[:PAIRS], axis=1)[:, CHOSEN_RANK]
        self.y_neg = np.argmin(L0[PAIRS:], axis=1)
        self.labels = np.concatenate([self.y_pos, self.y_neg])[:, None]        # (R, T = 1)
        self.mask = np.ones((2 * PAIRS, 1), dtype=bool)
        self.ref_logp = L0[np.arange(2 * PAIRS), self.labels[:, 0]]

    def hidden(self, A):
        return np.tanh(self.X @ A.T)

    def log_probs(self, A, W):
        return log_softmax(self.hidden(A) @ W.T, axis=1)

    def dpo_grads(self, A, W, beta):
        """``(dA, dW)`` of the DPO loss: the head gradient, and ``dH`` through ``tanh``."""
        Hs = self.hidden(A)
        _, dH, dW, _ = P.linear_dpo_loss_grad(Hs[:, None], W, self.labels, self.mask,
                                              self.ref_logp, beta)
        return self._body(Hs, dH), dW

    def logits_sam_grads(self, A, W, beta, rho):
        Hs = self.hidden(A)
        g = P.logits_sam_dpo_grad(Hs[:, None], W, self.labels, self.mask, self.ref_logp,
                                  beta, rho)
        return self._body(Hs, g["dH"]), g["dW"]

    def full_sam_grads(self, A, W, beta, rho):
        """SAM on all parameters: the gradient at ``(A, W) + rho g / ||g||``."""
        dA, dW = self.dpo_grads(A, W, beta)
        n = max(np.sqrt((dA ** 2).sum() + (dW ** 2).sum()), 1e-12)
        return self.dpo_grads(A + rho * dA / n, W + rho * dW / n, beta)

    def _body(self, Hs, dH):
        return (dH[:, 0] * (1.0 - Hs ** 2)).T @ self.X

    def record(self, A, W):
        """Means of: chosen log-prob, rejected log-prob, argmax probability (chosen contexts),
        log-ratio margin ``h = (l_c - lref_c) - (l_r - lref_r)``."""
        L = self.log_probs(A, W)
        i = np.arange(PAIRS)
        lc, lr = L[i, self.y_pos], L[PAIRS + i, self.y_neg]
        h = (lc - self.ref_logp[:PAIRS]) - (lr - self.ref_logp[PAIRS:])
        return lc.mean(), lr.mean(), np.exp(L[:PAIRS].max(axis=1)).mean(), h.mean()


def train(toy: Toy, method: str, beta: float, rho: float, body: bool = True) -> np.ndarray:
    """``(STEPS / RECORD_EVERY + 1, 4)``: the :meth:`Toy.record` values along training
    (``body=False`` keeps A at its initial value and trains W alone)."""
    A, W = toy.A0.copy(), toy.W0.copy()
    rows = []
    for step in range(STEPS + 1):
        if step % RECORD_EVERY == 0:
            rows.append(toy.record(A, W))
        if step == STEPS:
            break
        if method == "dpo":
            dA, dW = toy.dpo_grads(A, W, beta)
        elif method == "logits_sam":
            dA, dW = toy.logits_sam_grads(A, W, beta, rho)
        else:
            dA, dW = toy.full_sam_grads(A, W, beta, rho)
        if body:
            A -= LR * dA
        W -= LR * dW
    return np.array(rows)


def first_order_check(seed: int = 0, eta: float = 1e-5):
    """Predicted (``squeeze_first_order``) vs exact change of ``log p_k`` for one step of
    pushing the rejected token down in free-logit space, at every rejected context."""
    toy = Toy(seed)
    Z = toy.hidden(toy.A0)[PAIRS:] @ toy.W0.T
    p = np.exp(log_softmax(Z, axis=1))
    k = toy.y_neg
    onehot = np.zeros_like(p)
    onehot[np.arange(PAIRS), k] = 1.0
    exact = log_softmax(Z - eta * (onehot - p), axis=1) - log_softmax(Z, axis=1)
    return P.squeeze_first_order(p, k, eta), exact


def run(outdir: pathlib.Path) -> dict:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    outdir = pathlib.Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    toys = [Toy(s) for s in SEEDS]
    steps = list(range(0, STEPS + 1, RECORD_EVERY))
    curves = {label: np.stack([train(t, method, BETA, rho, body) for t in toys])  # (seeds, t, 4)
              for label, method, rho, body in METHODS}
    baseline = {body: label for label, method, _, body in METHODS if method == "dpo"}
    dpo = curves["DPO"][:, :, 0]
    mean = dpo.mean(axis=0)
    per_seed = (dpo.max(axis=1) > dpo[:, 0]) & (dpo[:, -1] < dpo[:, 0])
    verdicts = {"squeezing": bool(mean.max() > mean[0] and mean[-1] < mean[0]),
                "squeezing_seeds": f"{int(per_seed.sum())}/{len(SEEDS)}",
                "dpo_chosen_start_peak_end": [float(mean[0]), float(mean.max()), float(mean[-1])]}
    diffs = {}
    for label, method, _, body in METHODS:
        if method == "dpo":
            continue
        d = curves[label][:, -1, 0] - curves[baseline[body]][:, -1, 0]
        se = float(d.std(ddof=1) / np.sqrt(d.size))
        diffs[label] = d
        verdicts[label] = {"baseline": baseline[body], "final_chosen_minus_dpo": float(d.mean()),
                           "se": se, "damps": bool(d.mean() > 2 * se)}
    pred, exact = first_order_check()
    identity_err = float(np.max(np.abs(pred - exact)) / np.max(np.abs(exact)))

    fig, axes = plt.subplots(2, 3, figsize=(16, 9))
    titles = ("mean chosen log-prob", "mean rejected log-prob",
              "mean argmax probability (chosen contexts)")
    for j, (ax, title) in enumerate(zip(axes[0], titles)):
        for label, _, _, body in METHODS:
            runs = curves[label][:, :, j]
            m, s = runs.mean(0), runs.std(0, ddof=1) / np.sqrt(runs.shape[0])
            ax.plot(steps, m, label=label, ls="-" if body else "--")
            ax.fill_between(steps, m - s, m + s, alpha=0.2)
        ax.set_title(f"{title}, beta = {BETA}")
        ax.set_xlabel("step")
    axes[0, 0].axhline(mean[0], color="grey", lw=0.8, ls=":")
    axes[0, 0].legend(fontsize=8)
    ax = axes[1, 0]
    for label, _, _, body in METHODS:
        ax.plot(curves[label][:, :, 3].mean(0), curves[label][:, :, 0].mean(0), label=label,
                ls="-" if body else "--")
    ax.set_xlabel("mean log-ratio margin h")
    ax.set_ylabel("mean chosen log-prob")
    ax.set_title("chosen log-prob at equal margin")
    ax = axes[1, 1]
    ax.scatter(exact.ravel(), pred.ravel(), s=4)
    lim = np.abs(exact).max()
    ax.plot([-lim, lim], [-lim, lim], color="grey", lw=0.8)
    ax.set_title(f"first-order identity, eta = 1e-5 (max rel err {identity_err:.1e})")
    ax.set_xlabel("exact one-step change of log p_k")
    ax.set_ylabel("eta (p_k + p_y- - ||p||^2 - [k = y-])")
    ax = axes[1, 2]
    ax.boxplot(list(diffs.values()), tick_labels=[k.replace(" rho", "\nrho") for k in diffs])
    ax.axhline(0.0, color="grey", lw=0.8)
    ax.set_title("final chosen log-prob minus (head-only) DPO's, per seed")
    fig.tight_layout()
    fig.savefig(outdir / "squeezing.png", dpi=110)
    plt.close(fig)

    summary = {
        "setup": {"d_in": D_IN, "d_h": D_H, "V": V, "pairs": PAIRS, "noise": NOISE,
                  "chosen_rank": CHOSEN_RANK, "beta": BETA, "lr": LR, "steps": STEPS,
                  "seeds": list(SEEDS), "methods": [m[0] for m in METHODS]},
        "first_order_identity_max_rel_err": identity_err,
        "verdicts": verdicts,
        "final_chosen_logp_per_seed": {k: v[:, -1, 0].tolist() for k, v in curves.items()},
        "curves": {label: {"step": steps, "chosen_mean": r[:, :, 0].mean(0).tolist(),
                           "rejected_mean": r[:, :, 1].mean(0).tolist(),
                           "argmax_mass_mean": r[:, :, 2].mean(0).tolist(),
                           "margin_mean": r[:, :, 3].mean(0).tolist()}
                   for label, r in curves.items()},
    }
    summary["headline"] = {
        "squeezing (DPO)": verdicts["squeezing"], "squeezing seeds": verdicts["squeezing_seeds"],
        **{f"{k} - {v['baseline']}, final chosen log-prob": f"{v['final_chosen_minus_dpo']:+.3f} "
                                                   f"+- {v['se']:.3f} (damps: {v['damps']})"
           for k, v in verdicts.items() if isinstance(v, dict)}}
    (outdir / "squeezing.json").write_text(json.dumps(summary, indent=1))
    return summary
