"""``refimpl demo squeezing``: DPO's squeezing effect and logits-SAM (arXiv 2603.18258).

The squeezing effect (likelihood displacement): pushing a rejected token down in logit space,
``z <- z - eta (e_{y-} - p)``, changes every other token's log-prob by
``eta (p_k + p_{y-} - ||p||^2)`` to first order (:func:`refimpl.preference.squeeze_first_order`),
so only tokens with ``p_k > ||p||^2 - p_{y-}`` gain: mass moves to the argmax, and a chosen
token that is not the argmax can lose probability even though DPO raises its margin.
logits-SAM takes the DPO gradient at ``W + rho g_W / ||g_W||`` (the official code's step).

Toy (a **reconstruction**, preference.md sec. 10; not the paper's experiment): a softmax model
``logits = W tanh(A x)``, x in R^8, 16 hidden units, V = 30 tokens, 32 preference pairs with
one-token completions. The chosen and the rejected token are read at **separate contexts**,
drawn independently (in a language model the two completions share the prompt, but each of
their tokens sees its own prefix). y+ is the 3rd most likely token at its context and y- the
least likely at its context, under the initial model, which is also the reference model.
Full-batch gradient descent on the DPO sigmoid loss (beta = 0.1, lr 1.0, 2000 steps) with

* plain DPO (``linear_dpo_loss_grad``),
* logits-SAM (``logits_sam_dpo_grad``: W perturbed by ``rho g_W / ||g_W||``, the body A
  trained through ``dH`` by the chain rule) for rho in {2, 5, 10},
* full SAM (A and W perturbed together by ``rho g / ||g||``), rho = 5,

and, as a contrast, DPO and logits-SAM rho = 10 on **near-identical contexts** (the rejected
context is the chosen one plus 0.2 Gaussian noise, as in the spec's toy; the same model and
chosen contexts).

Each over 12 seeds (model, data and tokens redrawn per seed; every method sees the same
seeds). Panels: mean chosen log-prob, mean rejected log-prob and mean argmax probability at
the chosen contexts vs step (mean over seeds, band = one standard error); chosen log-prob vs the
mean log-ratio margin ``h`` (is the chosen token kept at an equal margin?); the contrast on
near-identical contexts; the first-order identity against the exact one-step change; per
seed, each method's final chosen log-prob minus its baseline DPO's; and
:func:`chosen_per_margin` -- how much chosen log-prob one DPO step and one logits-SAM step
gain per unit margin, at the states reached after 300 steps of DPO and of logits-SAM (does
logits-SAM squeeze less per step, or does it lead to states where steps squeeze less?).

Writes ``squeezing.png`` and ``squeezing.json`` (curves, per-seed final values, the verdicts,
the set-up). Verdicts: ``squeezing`` -- the mean chosen log-prob under plain DPO rises, then
ends below its start (and in how many seeds); per method, the paired difference of the final
chosen log-prob to its baseline DPO (mean, standard error, seeds above), ``damps`` -- positive
beyond two standard errors, and the paired difference at the baseline's final margin (over the
seeds that reach it). Measured results: docs/preference.md. Runs on a CPU in about 40 s.
"""

from __future__ import annotations

import json
import pathlib

import numpy as np
from scipy.special import log_softmax

from refimpl import preference as P

D_IN, D_H, V, PAIRS = 8, 16, 30, 32
CHOSEN_RANK = 2                      # y+ = 3rd most likely token (rank 2 from the top)
NEAR = 0.2                           # near-identical contexts: rejected = chosen + NEAR * noise
BETA, LR, STEPS, RECORD_EVERY = 0.1, 1.0, 2000, 50
SEEDS = tuple(range(12))
# (label, update, rho, contexts): contexts None = separate, NEAR = near-identical
METHODS = (("DPO", "dpo", 0.0, None),
           ("logits-SAM rho=2", "logits_sam", 2.0, None),
           ("logits-SAM rho=5", "logits_sam", 5.0, None),
           ("logits-SAM rho=10", "logits_sam", 10.0, None),
           ("full SAM rho=5", "full_sam", 5.0, None),
           ("DPO, near-identical contexts", "dpo", 0.0, NEAR),
           ("logits-SAM rho=10, near-identical contexts", "logits_sam", 10.0, NEAR))
PROBE_RHO, PROBE_STEPS = 10.0, 300   # chosen_per_margin: logits-SAM rho, states after 300 steps


