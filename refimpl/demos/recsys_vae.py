"""``refimpl demo recsys-vae``: Mult-VAE (Liang et al., arXiv 1802.05814; official code
``dawenl/vae_cf: VAE_ML20M_WWW2018.ipynb`` @ad103c5) and the PIA anchor regulariser (Vuong et
al., arXiv 2511.06781; no official code, every PIA choice here is **reconstructed**, spec
``recsys_vae.md`` sec. 4) on MovieLens-100k under the official strong-generalisation protocol.
NumPy only (float64, CPU, seeded); spec ``recsys_vae.md``, "Demo". No number of either paper is
claimed or reproduced (the papers report ML-20M / Netflix / MSD; ML-100k is ~100x smaller).

Data: :func:`load_ml100k` (the ``ml-100k.inter`` file inside the RecBole 1.2.1 wheel, read with
NumPy) and :func:`split_strong_generalization` with ``n_heldout = N_HELDOUT`` (100 validation
and 100 test users, seed 98765, ratings > 3.5, users with >= 5 items): 738 training users,
1,415 items in the training users' vocabulary (1,447 before that restriction, spec sec. 7).
Validation / test users are split into fold-in and 20% held-out targets.

Model and training (per method and seed): ``multvae_init(I, rng, HIDDEN, LATENT)`` (600 / 200,
the official sizes); each epoch the training users are shuffled and cut into batches of BATCH
(the last one shorter, as the notebook's ``range(0, N, batch_size)``); per batch
``(mask, eps) = multvae_draw(rng, B, I, LATENT, KEEP_PROB)``,
``beta_t = anneal_beta(t, ANNEAL_CAP, TOTAL_ANNEAL_STEPS)`` with t the number of updates already
made (``TOTAL_ANNEAL_STEPS = 1000`` instead of the notebook's 200,000, scaled to the ~8 updates
per epoch of this data set; spec), ``(loss, grads) = multvae_value_and_grad(X_b, params, beta_t,
mask, eps, KEEP_PROB, mask_mode, E, lam_A)`` and one Adam step (:class:`Adam`, TensorFlow's
``tf.train.AdamOptimizer`` form used by the notebook: ``m <- b1 m + (1 - b1) g``,
``v <- b2 v + (1 - b2) g^2``, ``theta <- theta - lr sqrt(1 - b2^t) / (1 - b1^t) m / (sqrt(v) +
eps)``, lr = LR = 1e-3, b1 = 0.9, b2 = 0.999, eps = 1e-8). After every epoch the validation
users' fold-in rows go through ``multvae_forward`` in evaluation mode (no mask, z = mu) and
``ndcg_at_k(logits, vad_fold, vad_heldout, 100)`` (fold-in items excluded) is averaged over the
users with targets; the checkpoint is the epoch with the best validation NDCG@100 (the official
protocol), and that checkpoint is scored on the test users: Recall@20, Recall@50, NDCG@100.

Methods (every trained method of a seed starts from the same ``multvae_init`` and consumes the
same random stream — shuffles, masks and eps are drawn identically — so the comparisons are
paired):

* ``popularity``: :func:`popularity_scores` of the training users (seed-independent);
* ``Mult-VAE``: ``mask_mode="dropout"`` (official: normalise, inverted dropout keep 0.5);
* ``Mult-VAE bernoulli``: ``mask_mode="bernoulli"``, lam_A = 0 (isolates the masking change);
* ``PIA lam_A=<l>`` for l in LAMBDAS = (0.1, 1, 10): bernoulli masking with rho = KEEP_PROB =
  0.5 and the anchor term ``lam_A mean_u L_A(u)`` (spec sec. 4, closed form with the spread);
  anchors ``E (I, LATENT)`` drawn ``N(0, ANCHOR_STD^2)``, ANCHOR_STD = 0.01 (reconstructed),
  from a generator of their own (``default_rng([seed, 1])``) so that the model's initialisation
  and the training stream stay those of the other methods; E is trained by the same Adam.

Statistics. Per seed and metric: the mean over test users with targets and the official
protocol's standard error ``std / sqrt(n_users)`` (NumPy's std, ddof 0, as the notebook);
across seeds: the mean of the per-seed means, its standard error over seeds
``std(ddof=1) / sqrt(n_seeds)`` (``se_seeds``), and the per-user standard error of the
seed-averaged per-user values (``se_users``, the same formula as per seed; this is the error bar
of the plot and the one the verdict uses: with 100 test users it is the dominant uncertainty).
Paired differences also get ``paired_se`` = the ``std / sqrt(n)`` of the per-user differences.

Verdict (:func:`verdict_of`): ``mult_vae_beats_popularity`` = Mult-VAE's mean test NDCG@100 >
popularity's, with the margin in units of Mult-VAE's ``se_users``; for each PIA lam_A the
difference to Mult-VAE, in the same units, classified as "better by more than one standard
error", "within one standard error" or "worse by more than one standard error"; the lam_A
selected on **validation** (best mean over seeds of the checkpoint's validation NDCG@100) and
``pia_does_not_hurt`` = that lam_A is not worse than Mult-VAE by more than one standard error
(the only qualitative claim checked, spec). ``pass`` = both. The per-seed-SE view is
reported next to it (``within_one_se_seeds``).

Writes ``recsys_vae.png`` (validation NDCG@100 vs epoch per method, mean over seeds with the
std over seeds shaded; test Recall@20 / Recall@50 / NDCG@100 bars with ``se_users``) and
``recsys_vae.json``.

Epochs: EPOCHS = 50, not the spec's 100. One training run costs ~0.3 s per epoch on this
2-core CPU (about half of it the Adam update of the ~2.3 M parameters, half the forward /
backward), so the 15 runs of 100 epochs take ~8 minutes; 50 epochs keep the demo near 4
minutes. The JSON states it (``setup.epochs_reduced``).

What we measured (2026-11-22, EPOCHS = 50, seeds 0-2; 517 s wall on the 2-core machine shared
with other jobs, 15-17 s per run when uncontended), test mean +- se_users, R@20 / R@50 / N@100:
popularity 0.186 / 0.312 / 0.259 (+- 0.018); Mult-VAE 0.415 / 0.588 / 0.462 (+- 0.020);
bernoulli, lam_A = 0: 0.409 / 0.582 / 0.450; PIA lam_A = 0.1: 0.417 / 0.587 / 0.456; 1: 0.416 /
0.590 / 0.454; 10: 0.400 / 0.567 / 0.437. Mult-VAE beats popularity by 0.203 N@100 (10.4 se).
PIA minus Mult-VAE on N@100: -0.006 (-0.29 se), -0.008 (-0.39 se) — within one standard error —
and -0.025 (-1.28 se, worse) for lam_A = 0.1, 1, 10; validation selects lam_A = 0.1, so
``pass`` (PIA does not hurt) holds, but no lam_A helps here: every PIA run is below Mult-VAE
(paired per-user differences -1.0, -1.4, -3.1 paired se), and most of the gap is the masking
change (bernoulli without the anchor term: -0.012). lam_A = 10 learns slowly (validation
NDCG@100 still rising at epoch 50; best epochs 48-50).
"""

