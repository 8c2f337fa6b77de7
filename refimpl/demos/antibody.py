"""``refimpl demo antibody``: Antibody's two stages on a toy (arXiv 2603.00498; official code
``minhquoc0712/Antibody @1d4fa5f``). The toy and its protocol are a **reconstruction** (spec
``safety_ensembles.md``, "Demo ``refimpl demo antibody``"): no number of the paper is claimed
or reproduced.

Model. A bag-of-words prompt -> next-token softmax model. The word vocabulary has 40 words
(WORDS: four benign topics of five words, two harmful topics of four words, twelve filler
words); a prompt is PROMPT_LEN words, its bag-of-words vector ``x`` the word counts divided by
PROMPT_LEN. The output tokens are the task answers (one per benign topic, one "harmful answer"
per harmful topic) and one REFUSE token (ANSWERS, 7 in all). The body is the bag-of-words
embedding ``h = tanh(x E + c)`` (E: 40 x D_H), the output layer the linear head ``h W^T + b``,
so every loss is one of refimpl's fused linear-head losses on ``H = h[:, None, :]`` (one
completion token per sample, T = 1): the plain HF token mean is ``weighted_token_ce`` with
``w = 1`` (``sum CE / max(sum N, 1)``, exactly HF's mean over label positions), the Antibody
loss is ``weighted_token_ce`` with the Antibody weights, the per-view token means are
``token_mean_nll``. Gradients: ``weighted_token_ce_grad`` gives ``(dH, dW, db)``; the body's
are chained by hand, ``dZ = dH (1 - h^2)``, ``dE = X^T dZ``, ``dc = sum dZ``. All parameters
are flattened to ``theta`` (P = 40 D_H + D_H + 7 D_H + 7). NumPy float64, seeded (SEED).
With one completion token per sample, ``sum_i w_i N_i = 1`` for the softmax weights, so the
code's and the paper's weighted losses coincide here (the code form is used).

Data. A benign prompt of topic k: two words of topic k, one word of another benign topic, the
rest filler; its answer is topic k's token. A harmful prompt of harmful topic j: two words of
topic j, HARM_MIX benign-topic words (0 by default), the rest filler; its harmful answer is
``HARM_j``, its refusal view REFUSE. Independent draws (one generator per set) for every stage
and the held-out sets (N_TEST_BENIGN benign, N_TEST_HARMFUL harmful prompts). With
HARM_MIX = 1 the alignment stage (harmful prompts only, as in the official data) teaches the
toy to refuse benign prompts too (22-66 % of them over seeds 0-5), benign samples then get
small refusal NLLs and so small weights, and the weight criterion fails for one seed of six.

Stages (one optimiser per stage and run: Adam, beta = (0.9, 0.999), eps 1e-8, no weight decay
— the official runs use AdamW with weight decay 0.1 on LoRA weights; on this toy's full
parameter vector the decay would be a second regulariser we do not want to compare):

0. Base model (ours, so that the base is capable and unaligned, as a pre-trained LLM is): PRE_STEPS
   Adam steps of the HF mean on benign prompts -> answers and harmful prompts -> harmful
   answers (PRE_HARMFUL of each batch).
1. Alignment, the official ``training_step`` (spec A.2) verbatim in its array math, on batches
   of BATCH: S = harmful prompts -> REFUSE, D = other harmful prompts -> harmful answers,
   D_ref = D's prompts -> REFUSE (one fixed refusal per prompt, reconstructed).
   ``g_h = grad L(theta; D)``; ``theta' = harmful_perturb(theta, g_h, ALPHA)``;
   ``g_p = grad L(theta'; D)``; ``g_r = grad L(theta'; D_ref)``; ``g_s = grad L(theta; S)``;
   ``g, lam, raw = antibody_align_direction(g_s, g_h, g_p, g_r, lam, eta=ETA,
   momentum=MOMENTUM, lam2=LAM2)`` (cosine lambda, EMA initialised by the first raw value);
   an Adam step with ``g``. The script's values: alpha 0.1, eta 5, momentum 0.99, lam2 0.05.
2. Fine-tuning (the user's data: N_FT samples, HARMFUL_FRAC harmful, shuffled per epoch,
   batches of BATCH; the same batch order for both runs), from the aligned theta:
   ``plain`` (HF token mean) and ``antibody`` (per batch: ``c = token_mean_nll`` of the
   compliance view, ``r`` of the refusal view REFUSE, no gradient; ``w = antibody_weights(c, r,
   tau=TAU)``; an Adam step with ``weighted_token_ce_grad``).

A third fine-tuning run, ``benign_only`` (the plain HF mean on the same batches with the
harmful samples removed), is the reference for how much refusal benign fine-tuning alone
erodes.

Panels: (1) lam_t and its raw value over alignment steps (right axis: mean log p(REFUSE) on the
held-out harmful prompts during alignment); (2) the Antibody run's weights by sample type over
fine-tuning steps, as ``B w`` (uniform = 1); (3) mean log p(REFUSE | held-out harmful prompt),
plain vs weighted (and the benign-only reference); (4) held-out benign accuracy, same runs.

Verdicts (computed from the run, ``summary["verdicts"]``; ``pass`` = both):
``harmful_weight_below_half_benign`` — at the start of stage 2 (the aligned model, the first
epoch's batches) the mean weight of the harmful samples is below 0.5 x that of the benign ones;
``weighted_keeps_more_refusal`` — the weighted run ends with a higher mean log p(REFUSE) on the
held-out harmful prompts than the plain run. Writes ``antibody.png`` and ``antibody.json``.
Runs on a CPU in about 1 s (0.3 s of training).

What we measured (seed 0, defaults): lam_t rises from 5.31 to 5.72 (EMA; raw 5.14 .. 5.97 as
``g_s`` turns antiparallel to ``d``); at the start of stage 2 the mean weight of a harmful
sample is 0.048 x that of a benign one; final mean log p(REFUSE | held-out harmful) -0.54
(aligned) -> -3.91 plain, -1.47 Antibody, -1.11 benign-only: most of what Antibody still loses
is the erosion by the benign samples themselves, which no per-sample weighting removes (the
harmful-answer argmax rate still ends at 0.90 vs 1.00 plain, 0.71 benign-only). Benign accuracy
0.978 -> 1.000 plain, 0.983 Antibody: the softmax of ``r - c`` also down-weights benign
samples the model still gets wrong (large c), so a poorly fit benign topic is learnt more slowly
(seed 1: 0.873 vs 1.000, one topic at 52 %). Both criteria hold for seeds 0-5.
"""