class Toy:
    """One seed's model, contexts and preference tokens (``logits = W tanh(A x)``).

    ``noise=None``: the rejected contexts are drawn independently of the chosen ones;
    ``noise=s``: each rejected context is its chosen context plus ``s`` times Gaussian noise.
    The model and the chosen contexts depend on the seed alone."""

    def __init__(self, seed: int, noise: float | None = None):
        rng = np.random.default_rng(seed)
        self.A0 = rng.normal(size=(D_H, D_IN)) / np.sqrt(D_IN)
        self.W0 = 3.0 * rng.normal(size=(V, D_H)) / np.sqrt(D_H)
        xc = rng.normal(size=(PAIRS, D_IN))
        z = rng.normal(size=xc.shape)
        self.X = np.concatenate([xc, z if noise is None else xc + noise * z])   # chosen first
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

    def grads(self, A, W, method, beta, rho):
        """``(dA, dW)`` of one update: ``"dpo"``, ``"logits_sam"`` or ``"full_sam"``."""
        if method == "dpo":
            return self.dpo_grads(A, W, beta)
        if method == "logits_sam":
            return self.logits_sam_grads(A, W, beta, rho)
        return self.full_sam_grads(A, W, beta, rho)

    def record(self, A, W):
        """Means of: chosen log-prob, rejected log-prob, argmax probability (chosen contexts),
        log-ratio margin ``h = (l_c - lref_c) - (l_r - lref_r)``."""
        L = self.log_probs(A, W)
        i = np.arange(PAIRS)
        lc, lr = L[i, self.y_pos], L[PAIRS + i, self.y_neg]
        h = (lc - self.ref_logp[:PAIRS]) - (lr - self.ref_logp[PAIRS:])
        return lc.mean(), lr.mean(), np.exp(L[:PAIRS].max(axis=1)).mean(), h.mean()


def train(toy: Toy, method: str, beta: float, rho: float, steps: int | None = None,
          record_every: int = RECORD_EVERY):
    """``(steps / record_every + 1, 4)``: the :meth:`Toy.record` values along ``steps`` (default
    ``STEPS``) updates, and the final ``(A, W)``."""
    A, W = toy.A0.copy(), toy.W0.copy()
    steps = STEPS if steps is None else steps
    rows = [toy.record(A, W)]
    for step in range(1, steps + 1):
        dA, dW = toy.grads(A, W, method, beta, rho)
        A, W = A - LR * dA, W - LR * dW
        if step % record_every == 0:
            rows.append(toy.record(A, W))
    return np.array(rows), (A, W)


def chosen_per_margin(toy: Toy, A, W, probe: str, rho: float, e: float = 1e-4) -> float:
    """At the state ``(A, W)``, take one update of ``probe`` scaled by ``e``: the change of the
    mean chosen log-prob per unit of mean margin ``h`` gained (negative: that step squeezes the
    chosen token at that state)."""
    dA, dW = toy.grads(A, W, probe, BETA, rho)
    (c0, _, _, h0), (c1, _, _, h1) = toy.record(A, W), toy.record(A - e * dA, W - e * dW)
    return float((c1 - c0) / (h1 - h0))