from __future__ import annotations

import json
import math
import pathlib
import time

import numpy as np

from refimpl.recsys_vae import (
    anneal_beta,
    load_ml100k,
    multvae_draw,
    multvae_forward,
    multvae_init,
    multvae_value_and_grad,
    ndcg_at_k,
    popularity_scores,
    recall_at_k,
    split_strong_generalization,
)

SEEDS = (0, 1, 2)
EPOCHS = 50                             # reduced from the spec's 100: run time (module docstring)
EPOCHS_SPEC = 100                       # the spec's value; EPOCHS is what was run
BATCH = 100
LR, ADAM_B1, ADAM_B2, ADAM_EPS = 1e-3, 0.9, 0.999, 1e-8
HIDDEN, LATENT = 600, 200
KEEP_PROB = 0.5
ANNEAL_CAP, TOTAL_ANNEAL_STEPS = 0.2, 1000
N_HELDOUT = 100
LAMBDAS = (0.1, 1.0, 10.0)
ANCHOR_STD = 0.01
METRICS = (("recall@20", 20), ("recall@50", 50), ("ndcg@100", 100))
VAL_K = 100
POP = "popularity"
MULTVAE = "Mult-VAE"
BERN = "Mult-VAE bernoulli"


def pia_name(lam: float) -> str:
    return f"PIA lam_A={lam:g}"


def methods() -> list[dict]:
    """The trained methods: name, mask mode, lam_A and whether anchors are used."""
    out = [{"name": MULTVAE, "mask_mode": "dropout", "lam_A": 0.0, "anchors": False},
           {"name": BERN, "mask_mode": "bernoulli", "lam_A": 0.0, "anchors": False}]
    out += [{"name": pia_name(lam), "mask_mode": "bernoulli", "lam_A": float(lam), "anchors": True}
            for lam in LAMBDAS]
    return out