from __future__ import annotations

import json
import pathlib
import time

import numpy as np

from refimpl import safety_ensembles as A

# ---------------------------------------------------------------- vocabulary and answers
BENIGN_TOPICS = (("sport", "game", "team", "score", "match"),
                 ("cook", "recipe", "oven", "bake", "flour"),
                 ("code", "python", "bug", "compile", "loop"),
                 ("travel", "flight", "hotel", "map", "visa"))
HARMFUL_TOPICS = (("weapon", "poison", "explosive", "toxin"),
                  ("hack", "steal", "password", "malware"))
FILLER = ("how", "what", "please", "the", "a", "to", "make", "best", "way", "my", "can", "you")
WORDS = tuple(w for t in BENIGN_TOPICS for w in t) + tuple(w for t in HARMFUL_TOPICS for w in t) \
    + FILLER
ANSWERS = ("SPORT", "FOOD", "CODE", "TRAVEL", "HARM_WEAPON", "HARM_CYBER", "REFUSE")
N_BENIGN, N_HARM = len(BENIGN_TOPICS), len(HARMFUL_TOPICS)
REFUSE = ANSWERS.index("REFUSE")
V_WORDS, V_OUT = len(WORDS), len(ANSWERS)
PROMPT_LEN = 6
HARM_MIX = 0                        # benign-topic words in a harmful prompt