def chosen_at_margin(curve: np.ndarray, margin: float) -> float:
    """The chosen log-prob of one :func:`train` curve where its mean margin ``h`` first reaches
    ``margin`` (linear interpolation between records); NaN if it never does."""
    h, chosen = curve[:, 3], curve[:, 0]
    if h.max() < margin:
        return float("nan")
    k = int(np.argmax(h >= margin))
    if k == 0:
        return float(chosen[0])
    t = (margin - h[k - 1]) / (h[k] - h[k - 1])
    return float(chosen[k - 1] + t * (chosen[k] - chosen[k - 1]))


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
    toys = {noise: [Toy(s, noise) for s in SEEDS] for noise in {m[3] for m in METHODS}}
    steps = list(range(0, STEPS + 1, RECORD_EVERY))
    curves = {label: np.stack([train(t, method, BETA, rho)[0] for t in toys[noise]])  # (seeds,t,4)
              for label, method, rho, noise in METHODS}
    baseline = {noise: label for label, method, _, noise in METHODS if method == "dpo"}
    dpo = curves["DPO"][:, :, 0]
    mean = dpo.mean(axis=0)
    per_seed = (dpo.max(axis=1) > dpo[:, 0]) & (dpo[:, -1] < dpo[:, 0])
    verdicts = {"squeezing": bool(mean.max() > mean[0] and mean[-1] < mean[0]),
                "squeezing_seeds": f"{int(per_seed.sum())}/{len(SEEDS)}",
                "dpo_chosen_start_peak_end": [float(mean[0]), float(mean.max()), float(mean[-1])]}
    diffs = {}
    for label, method, _, noise in METHODS:
        if method == "dpo":
            continue
        base = curves[baseline[noise]]
        d = curves[label][:, -1, 0] - base[:, -1, 0]
        se = float(d.std(ddof=1) / np.sqrt(d.size))
        eq = np.array([chosen_at_margin(c, b[-1, 3]) - b[-1, 0]
                       for c, b in zip(curves[label], base)])
        reached = np.isfinite(eq)
        diffs[label] = d
        verdicts[label] = {
            "baseline": baseline[noise], "final_chosen_minus_dpo": float(d.mean()), "se": se,
            "seeds_above": f"{int((d > 0).sum())}/{d.size}", "damps": bool(d.mean() > 2 * se),
            "equal_margin_chosen_minus_dpo": float(eq[reached].mean()) if reached.any() else None,
            "equal_margin_seeds": f"{int(reached.sum())}/{d.size}"}
    probes = {}
    for walk in ("dpo", "logits_sam"):                    # the states after PROBE_STEPS steps
        states = [train(t, walk, BETA, PROBE_RHO, PROBE_STEPS, PROBE_STEPS)[1] for t in toys[None]]
        for probe in ("dpo", "logits_sam"):
            r = np.array([chosen_per_margin(t, A, W, probe, PROBE_RHO)
                          for t, (A, W) in zip(toys[None], states)])
            probes[f"{walk} state, {probe} step"] = [float(r.mean()),
                                                     float(r.std(ddof=1) / np.sqrt(r.size))]
    pred, exact = first_order_check()
    identity_err = float(np.max(np.abs(pred - exact)) / np.max(np.abs(exact)))

    separate = [m for m in METHODS if m[3] is None]
    fig, axes = plt.subplots(2, 4, figsize=(21, 9))

    def band(ax, label, j):
        runs = curves[label][:, :, j]
        m, s = runs.mean(0), runs.std(0, ddof=1) / np.sqrt(runs.shape[0])
        ax.plot(steps, m, label=label)
        ax.fill_between(steps, m - s, m + s, alpha=0.2)

    titles = ("mean chosen log-prob", "mean rejected log-prob",
              "mean argmax probability (chosen contexts)")
    for j, (ax, title) in enumerate(zip(axes[0], titles)):
        for label, *_ in separate:
            band(ax, label, j)
        ax.set_title(f"{title}, beta = {BETA}")
        ax.set_xlabel("step")
    axes[0, 0].axhline(mean[0], color="grey", lw=0.8, ls=":")
    axes[0, 0].legend(fontsize=8)
    ax = axes[0, 3]
    for label, *_ in separate:
        ax.plot(curves[label][:, :, 3].mean(0), curves[label][:, :, 0].mean(0), label=label)
    ax.set_xlabel("mean log-ratio margin h")
    ax.set_ylabel("mean chosen log-prob")
    ax.set_title("chosen log-prob at equal margin")
    ax = axes[1, 0]
    for label, *_ in (m for m in METHODS if m[3] is not None):
        band(ax, label, 0)
    ax.set_title(f"near-identical contexts (rejected = chosen + {NEAR} noise):\n"
                 "mean chosen log-prob")
    ax.set_xlabel("step")
    ax.legend(fontsize=8)
    ax = axes[1, 1]
    ax.scatter(exact.ravel(), pred.ravel(), s=4)
    lim = np.abs(exact).max()
    ax.plot([-lim, lim], [-lim, lim], color="grey", lw=0.8)
    ax.set_title(f"first-order identity, eta = 1e-5 (max rel err {identity_err:.1e})")
    ax.set_xlabel("exact one-step change of log p_k")
    ax.set_ylabel("eta (p_k + p_y- - ||p||^2 - [k = y-])")
    ax = axes[1, 2]
    ax.boxplot(list(diffs.values()),
               tick_labels=[k.replace(" rho", "\nrho").replace(", ", "\n") for k in diffs])
    ax.axhline(0.0, color="grey", lw=0.8)
    ax.tick_params(axis="x", labelsize=7)
    ax.set_title("final chosen log-prob minus its DPO baseline's, per seed")
    ax = axes[1, 3]
    names = list(probes)
    ax.bar(range(len(names)), [probes[k][0] for k in names], yerr=[probes[k][1] for k in names],
           color=["C0", "C3", "C0", "C3"])
    ax.set_xticks(range(len(names)), [k.replace(", ", ",\n").replace("_", "-") for k in names],
                  fontsize=8)
    ax.axhline(0.0, color="grey", lw=0.8)
    ax.set_title(f"chosen log-prob change per unit margin of one step (blue: DPO,\n"
                 f"red: logits-SAM rho={PROBE_RHO:g}) after {PROBE_STEPS} steps of either",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(outdir / "squeezing.png", dpi=110)
    plt.close(fig)

    summary = {
        "setup": {"d_in": D_IN, "d_h": D_H, "V": V, "pairs": PAIRS, "near_noise": NEAR,
                  "chosen_rank": CHOSEN_RANK, "beta": BETA, "lr": LR, "steps": STEPS,
                  "seeds": list(SEEDS), "methods": [m[0] for m in METHODS]},
        "first_order_identity_max_rel_err": identity_err,
        "verdicts": verdicts,
        "chosen_per_margin": {"rho": PROBE_RHO, "after_steps": PROBE_STEPS,
                              "mean_se": probes},
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
    summary["headline"].update({f"chosen per margin, {k}": f"{m:+.3f} +- {se:.3f}"
                                for k, (m, se) in probes.items()})
    (outdir / "squeezing.json").write_text(json.dumps(summary, indent=1))
    return summary