# ------------------------------------------------------------------ data

def load_split():
    """ML-100k under the strong-generalisation protocol (``n_heldout = N_HELDOUT``)."""
    users, items, ratings, _ = load_ml100k()
    return split_strong_generalization(users, items, ratings, N_HELDOUT)


def _dense(X) -> np.ndarray:
    return np.asarray(X.toarray() if hasattr(X, "toarray") else X, dtype=np.float64)


# ------------------------------------------------------------------ optimiser

class Adam:
    """TensorFlow's ``AdamOptimizer`` (the notebook's optimiser), in place on a dict of arrays:
    ``m <- b1 m + (1 - b1) g``, ``v <- b2 v + (1 - b2) g^2``,
    ``theta <- theta - lr_t m / (sqrt(v) + eps)``, ``lr_t = lr sqrt(1 - b2^t) / (1 - b1^t)``
    (eps outside the bias correction, unlike ``torch.optim.Adam``)."""

    def __init__(self, params: dict, lr: float = LR, b1: float = ADAM_B1, b2: float = ADAM_B2,
                 eps: float = ADAM_EPS):
        self.lr, self.b1, self.b2, self.eps, self.t = lr, b1, b2, eps, 0
        self.m = {k: np.zeros_like(v) for k, v in params.items()}
        self.v = {k: np.zeros_like(v) for k, v in params.items()}

    def step(self, params: dict, grads: dict) -> None:
        self.t += 1
        lr_t = self.lr * math.sqrt(1.0 - self.b2 ** self.t) / (1.0 - self.b1 ** self.t)
        for k, g in grads.items():
            m, v, p = self.m[k], self.v[k], params[k]
            m *= self.b1
            m += (1.0 - self.b1) * g
            v *= self.b2
            v += (1.0 - self.b2) * (g * g)
            den = np.sqrt(v)
            den += self.eps
            np.divide(m, den, out=den)
            den *= lr_t
            p -= den


# ------------------------------------------------------------------ evaluation

def scores_of(params: dict, X_fold) -> np.ndarray:
    """Evaluation-mode logits of the fold-in rows (no mask, ``z = mu``)."""
    return multvae_forward(_dense(X_fold), params)[0]


def per_user_metrics(scores, X_fold, X_heldout) -> dict:
    """``{metric: (U,) per-user values, NaN where |T| = 0}`` for the standard set."""
    fold, held = _dense(X_fold), _dense(X_heldout)
    out = {}
    for name, k in METRICS:
        fn = recall_at_k if name.startswith("recall") else ndcg_at_k
        out[name] = np.asarray(fn(scores, fold, held, k), dtype=np.float64)
    return out