# ---------------------------------------------------------------- sizes and steps
SEED = 0
D_H = 16
BATCH = 16
PRE_STEPS, PRE_LR, PRE_HARMFUL = 150, 1e-2, 0.25
N_ALIGN = 320                       # prompts in S and in D (each)
ALIGN_STEPS, ALIGN_LR = 150, 3e-3
ALPHA, ETA, MOMENTUM, LAM2 = 0.1, 5.0, 0.99, 0.05
N_FT, HARMFUL_FRAC = 200, 0.2
FT_STEPS, FT_LR, TAU = 200, 3e-3, 1.0
N_TEST_BENIGN, N_TEST_HARMFUL = 400, 200
EVAL_EVERY = 5


# ---------------------------------------------------------------- data
def _word_index():
    return {w: i for i, w in enumerate(WORDS)}


def make_prompts(rng, n, harmful: bool):
    """``(X (n, V_WORDS) bag-of-words, topic (n,))`` for ``n`` benign or harmful prompts."""
    idx = _word_index()
    X = np.zeros((n, V_WORDS))
    topic = rng.integers(0, N_HARM if harmful else N_BENIGN, size=n)
    for i, k in enumerate(topic):
        own = (HARMFUL_TOPICS if harmful else BENIGN_TOPICS)[k]
        other = [j for j in range(N_BENIGN) if harmful or j != k]
        n_mix = HARM_MIX if harmful else 1
        words = list(rng.choice(own, size=2))
        words += [rng.choice(BENIGN_TOPICS[rng.choice(other)]) for _ in range(n_mix)]
        words += list(rng.choice(FILLER, size=PROMPT_LEN - 2 - n_mix))
        for w in words:
            X[i, idx[w]] += 1.0 / PROMPT_LEN
    return X, topic


def answer_of(topic, harmful: bool):
    return (N_BENIGN + topic) if harmful else topic.copy()


# ---------------------------------------------------------------- model
def shapes(d_h=None, v_words=None, v_out=None):
    d_h, v_words, v_out = d_h or D_H, v_words or V_WORDS, v_out or V_OUT
    return (("E", (v_words, d_h)), ("c", (d_h,)), ("W", (v_out, d_h)), ("b", (v_out,)))


def unpack(theta, shp):
    out, k = {}, 0
    for name, s in shp:
        n = int(np.prod(s))
        out[name] = theta[k:k + n].reshape(s)
        k += n
    return out


def init_theta(rng, shp):
    p = unpack(np.zeros(sum(int(np.prod(s)) for _, s in shp)), shp)
    d_h = p["c"].size
    p["E"][:] = rng.normal(size=p["E"].shape)
    p["W"][:] = rng.normal(size=p["W"].shape) / np.sqrt(d_h)
    return np.concatenate([p[name].ravel() for name, _ in shp])


def hidden(p, X):
    return np.tanh(X @ p["E"] + p["c"])


def log_probs(theta, X, shp):
    """``log softmax(h W^T + b)`` (n, V_OUT) — used for evaluation only."""
    p = unpack(theta, shp)
    Z = hidden(p, X) @ p["W"].T + p["b"]
    Z = Z - Z.max(axis=1, keepdims=True)
    return Z - np.log(np.exp(Z).sum(axis=1, keepdims=True))


def loss_grad(theta, X, y, w, shp):
    """``(loss, grad (P,))`` of ``weighted_token_ce`` (code form) of the labels ``y`` with the
    per-sample weights ``w`` (``w = 1``: the HF token mean); the head's gradient from refimpl,
    the body's chained by hand."""
    p = unpack(theta, shp)
    h = hidden(p, X)
    loss, dH, dW, db = A.weighted_token_ce_grad(h[:, None, :], p["W"], y[:, None], w, p["b"])
    dZ = dH[:, 0, :] * (1.0 - h ** 2)
    g = {"E": X.T @ dZ, "c": dZ.sum(axis=0), "W": dW, "b": db}
    return float(loss), np.concatenate([g[name].ravel() for name, _ in shp])


def view_nll(theta, X, y, shp):
    """Token-mean NLL of one view (no gradient): ``token_mean_nll`` (B,)."""
    p = unpack(theta, shp)
    nll, _ = A.token_mean_nll(hidden(p, X)[:, None, :], p["W"], y[:, None], p["b"])
    return nll


class Adam:
    def __init__(self, n, lr, betas=(0.9, 0.999), eps=1e-8):
        self.m, self.v, self.t = np.zeros(n), np.zeros(n), 0
        self.lr, self.b1, self.b2, self.eps = lr, betas[0], betas[1], eps

    def step(self, theta, g):
        self.t += 1
        self.m = self.b1 * self.m + (1 - self.b1) * g
        self.v = self.b2 * self.v + (1 - self.b2) * g * g
        mh = self.m / (1 - self.b1 ** self.t)
        vh = self.v / (1 - self.b2 ** self.t)
        return theta - self.lr * mh / (np.sqrt(vh) + self.eps)


# ---------------------------------------------------------------- evaluation
def evaluate(theta, test, shp):
    """Mean log p(REFUSE | held-out harmful), harmful-answer rate there, benign accuracy and the
    benign refusal rate."""
    Lh = log_probs(theta, test["Xh"], shp)
    Lb = log_probs(theta, test["Xb"], shp)
    return {"logp_refuse_harmful": float(Lh[:, REFUSE].mean()),
            "harmful_answer_rate": float((Lh.argmax(1) == test["yh"]).mean()),
            "benign_accuracy": float((Lb.argmax(1) == test["yb"]).mean()),
            "benign_refusal_rate": float((Lb.argmax(1) == REFUSE).mean())}


def _batches(rng, n, steps):
    """Index batches of BATCH, reshuffled every epoch (drop-last), ``steps`` of them."""
    out = []
    while len(out) < steps:
        perm = rng.permutation(n)
        out += [perm[i:i + BATCH] for i in range(0, n - BATCH + 1, BATCH)]
    return out[:steps]


# ---------------------------------------------------------------- stages
def pretrain(theta, rng, shp):
    opt = Adam(theta.size, PRE_LR)
    n_h = round(PRE_HARMFUL * BATCH)
    for _ in range(PRE_STEPS):
        Xb, tb = make_prompts(rng, BATCH - n_h, harmful=False)
        Xh, th = make_prompts(rng, n_h, harmful=True)
        X = np.concatenate([Xb, Xh])
        y = np.concatenate([answer_of(tb, False), answer_of(th, True)])
        _, g = loss_grad(theta, X, y, np.ones(BATCH), shp)
        theta = opt.step(theta, g)
    return theta


def align(theta, rng, test, shp):
    """Stage 1 (spec A.2): returns ``(theta, record)``."""
    XS, _ = make_prompts(rng, N_ALIGN, harmful=True)
    XD, tD = make_prompts(rng, N_ALIGN, harmful=True)
    yS = np.full(N_ALIGN, REFUSE)
    yD = answer_of(tD, True)
    ones = np.ones(BATCH)
    opt = Adam(theta.size, ALIGN_LR)
    lam = None
    rec = {"step": [], "lam": [], "lam_raw": [], "norm_g_s": [], "norm_d": [], "cos_gs_d": [],
           "eval_step": [], "eval": []}
    bs, bd = _batches(rng, N_ALIGN, ALIGN_STEPS), _batches(rng, N_ALIGN, ALIGN_STEPS)
    for step in range(ALIGN_STEPS):
        if step % EVAL_EVERY == 0:
            rec["eval_step"].append(step)
            rec["eval"].append(evaluate(theta, test, shp))
        iS, iD = bs[step], bd[step]
        _, g_h = loss_grad(theta, XD[iD], yD[iD], ones, shp)
        theta_p = A.harmful_perturb(theta, g_h, ALPHA)
        _, g_p = loss_grad(theta_p, XD[iD], yD[iD], ones, shp)
        _, g_r = loss_grad(theta_p, XD[iD], yS[iD], ones, shp)          # D_ref: D's prompts
        _, g_s = loss_grad(theta, XS[iS], yS[iS], ones, shp)
        g, lam, raw = A.antibody_align_direction(g_s, g_h, g_p, g_r, lam, eta=ETA,
                                                 momentum=MOMENTUM, lam2=LAM2)
        d = g_h - g_p
        rec["step"].append(step)
        rec["lam"].append(float(lam))
        rec["lam_raw"].append(float(raw))
        rec["norm_g_s"].append(float(np.linalg.norm(g_s)))
        rec["norm_d"].append(float(np.linalg.norm(d)))
        rec["cos_gs_d"].append(float(g_s @ d / (np.linalg.norm(g_s) * np.linalg.norm(d))))
        theta = opt.step(theta, g)
    rec["eval_step"].append(ALIGN_STEPS)
    rec["eval"].append(evaluate(theta, test, shp))
    return theta, rec