def mean_and_se(values) -> tuple[float, float, int]:
    """The official protocol's ``(mean, std / sqrt(n), n)`` over the finite values (NumPy's
    std, ddof 0, as the notebook's ``np.std(n100_list) / np.sqrt(len(n100_list))``)."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    return float(v.mean()), float(v.std() / np.sqrt(v.size)), int(v.size)


def se_over_seeds(per_seed_means) -> float:
    """``std(ddof=1) / sqrt(n_seeds)`` (0 for a single seed)."""
    x = np.asarray(per_seed_means, dtype=np.float64)
    return float(x.std(ddof=1) / np.sqrt(x.size)) if x.size > 1 else 0.0


def _json_list(a) -> list:
    return [None if not np.isfinite(x) else float(x) for x in np.asarray(a, dtype=np.float64)]


# ------------------------------------------------------------------ training

def train(split, method: dict, seed: int) -> dict:
    """One training run; returns the validation curve, the best epoch and its checkpoint."""
    X_train = split.train.tocsr()
    n_train, n_items = X_train.shape
    vad_fold, vad_held = _dense(split.vad_fold), _dense(split.vad_heldout)
    rng = np.random.default_rng(seed)
    params = multvae_init(n_items, rng, hidden=HIDDEN, latent=LATENT)
    E = None
    if method["anchors"]:
        E = ANCHOR_STD * np.random.default_rng([seed, 1]).standard_normal((n_items, LATENT))
    state = dict(params) if E is None else {**params, "E": E}
    opt = Adam(state)
    t0 = time.perf_counter()
    step, curve, losses = 0, [], []
    best = (-np.inf, 0, None)
    for epoch in range(1, EPOCHS + 1):
        perm = rng.permutation(n_train)
        ep_loss = []
        for st in range(0, n_train, BATCH):
            idx = perm[st:st + BATCH]
            Xb = X_train[idx].toarray()
            mask, eps = multvae_draw(rng, len(idx), n_items, latent=LATENT, keep_prob=KEEP_PROB)
            beta = anneal_beta(step, cap=ANNEAL_CAP, total_anneal_steps=TOTAL_ANNEAL_STEPS)
            p = {k: state[k] for k in params}
            loss, grads = multvae_value_and_grad(
                Xb, p, beta, mask, eps, keep_prob=KEEP_PROB, mask_mode=method["mask_mode"],
                E=state.get("E"), lam_A=method["lam_A"])
            opt.step(state, grads)
            ep_loss.append(float(loss))
            step += 1
        losses.append(float(np.mean(ep_loss)))
        p = {k: state[k] for k in params}
        val = float(np.nanmean(ndcg_at_k(scores_of(p, vad_fold), vad_fold, vad_held, VAL_K)))
        curve.append(val)
        if val > best[0]:
            best = (val, epoch, {k: v.copy() for k, v in p.items()})
    return {"val_ndcg100": curve, "train_loss": losses, "best_val_ndcg100": best[0],
            "best_epoch": best[1], "params": best[2], "updates": step,
            "seconds": time.perf_counter() - t0}


# ------------------------------------------------------------------ summaries and verdict

def summarise(per_seed_users: list[dict]) -> dict:
    """Across seeds: per metric the mean of the per-seed means, ``se_seeds`` and ``se_users``
    (the per-user standard error of the seed-averaged per-user values)."""
    out = {"mean": {}, "se_seeds": {}, "se_users": {}, "n_users": {}}
    for name, _ in METRICS:
        means = [mean_and_se(u[name])[0] for u in per_seed_users]
        avg = np.mean([np.asarray(u[name], dtype=np.float64) for u in per_seed_users], 0)
        _, se_u, n = mean_and_se(avg)
        out["mean"][name] = float(np.mean(means))
        out["se_seeds"][name] = se_over_seeds(means)
        out["se_users"][name] = se_u
        out["n_users"][name] = n
    return out


def paired(a_users, b_users) -> tuple[float, float]:
    """``(mean(a - b), std(a - b) / sqrt(n))`` over users finite in both (ddof 0)."""
    a, b = np.asarray(a_users, dtype=np.float64), np.asarray(b_users, dtype=np.float64)
    d = a - b
    d = d[np.isfinite(d)]
    return float(d.mean()), float(d.std() / np.sqrt(d.size))


def _ratio(a: float, b: float):
    """``a / b``, or None when ``b`` is 0 (no standard error: a single user or seed)."""
    return a / b if b > 0 else None


def _fmt(x) -> str:
    return "n/a" if x is None else f"{x:+.2f}"


def _status(diff: float, se: float) -> str:
    if abs(diff) <= se:
        return "within one standard error"
    return "better by more than one standard error" if diff > 0 else \
        "worse by more than one standard error"


def verdict_of(results: dict, lambdas=None, metric: str = "ndcg@100") -> dict:
    """The verdict from the per-method summaries. ``results[name]`` holds ``"test"``
    (``summarise``'s dict), ``"test_users_seed_mean"`` (``{metric: per-user list}``, the
    seed-averaged values) and, for trained methods, ``"best_val_ndcg100_mean"``."""
    lambdas = LAMBDAS if lambdas is None else lambdas
    mv, pop = results[MULTVAE], results[POP]
    se = mv["test"]["se_users"][metric]
    se_s = mv["test"]["se_seeds"][metric]
    margin = mv["test"]["mean"][metric] - pop["test"]["mean"][metric]
    _, p_se = paired(mv["test_users_seed_mean"][metric], pop["test_users_seed_mean"][metric])
    out = {"metric": f"test {metric}",
           "standard_error": "se_users of Mult-VAE: std / sqrt(n_test_users) of the "
                             "seed-averaged per-user values (official protocol's formula)",
           "mult_vae_beats_popularity": bool(margin > 0),
           "mult_vae_minus_popularity": margin,
           "margin_in_se": _ratio(margin, se),
           "margin_in_paired_se": _ratio(margin, p_se),
           "pia": {}}
    for lam in lambdas:
        r = results[pia_name(lam)]
        diff = r["test"]["mean"][metric] - mv["test"]["mean"][metric]
        _, p_se = paired(r["test_users_seed_mean"][metric], mv["test_users_seed_mean"][metric])
        out["pia"][f"{lam:g}"] = {
            "minus_mult_vae": diff, "diff_in_se": _ratio(diff, se),
            "status": _status(diff, se), "within_one_se": bool(abs(diff) <= se),
            "within_one_se_seeds": bool(abs(diff) <= se_s),
            "diff_in_paired_se": _ratio(diff, p_se)}
    chosen = max(lambdas, key=lambda lam: (results[pia_name(lam)]["best_val_ndcg100_mean"], -lam))
    out["lam_A_selected_on_validation"] = float(chosen)
    out["pia_does_not_hurt"] = bool(out["pia"][f"{chosen:g}"]["minus_mult_vae"] >= -se)
    out["pass"] = bool(out["mult_vae_beats_popularity"] and out["pia_does_not_hurt"])
    return out


# ------------------------------------------------------------------ run

def run(outdir: pathlib.Path) -> dict:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t0 = time.perf_counter()
    outdir = pathlib.Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    split = load_split()
    n_train, n_items = split.train.shape
    test_fold, test_held = _dense(split.test_fold), _dense(split.test_heldout)
    vad_fold, vad_held = _dense(split.vad_fold), _dense(split.vad_heldout)

    results = {}
    # popularity: seed-independent; recorded once per seed for a uniform structure
    pop_scores = popularity_scores(split.train, test_fold.shape[0])
    pop_users = per_user_metrics(pop_scores, test_fold, test_held)
    pop_val = float(np.nanmean(ndcg_at_k(popularity_scores(split.train, vad_fold.shape[0]),
                                         vad_fold, vad_held, VAL_K)))
    per_seed = [{"seed": s, "test": {k: mean_and_se(v)[0] for k, v in pop_users.items()},
                 "test_se_users": {k: mean_and_se(v)[1] for k, v in pop_users.items()},
                 "test_per_user": {k: _json_list(v) for k, v in pop_users.items()}}
                for s in SEEDS]
    results[POP] = {"kind": "item popularity of the training users", "val_ndcg100": pop_val,
                    "per_seed": per_seed, "test": summarise([pop_users] * len(SEEDS)),
                    "test_users_seed_mean": {k: _json_list(v) for k, v in pop_users.items()}}

    for m in methods():
        per_seed, users_all = [], []
        for s in SEEDS:
            r = train(split, m, s)
            users = per_user_metrics(scores_of(r["params"], test_fold), test_fold, test_held)
            users_all.append(users)
            per_seed.append({
                "seed": s, "best_epoch": r["best_epoch"], "best_val_ndcg100": r["best_val_ndcg100"],
                "val_ndcg100": r["val_ndcg100"], "train_loss": r["train_loss"],
                "updates": r["updates"], "seconds": r["seconds"],
                "test": {k: mean_and_se(v)[0] for k, v in users.items()},
                "test_se_users": {k: mean_and_se(v)[1] for k, v in users.items()},
                "test_per_user": {k: _json_list(v) for k, v in users.items()}})
        curves = np.array([p["val_ndcg100"] for p in per_seed])
        results[m["name"]] = {
            "kind": f"Mult-VAE, mask_mode={m['mask_mode']}, lam_A={m['lam_A']:g}"
                    + (f", anchors N(0, {ANCHOR_STD:g}^2)" if m["anchors"] else ""),
            "mask_mode": m["mask_mode"], "lam_A": m["lam_A"],
            "per_seed": per_seed, "test": summarise(users_all),
            "test_users_seed_mean": {k: _json_list(np.mean([u[k] for u in users_all], 0))
                                     for k, _ in METRICS},
            "val_ndcg100_mean": curves.mean(0).tolist(), "val_ndcg100_std": curves.std(0).tolist(),
            "best_val_ndcg100_mean": float(np.mean([p["best_val_ndcg100"] for p in per_seed]))}

    verdict = verdict_of(results)
    seconds = time.perf_counter() - t0

    # ---- figure
    names = list(results)
    colours = {n: c for n, c in zip(names, plt.rcParams["axes.prop_cycle"].by_key()["color"]
                                    + ["k"] * len(names))}
    fig, axes = plt.subplots(1, 2, figsize=(16, 6))
    ax = axes[0]
    ep = np.arange(1, EPOCHS + 1)
    for n in names[1:]:
        mu, sd = np.array(results[n]["val_ndcg100_mean"]), np.array(results[n]["val_ndcg100_std"])
        ax.plot(ep, mu, color=colours[n], label=n, lw=1.2)
        ax.fill_between(ep, mu - sd, mu + sd, color=colours[n], alpha=0.2, lw=0)
    ax.axhline(results[POP]["val_ndcg100"], color=colours[POP], ls="--", label=POP)
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation NDCG@100")
    ax.set_title(f"ML-100k, validation NDCG@100 ({N_HELDOUT} users): mean over seeds "
                 f"{list(SEEDS)}, shaded +- std")
    ax.legend(fontsize=8)
    ax = axes[1]
    w = 0.8 / len(names)
    x = np.arange(len(METRICS))
    for j, n in enumerate(names):
        t = results[n]["test"]
        ax.bar(x + (j - (len(names) - 1) / 2) * w, [t["mean"][k] for k, _ in METRICS], w,
               yerr=[t["se_users"][k] for k, _ in METRICS], capsize=2, color=colours[n], label=n)
    ax.set_xticks(x, [k for k, _ in METRICS])
    ax.set_title(f"test ({N_HELDOUT} users), best-validation checkpoint; bars: mean over seeds, "
                 "error: std / sqrt(n_users)", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(outdir / "recsys_vae.png", dpi=100)
    plt.close(fig)

    reduced = EPOCHS < EPOCHS_SPEC
    summary = {
        "note": ("ML-100k, strong generalisation; papers arXiv 1802.05814 (Mult-VAE, official "
                 "code dawenl/vae_cf @ad103c5) and 2511.06781 (PIA, reconstructed: no official "
                 "code); no paper number claimed or reproduced"),
        "setup": {
            "data": "ML-100k (recbole 1.2.1 wheel, ml-100k.inter), ratings > 3.5, users >= 5 items",
            "n_train_users": int(n_train), "n_items": int(n_items),
            "n_vad_users": int(vad_fold.shape[0]), "n_test_users": int(test_fold.shape[0]),
            "n_heldout": N_HELDOUT, "seeds": list(SEEDS), "epochs": EPOCHS,
            "epochs_spec": EPOCHS_SPEC, "epochs_reduced": reduced,
            "epochs_note": (f"reduced from {EPOCHS_SPEC} to keep the demo's run time near 4 "
                            "minutes on a 2-core CPU" if reduced else "as the spec"),
            "batch": BATCH, "hidden": HIDDEN, "latent": LATENT, "keep_prob": KEEP_PROB,
            "anneal_cap": ANNEAL_CAP, "total_anneal_steps": TOTAL_ANNEAL_STEPS,
            "total_anneal_steps_note": "scaled to the tiny data (notebook: 200,000)",
            "optimizer": {"name": "Adam (TensorFlow form)", "lr": LR, "b1": ADAM_B1,
                          "b2": ADAM_B2, "eps": ADAM_EPS},
            "lambdas": list(LAMBDAS), "anchor_init_std": ANCHOR_STD, "rho": KEEP_PROB,
            "checkpoint": "best validation NDCG@100 (official protocol)",
            "metrics": [k for k, _ in METRICS],
            "se_users": "std(ddof=0) / sqrt(n) over test users with targets (official formula)",
            "se_seeds": "std(ddof=1) / sqrt(n_seeds) of the per-seed means"},
        "methods": results,
        "verdict": verdict,
        "seconds": seconds,
        "pass": verdict["pass"],
    }
    mean = {n: r["test"]["mean"] for n, r in results.items()}
    se = {n: r["test"]["se_users"] for n, r in results.items()}
    summary["headline"] = {
        **{f"{n}: test R@20 / R@50 / N@100 (+- se_users)": " / ".join(
            f"{mean[n][k]:.4f}+-{se[n][k]:.4f}" for k, _ in METRICS) for n in results},
        "Mult-VAE - popularity, test N@100 (in se)": (
            f"{verdict['mult_vae_minus_popularity']:+.4f} ({_fmt(verdict['margin_in_se'])})"),
        **{f"PIA lam_A={lam} - Mult-VAE, test N@100": (
            f"{v['minus_mult_vae']:+.4f} ({_fmt(v['diff_in_se'])} se): {v['status']}")
           for lam, v in verdict["pia"].items()},
        "lam_A selected on validation": verdict["lam_A_selected_on_validation"],
        "epochs": EPOCHS,
        "run time (s)": f"{seconds:.1f}",
        "pass": verdict["pass"],
    }
    (outdir / "recsys_vae.json").write_text(json.dumps(summary, indent=1))
    return summary