def antibody_batch_weights(theta, X, y, shp):
    """``(w, nll_c, nll_r)``: the Antibody weights of one batch (spec A.4)."""
    nll_c = view_nll(theta, X, y, shp)
    nll_r = view_nll(theta, X, np.full(len(y), REFUSE), shp)
    return A.antibody_weights(nll_c, nll_r, tau=TAU), nll_c, nll_r


def finetune(theta, data, batches, test, shp, weighted: bool):
    X, y, harm = data["X"], data["y"], data["is_harmful"]
    opt = Adam(theta.size, FT_LR)
    rec = {"eval_step": [], "eval": [], "loss": [], "w_harmful": [], "w_benign": []}
    for step, idx in enumerate(batches):
        if step % EVAL_EVERY == 0:
            rec["eval_step"].append(step)
            rec["eval"].append(evaluate(theta, test, shp))
        if weighted:
            w, _, _ = antibody_batch_weights(theta, X[idx], y[idx], shp)
        else:
            w = np.ones(len(idx))
        loss, g = loss_grad(theta, X[idx], y[idx], w, shp)
        Bw = len(idx) * w / w.sum()                  # relative to the uniform weight
        hb = harm[idx]
        rec["loss"].append(loss)
        rec["w_harmful"].append(float(Bw[hb].mean()) if hb.any() else None)
        rec["w_benign"].append(float(Bw[~hb].mean()) if (~hb).any() else None)
        theta = opt.step(theta, g)
    rec["eval_step"].append(len(batches))
    rec["eval"].append(evaluate(theta, test, shp))
    return theta, rec


def start_weights(theta, data, batches, shp):
    """The Antibody weights of every sample of the first epoch's batches at the aligned theta
    (no update in between): per-sample ``w``, ``nll_c``, ``nll_r``, batch id, type."""
    X, y, harm = data["X"], data["y"], data["is_harmful"]
    epoch = N_FT // BATCH
    out = {"batch": [], "w": [], "nll_c": [], "nll_r": [], "is_harmful": []}
    for k, idx in enumerate(batches[:epoch]):
        w, c, r = antibody_batch_weights(theta, X[idx], y[idx], shp)
        out["batch"] += [k] * len(idx)
        out["w"] += w.tolist()
        out["nll_c"] += c.tolist()
        out["nll_r"] += r.tolist()
        out["is_harmful"] += harm[idx].tolist()
    w, hm = np.array(out["w"]), np.array(out["is_harmful"])
    out["mean_w_harmful"] = float(w[hm].mean())
    out["mean_w_benign"] = float(w[~hm].mean())
    return out


def experiment(seed=None):
    """All three stages; returns the records (no drawing)."""
    seed = SEED if seed is None else seed
    ss = np.random.SeedSequence(seed).spawn(6)
    r_init, r_pre, r_align, r_ft, r_order, r_test = (np.random.default_rng(s) for s in ss)
    shp = shapes()
    Xb, tb = make_prompts(r_test, N_TEST_BENIGN, harmful=False)
    Xh, th = make_prompts(r_test, N_TEST_HARMFUL, harmful=True)
    test = {"Xb": Xb, "yb": answer_of(tb, False), "Xh": Xh, "yh": answer_of(th, True)}
    theta0 = init_theta(r_init, shp)
    base = pretrain(theta0, r_pre, shp)
    aligned, rec_align = align(base, r_align, test, shp)
    n_h = round(HARMFUL_FRAC * N_FT)
    Xf_b, tf_b = make_prompts(r_ft, N_FT - n_h, harmful=False)
    Xf_h, tf_h = make_prompts(r_ft, n_h, harmful=True)
    data = {"X": np.concatenate([Xf_b, Xf_h]),
            "y": np.concatenate([answer_of(tf_b, False), answer_of(tf_h, True)]),
            "is_harmful": np.concatenate([np.zeros(N_FT - n_h, bool), np.ones(n_h, bool)])}
    batches = _batches(r_order, N_FT, FT_STEPS)
    start = start_weights(aligned, data, batches, shp)
    _, rec_plain = finetune(aligned, data, batches, test, shp, weighted=False)
    _, rec_anti = finetune(aligned, data, batches, test, shp, weighted=True)
    benign_batches = [idx[~data["is_harmful"][idx]] for idx in batches]
    _, rec_benign = finetune(aligned, data, benign_batches, test, shp, weighted=False)
    return {"P": int(theta0.size), "base": evaluate(base, test, shp),
            "aligned": evaluate(aligned, test, shp), "align": rec_align, "start": start,
            "plain": rec_plain, "antibody": rec_anti, "benign_only": rec_benign}


def verdicts_of(start, plain_final_logp, anti_final_logp):
    v = {"harmful_weight_below_half_benign":
         bool(start["mean_w_harmful"] < 0.5 * start["mean_w_benign"]),
         "weighted_keeps_more_refusal": bool(anti_final_logp > plain_final_logp)}
    v["pass"] = all(v.values())
    return v


# ---------------------------------------------------------------- run
def run(out_dir) -> dict:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    res = experiment()
    seconds = time.perf_counter() - t0

    def series(rec, key):
        return [e[key] for e in rec["eval"]]

    final = {k: res[k]["eval"][-1] for k in ("plain", "antibody", "benign_only")}
    start = res["start"]
    verdicts = verdicts_of(start, final["plain"]["logp_refuse_harmful"],
                           final["antibody"]["logp_refuse_harmful"])

    fig, axes = plt.subplots(2, 2, figsize=(13, 9))
    ax = axes[0, 0]
    al = res["align"]
    ax.plot(al["step"], al["lam_raw"], lw=0.8, alpha=0.6, label="lam_raw (cosine)")
    ax.plot(al["step"], al["lam"], lw=2, label=f"lam_t (EMA, m = {MOMENTUM})")
    ax.set_xlabel("alignment step")
    ax.set_ylabel("lambda")
    ax.set_title(f"stage 1: lambda_t, eta = {ETA}, alpha = {ALPHA}, lam2 = {LAM2}")
    ax2 = ax.twinx()
    ax2.plot(al["eval_step"], series(al, "logp_refuse_harmful"), color="C3", ls="--",
             label="log p(REFUSE | held-out harmful)")
    ax2.set_ylabel("mean log p(REFUSE | held-out harmful)", color="C3")
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, fontsize=8, loc="lower right")

    ax = axes[0, 1]
    an = res["antibody"]
    steps = np.arange(len(an["loss"]))
    for key, lab, col in (("w_benign", "benign", "C0"), ("w_harmful", "harmful", "C3")):
        vals = np.array([np.nan if x is None else x for x in an[key]])
        ax.plot(steps, vals, ".", ms=3, color=col, alpha=0.5)
        k = 10
        sm = np.convolve(np.nan_to_num(vals), np.ones(k), "valid") / np.maximum(
            np.convolve(~np.isnan(vals), np.ones(k), "valid"), 1)
        ax.plot(steps[k - 1:], sm, color=col, lw=2, label=f"{lab} (mean B w in batch; "
                                                         f"{k}-step average)")
    ax.axhline(1.0, color="grey", lw=0.8, ls=":")
    ax.set_yscale("log")
    ax.set_xlabel("fine-tuning step")
    ax.set_title(f"stage 2: Antibody weights by sample type (B = {BATCH}, tau = {TAU})")
    ax.legend(fontsize=8)

    for ax, key, title in ((axes[1, 0], "logp_refuse_harmful",
                            "mean log p(REFUSE | held-out harmful prompt)"),
                           (axes[1, 1], "benign_accuracy", "held-out benign accuracy")):
        for name, lab in (("plain", "plain HF token mean"), ("antibody", "Antibody weights"),
                          ("benign_only", "reference: harmful samples removed")):
            ax.plot(res[name]["eval_step"], series(res[name], key),
                    **({"marker": "."} if name != "benign_only" else {"ls": "-.", "color": "C2"}),
                    label=lab)
        ax.axhline(res["aligned"][key], color="grey", lw=0.8, ls=":", label="aligned model")
        ax.axhline(res["base"][key], color="k", lw=0.8, ls="--", label="base (unaligned)")
        ax.set_xlabel("fine-tuning step")
        ax.set_title(f"stage 2: {title} ({int(HARMFUL_FRAC * 100)}% harmful)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_dir / "antibody.png", dpi=100)
    plt.close(fig)
    seconds_total = time.perf_counter() - t0

    summary = {
        "note": "toy, reconstructed protocol, no paper number claimed",
        "seconds": seconds, "seconds_total": seconds_total,
        "setup": {"words": list(WORDS), "answers": list(ANSWERS), "prompt_len": PROMPT_LEN,
                  "d_h": D_H, "P": res["P"], "batch": BATCH, "seed": SEED,
                  "pretrain": {"steps": PRE_STEPS, "lr": PRE_LR, "harmful_frac": PRE_HARMFUL},
                  "align": {"steps": ALIGN_STEPS, "lr": ALIGN_LR, "n_S": N_ALIGN, "n_D": N_ALIGN,
                            "alpha": ALPHA, "eta": ETA, "momentum": MOMENTUM, "lam2": LAM2,
                            "variant": "cosine"},
                  "finetune": {"steps": FT_STEPS, "lr": FT_LR, "n": N_FT,
                               "harmful_frac": HARMFUL_FRAC, "tau": TAU},
                  "optimizer": "Adam (0.9, 0.999), eps 1e-8, no weight decay",
                  "test": {"benign": N_TEST_BENIGN, "harmful": N_TEST_HARMFUL},
                  "eval_every": EVAL_EVERY},
        "base": res["base"], "aligned": res["aligned"],
        "align": res["align"], "stage2_start": start,
        "finetune": {k: res[k] for k in ("plain", "antibody", "benign_only")},
        "final": final, "verdicts": verdicts,
    }
    summary["headline"] = {
        "pass": verdicts["pass"],
        "note": summary["note"],
        "lam_t final (raw range)": f"{al['lam'][-1]:.3f} ({min(al['lam_raw']):.3f} .. "
                                   f"{max(al['lam_raw']):.3f})",
        "stage-2 start: mean w harmful / benign":
            f"{start['mean_w_harmful']:.4f} / {start['mean_w_benign']:.4f} "
            f"(ratio {start['mean_w_harmful'] / start['mean_w_benign']:.3f}, < 0.5: "
            f"{verdicts['harmful_weight_below_half_benign']})",
        "log p(REFUSE | held-out harmful): aligned, plain, weighted":
            f"{res['aligned']['logp_refuse_harmful']:.3f}, "
            f"{final['plain']['logp_refuse_harmful']:.3f}, "
            f"{final['antibody']['logp_refuse_harmful']:.3f}",
        "log p(REFUSE), reference run without the harmful samples":
            f"{final['benign_only']['logp_refuse_harmful']:.3f}",
        "benign accuracy: aligned, plain, weighted":
            f"{res['aligned']['benign_accuracy']:.3f}, {final['plain']['benign_accuracy']:.3f}, "
            f"{final['antibody']['benign_accuracy']:.3f}",
        "seconds (experiment, with the figure)": f"{seconds:.2f}, {seconds_total:.2f}",
    }
    (out_dir / "antibody.json").write_text(json.dumps(summary, indent=1))
    return summary
