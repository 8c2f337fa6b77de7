"""``refimpl demo cross-tokenizer``: distillation across two tokenizers — CTPD's aligned spans
and preference loss (arXiv 2601.11865), DWA-KD's losses and its Soft-DTW alignment (arXiv
2602.21669). Everything is local and offline; the set-up is ours (spec ``cross_tokenizer.md``,
"Demo"), not a paper experiment.

Corpus: 3000 ASCII sentences from five templates over fixed word lists (seed 0); the held-out
sentences come from another seed and never occur in the corpus. With ``tokenizers``
(``Tokenizer.train_from_iterator``) we train a byte-level BPE "student" (vocab 400), a
byte-level BPE "teacher" (vocab 1000: almost word level here) and a ``Whitespace``-pre-tokenized
BPE (vocab 400), and read the character offsets of ``encode(text)``.

1. Aligned spans (``span_align``, spec sec. 7): a held-out sentence on a character axis with the
   student's and the teacher's tokens and the shared span boundaries; a second row pairs the
   ``Whitespace`` tokenizer (gapped offsets: the spaces belong to no token) with the teacher —
   the official rule collapses the sentence to a few spans, ``rule="ends"`` with
   ``normalize_offsets=True`` recovers the word spans.
2. Span weights (sec. 8): add-one-smoothed bigram LMs per tokenizer — teacher on the whole
   corpus, student on 10 % of it. 24 training pairs (chosen = a held-out sentence, rejected =
   its words shuffled) and 24 evaluation pairs. pi+/pi- = student-tokenizer bigrams fit on the
   chosen / rejected training sentences (``student_all``) give ``span_weights``.
3. CTPD (sec. 9): the student's bigram logits trained by full-batch gradient descent on
   ``ctpd_loss_grad`` (teacher bigram as the anchor, beta 0.1), chained through ``span_sum``
   and the bigram softmax; plain DPO (``preference.dpo_loss_grad``, reference = the initial
   student) for comparison. Curves: loss, and held-out preference accuracy = the fraction of
   evaluation pairs with ``log pi_S(chosen) > log pi_S(rejected)``.
4. DWA-KD (secs. 4-6): ``dwa_kd_loss`` and its parts for two tiny random models (student and
   teacher each on its own tokenisation of the same 4 held-out sentences, the first two words as
   the prompt), for the DWA variant at step 0 and after the gate warm-up and for the DSKD variant.
5. Soft-DTW: the expected alignment E between the student's and the teacher's tokens of the
   shown sentence (token embedding = mean of fixed random 16-d character vectors, cosine cost,
   gamma 0.1), character-overlapping cells outlined, the CMA-style band of ``cma_band_penalty``
   (A = softmax of scaled embedding cosines) drawn; the share of E's mass on
   character-overlapping token pairs, also averaged over the 48 evaluation sentences.

Pass criteria (``summary["verdicts"]``, computed from the run): >= 85 % of E's mass on
overlapping pairs; the CTPD run ends with a lower loss and a higher held-out preference accuracy
than at step 0; the spans tile every aligned text; the official rule collapses on the
``Whitespace`` offsets while ``"ends"`` + ``normalize_offsets`` gives one span per word.
Writes ``cross_tokenizer.png`` and ``cross_tokenizer.json``. Needs ``tokenizers`` and
``matplotlib`` (the ``demo`` extra).

What we measured (2026-11-22, ``tokenizers`` 0.23.3): the shown sentence has 34 student and 11
teacher tokens in 11 shared spans; against the teacher the ``Whitespace`` tokenizer gets 3
official spans (``[0, 2)``, ``[2, 64)``, ``[64, 65)``) and 10 with ``"ends"`` + normalisation
(every word boundary kept). 91.8 % of E's mass lies on character-overlapping pairs (mean over
the 48 evaluation sentences 91.2 %, min 80.0 %); the band keeps 100 % (w0 = 5 is wide at 11
teacher tokens). CTPD: training loss 6.64 -> 0.027, held-out loss 3.61 -> 0.43, held-out reward
accuracy 0 -> 0.79 in 400 steps. The student's own ranking ``log pi(chosen) > log pi(rejected)``
is already 1.0 at step 0 (a bigram LM spots shuffled word order) and stays there, so it cannot
show progress; DPO's reward accuracy jumps from 0 (all rewards tie) to 1.0 after one recorded
interval since its reference is the initial student. DWA-KD (4 sentences, 75 student / 27
teacher targets): loss 7.966 at step 0, 8.001 at step 300 (the gate has warmed up: t2s_kd x 300),
7.947 for the DSKD variant; ``positions="prefix"`` changes only the DTW terms. Runs in about
5 s on a 2-core CPU.
"""

from __future__ import annotations

import json
import pathlib
import types

import numpy as np
from scipy.special import logsumexp, softmax

from refimpl import preference
from refimpl import softdtw as sd

SEED = 0
N_CORPUS = 3000
VOCAB_STUDENT, VOCAB_TEACHER, VOCAB_WHITESPACE = 400, 1000, 400
STUDENT_FRACTION = 0.1                # the student bigram sees 10 % of the corpus
PAIRS, EVAL_PAIRS = 24, 24
BETA, LR, STEPS, RECORD_EVERY = 0.1, 2.0, 400, 10
CHAR_DIM, GAMMA = 16, 0.1
BAND_SCALE = 10.0                     # A = softmax(BAND_SCALE * cosine) for the band
OVERLAP_PASS = 0.85
SHOWN = "Unbelievable astronomers remember the cathedral near the orchard."
DWA_SENTENCES, D_S, D_T = 4, 8, 12

# --------------------------------------------------------------------------- the corpus


def _words(block: str) -> list[str]:
    return block.split()


ADJ = _words("""ancient anxious bright brave careful cheerful clever curious distant eager elegant
enormous fearless foolish gentle graceful grateful hopeful humble hungry jealous lazy lively
lonely loyal mysterious nervous patient peaceful polite powerful proud quiet remarkable restless
silent sleepy stubborn tender thoughtful tireless unbelievable unexpected unhappy wonderful
wooden yellow""")
NOUN = _words("""astronomer baker beekeeper blacksmith captain carpenter chemist composer dancer
detective doctor engineer farmer gardener historian inventor journalist librarian magician
mechanic merchant musician neighbour painter philosopher pilot poet professor sailor scientist
shepherd soldier stranger student surgeon tailor teacher traveller weaver writer""")
THING = _words("""answer apple basket bicycle bridge candle castle cathedral computer diamond
dictionary envelope forest fountain garden harbour island journey kingdom ladder lantern letter
library machine meadow melody mirror mountain necklace notebook orchard painting question railway
river sandwich shadow telescope theatre umbrella valley village violin volcano whistle window""")
VERB = _words("""admire borrow carry collect consider deliver describe discover explain follow
forget gather imagine improve inspect measure mention notice observe paint polish protect question
recognise remember repair replace review search study understand visit wander watch""")
ADV = _words("""afterwards anxiously carefully cheerfully eventually everywhere gently happily
honestly immediately occasionally patiently politely quickly quietly rarely silently suddenly
together tomorrow tonight yesterday""")
TEMPLATES = ("The {adj} {noun} {v_s} the {thing} {adv}.",
             "A {adj} {noun} {v_ed} every {adj2} {thing}.",
             "{Adj} {noun}s {v} the {thing} near the {thing2}.",
             "Yesterday the {noun} was {v_ing} a {adj} {thing}.",
             "Every {noun} {v_s} that the {noun2} {v_ed} the {thing} {adv}.")


def _s(v: str) -> str:
    if v.endswith(("sh", "ch", "ss", "x")):
        return v + "es"
    return v[:-1] + "ies" if v.endswith("y") and v[-2] not in "aeiou" else v + "s"


def _ed(v: str) -> str:
    if v.endswith("e"):
        return v + "d"
    return v[:-1] + "ied" if v.endswith("y") and v[-2] not in "aeiou" else v + "ed"


def _ing(v: str) -> str:
    return v[:-1] + "ing" if v.endswith("e") else v + "ing"


def sentence(rng: np.random.Generator) -> str:
    """One template sentence with random words."""
    def pick(words):
        return words[rng.integers(len(words))]

    template = TEMPLATES[rng.integers(len(TEMPLATES))]
    adj, v = pick(ADJ), pick(VERB)
    return template.format(adj=adj, Adj=adj.capitalize(), adj2=pick(ADJ), noun=pick(NOUN),
                           noun2=pick(NOUN), thing=pick(THING), thing2=pick(THING), v=v,
                           v_s=_s(v), v_ed=_ed(v), v_ing=_ing(v), adv=pick(ADV))


def make_data(seed: int = SEED):
    """``(corpus, chosen, rejected)``: the training corpus and PAIRS + EVAL_PAIRS preference
    pairs; chosen sentences (and SHOWN) never occur in the corpus, rejected = chosen with its
    words shuffled (never the original order)."""
    rng = np.random.default_rng([seed, 0])
    corpus = [sentence(rng) for _ in range(N_CORPUS)]
    seen = set(corpus) | {SHOWN}
    rng = np.random.default_rng([seed, 1])
    chosen, rejected = [], []
    while len(chosen) < PAIRS + EVAL_PAIRS:
        s = sentence(rng)
        if s in seen:
            continue
        seen.add(s)
        words = s[:-1].split()
        order = rng.permutation(len(words))
        while np.all(order == np.arange(len(words))):
            order = rng.permutation(len(words))
        chosen.append(s)
        rejected.append(" ".join(words[i] for i in order) + ".")
    held_out = set(chosen)
    corpus = [s for s in corpus if s not in held_out]
    return corpus, chosen, rejected


# --------------------------------------------------------------------------- tokenizers


def train_tokenizers(corpus):
    """``{"student", "teacher", "whitespace"}`` -> trained ``tokenizers.Tokenizer``."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    def bpe(vocab, whitespace):
        tok = Tokenizer(models.BPE(unk_token="[UNK]" if whitespace else None))
        if whitespace:
            tok.pre_tokenizer = pre_tokenizers.Whitespace()
            trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=["[UNK]"],
                                          show_progress=False)
        else:
            tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
            trainer = trainers.BpeTrainer(vocab_size=vocab, show_progress=False,
                                          initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        tok.train_from_iterator(corpus, trainer)
        return tok

    return {"student": bpe(VOCAB_STUDENT, False), "teacher": bpe(VOCAB_TEACHER, False),
            "whitespace": bpe(VOCAB_WHITESPACE, True)}


def encode(tok, text):
    """``(ids (K,), offsets (K, 2))`` of ``text`` tokenised alone, no special tokens."""
    enc = tok.encode(text, add_special_tokens=False)
    offsets = np.asarray(enc.offsets, dtype=np.int64).reshape(-1, 2)
    return np.asarray(enc.ids, dtype=np.int64), offsets


def api():
    """The cross-tokenizer reference ops: ``refimpl.cross_tokenizer`` when it exists, else
    the two private modules it re-exports."""
    try:
        from refimpl import cross_tokenizer
        return cross_tokenizer
    except ImportError:
        from refimpl import _ctpd, _dwa_kd
        return types.SimpleNamespace(**{k: getattr(m, k) for m in (_dwa_kd, _ctpd)
                                        for k in m.__all__})


# --------------------------------------------------------------------------- bigram LMs


def bigram_logits(seqs, vocab):
    """Add-one-smoothed bigram log-probs (vocab + 1, vocab); row ``vocab`` is the BOS context."""
    counts = np.ones((vocab + 1, vocab))
    for ids in seqs:
        np.add.at(counts, (np.r_[vocab, ids[:-1]], ids), 1.0)
    return np.log(counts / counts.sum(axis=1, keepdims=True))


class Batch:
    """Token sequences padded to (R, K): ``prev`` contexts (BOS = vocab), ``tok`` targets,
    ``valid`` mask, and (when spans are given) the span ids ``seg`` (-1 on padding)."""

    def __init__(self, seqs, vocab, segs=None):
        K = max(len(s) for s in seqs)
        self.prev = np.full((len(seqs), K), vocab)
        self.tok = np.zeros((len(seqs), K), dtype=np.int64)
        self.valid = np.zeros((len(seqs), K), dtype=bool)
        self.seg = np.full((len(seqs), K), -1)
        for r, ids in enumerate(seqs):
            k = len(ids)
            self.prev[r, :k] = np.r_[vocab, ids[:-1]]
            self.tok[r, :k] = ids
            self.valid[r, :k] = True
            if segs is not None:
                self.seg[r, :k] = segs[r]

    def token_logps(self, Z):
        """log pi(t_k | t_{k-1}) (R, K), 0 on padding."""
        lse = logsumexp(Z, axis=1)
        return np.where(self.valid, Z[self.prev, self.tok] - lse[self.prev], 0.0)

    def logits_grad(self, Z, d_lp):
        """``dL/dZ`` from ``dL/d token_logps`` (R, K): ``sum_k d_k (e_{t_k} - softmax(Z[prev_k]))``
        in row ``prev_k``."""
        d_lp = np.where(self.valid, d_lp, 0.0)
        dZ = np.zeros_like(Z)
        np.add.at(dZ, (self.prev, self.tok), d_lp)
        per_context = np.bincount(self.prev.ravel(), d_lp.ravel(), minlength=Z.shape[0])
        return dZ - per_context[:, None] * softmax(Z, axis=1)


# --------------------------------------------------------------------------- pieces


def char_embeddings(text, offsets, table):
    """Token embedding = mean of the character vectors of ``text[a:b]``."""
    return np.stack([table[[ord(c) for c in text[a:b]]].mean(axis=0) for a, b in offsets])


def overlap_matrix(off_s, off_t):
    """``O[k, l] = 1`` where student token k and teacher token l share a character."""
    return (off_s[:, None, 0] < off_t[None, :, 1]) & (off_t[None, :, 0] < off_s[:, None, 1])


def soft_alignment(text, tok_s, tok_t, table, ct):
    """Soft-DTW E between the student and teacher tokens of ``text`` (cosine cost on
    mean-character embeddings, gamma GAMMA) with the overlap mask and the CMA-style band."""
    _, off_s = encode(tok_s, text)
    _, off_t = encode(tok_t, text)
    X, Y = char_embeddings(text, off_s, table), char_embeddings(text, off_t, table)
    C = sd.sdtw_cost(X, Y, kind="cosine")
    value, E = sd.soft_dtw_grad(C, GAMMA)
    O = overlap_matrix(off_s, off_t)
    A = softmax(BAND_SCALE * (1.0 - C), axis=1)
    P = np.asarray(ct.cma_band_penalty(A))
    return dict(off_s=off_s, off_t=off_t, C=C, E=E, O=O, P=P, value=float(value),
                overlap_mass=float((E * O).sum() / E.sum()),
                band_mass=float((E * (P == 0)).sum() / E.sum()))


def aligned(text, tok_s, tok_t, ct, **kw):
    """``span_align`` on the offsets of ``text`` under two tokenizers."""
    (_, off_s), (_, off_t) = encode(tok_s, text), encode(tok_t, text)
    spans, seg_s, seg_t = ct.span_align(off_s, off_t, **kw)
    return off_s, off_t, np.asarray(spans), np.asarray(seg_s), np.asarray(seg_t)


def tiles(spans, n):
    """Spans are consecutive, non-empty and cover [0, n)."""
    spans = np.asarray(spans)
    return bool(len(spans) and spans[0, 0] == 0 and spans[-1, 1] == n
                and np.all(spans[1:, 0] == spans[:-1, 1]) and np.all(spans[:, 1] > spans[:, 0]))


def word_spans(text):
    """``[start, end)`` of each word (with its leading space, as normalised) and of the final
    period."""
    ends = [i for i, c in enumerate(text) if c == " "] + [len(text) - 1, len(text)]
    return np.array([[a, b] for a, b in zip([0] + ends[:-1], ends)])


# --------------------------------------------------------------------------- CTPD


def pair_set(tok, chosen, rejected, models, ct):
    """Student token batch with span ids, teacher span log-probs ``ellT`` and span weights
    ``w`` (0 on padded spans) of preference pairs, rows stacked chosen first."""
    texts = list(chosen) + list(rejected)
    V_s, V_t = tok["student"].get_vocab_size(), tok["teacher"].get_vocab_size()
    al = [aligned(t, tok["student"], tok["teacher"], ct) for t in texts]
    n_spans = np.array([len(a[2]) for a in al])
    R = int(n_spans.max())
    bs = Batch([encode(tok["student"], t)[0] for t in texts], V_s, [a[3] for a in al])
    bt = Batch([encode(tok["teacher"], t)[0] for t in texts], V_t, [a[4] for a in al])
    ellT = np.asarray(ct.span_sum(bt.token_logps(models["teacher"]), bt.seg, R))
    lp_pos = np.asarray(ct.span_sum(bs.token_logps(models["pos"]), bs.seg, R))
    lp_neg = np.asarray(ct.span_sum(bs.token_logps(models["neg"]), bs.seg, R))
    mu = np.r_[np.ones(len(chosen)), -np.ones(len(rejected))][:, None]
    w = np.asarray(ct.span_weights(lp_pos, lp_neg, mu))
    w = np.where(np.arange(R)[None, :] < n_spans[:, None], w, 0.0)
    return dict(bs=bs, R=R, ellT=ellT, w=w, texts=texts, spans=[a[2] for a in al])


def ctpd_setup(tok, chosen, rejected, corpus, ct):
    """Bigram models (teacher on the corpus, student on its first 10 %, pi+/pi- on the chosen /
    rejected training sentences) and the training and evaluation pair sets."""
    V_s, V_t = tok["student"].get_vocab_size(), tok["teacher"].get_vocab_size()
    enc_s = lambda texts: [encode(tok["student"], t)[0] for t in texts]
    n_student = round(STUDENT_FRACTION * len(corpus))
    models = {"teacher": bigram_logits([encode(tok["teacher"], t)[0] for t in corpus], V_t),
              "student": bigram_logits(enc_s(corpus[:n_student]), V_s),
              "pos": bigram_logits(enc_s(chosen[:PAIRS]), V_s),
              "neg": bigram_logits(enc_s(rejected[:PAIRS]), V_s)}
    return dict(models=models, n_student=n_student,
                train=pair_set(tok, chosen[:PAIRS], rejected[:PAIRS], models, ct),
                eval=pair_set(tok, chosen[PAIRS:], rejected[PAIRS:], models, ct))


def objective(method, Z, ps, ref_seq, ct, need_grad=True):
    """``(loss, reward accuracy, dL/d token_logps)`` of one pair set: CTPD anchored on the
    teacher's span log-probs, or DPO with the initial student's sequence log-probs as the
    reference. Reward accuracy = fraction of pairs with reward(chosen) > reward(rejected)
    (ties count as wrong)."""
    bs = ps["bs"]
    lp = bs.token_logps(Z)
    if method == "ctpd":
        ellS = np.asarray(ct.span_sum(lp, bs.seg, ps["R"]))
        loss, r_w, r_l = ct.ctpd_loss(ellS, ps["ellT"], ps["w"], BETA)
        if need_grad:
            _, d_ell = ct.ctpd_loss_grad(ellS, ps["ellT"], ps["w"], BETA)
            d_ell = np.asarray(d_ell)
            d_lp = np.where(bs.seg >= 0, d_ell[np.arange(len(lp))[:, None], bs.seg], 0.0)
    else:
        loss, r_w, r_l = preference.dpo_loss(lp.sum(axis=1), ref_seq, BETA)
        if need_grad:
            _, d_seq = preference.dpo_loss_grad(lp.sum(axis=1), ref_seq, BETA)
            d_lp = np.broadcast_to(np.asarray(d_seq)[:, None], lp.shape)
    acc = float(np.mean(np.asarray(r_w) > np.asarray(r_l)))
    return float(loss), acc, (d_lp if need_grad else None)


def likelihood_accuracy(Z, batch):
    """Fraction of pairs (chosen rows first) with ``log pi(chosen) > log pi(rejected)``."""
    seq = batch.token_logps(Z).sum(axis=1)
    half = len(seq) // 2
    return float(np.mean(seq[:half] > seq[half:]))


def train_student(s, method, ct):
    """Full-batch gradient descent on the student's bigram logits; ``method`` in {"ctpd",
    "dpo"}. Records the training loss, the held-out loss and reward accuracy, and the held-out
    likelihood accuracy."""
    Z0 = s["models"]["student"]
    Z = Z0.copy()
    tr, ev = s["train"], s["eval"]
    ref_tr = tr["bs"].token_logps(Z0).sum(axis=1)
    ref_ev = ev["bs"].token_logps(Z0).sum(axis=1)
    curve = {k: [] for k in ("step", "loss", "train_reward_accuracy", "eval_loss",
                             "eval_reward_accuracy", "eval_likelihood_accuracy")}
    for step in range(STEPS + 1):
        loss, acc, d_lp = objective(method, Z, tr, ref_tr, ct)
        if step % RECORD_EVERY == 0 or step == STEPS:
            e_loss, e_acc, _ = objective(method, Z, ev, ref_ev, ct, need_grad=False)
            for k, v in (("step", step), ("loss", loss), ("train_reward_accuracy", acc),
                         ("eval_loss", e_loss), ("eval_reward_accuracy", e_acc),
                         ("eval_likelihood_accuracy", likelihood_accuracy(Z, ev["bs"]))):
                curve[k].append(v)
        if step < STEPS:
            Z = Z - LR * tr["bs"].logits_grad(Z, d_lp)
    return curve


# --------------------------------------------------------------------------- DWA-KD


def _linear(rng, d_in, d_out):
    """A random ``Linear(d_in -> d_out)`` as ``(weight (d_out, d_in), bias (d_out,))``."""
    return (rng.normal(size=(d_out, d_in)) / np.sqrt(d_in), 0.1 * rng.normal(size=d_out))


def dwa_inputs(texts, tok, seed=SEED):
    """Inputs of ``dwa_kd_loss`` for tiny random models on ``texts``: each model sees its own
    tokenisation; inputs ``x = ids[:-1]``, targets ``y = ids[1:]``; targets inside the first
    two words (the prompt) and padding get label -100 (input id 0)."""
    rng = np.random.default_rng([seed, 2])
    V_s, V_t = tok["student"].get_vocab_size(), tok["teacher"].get_vocab_size()

    def model(name, V, d):
        E = rng.normal(size=(V, d))
        A = rng.normal(size=(d, d)) / np.sqrt(d)
        W = rng.normal(size=(V, d))
        enc = [encode(tok[name], t) for t in texts]
        N = max(len(ids) for ids, _ in enc) - 1
        x = np.zeros((len(texts), N), dtype=np.int64)
        y = np.zeros((len(texts), N), dtype=np.int64)
        labels = np.full((len(texts), N), -100)
        for b, ((ids, off), text) in enumerate(zip(enc, texts)):
            n = len(ids) - 1
            x[b, :n], y[b, :n] = ids[:-1], ids[1:]
            prompt_end = text.index(" ", text.index(" ") + 1)        # the first two words
            labels[b, :n] = np.where(off[1:, 1] > prompt_end, ids[1:], -100)
        emb_in = E[x]
        steps = np.arange(1, N + 1)[None, :, None]
        H = np.tanh((np.cumsum(emb_in, axis=1) / steps) @ A)        # causal mean, then tanh
        mask = labels != -100
        return dict(z=H @ W.T, labels=labels, H=H, e_in=emb_in, e_tgt=E[np.where(mask, y, 0)],
                    W=W)

    S, T = model("student", V_s, D_S), model("teacher", V_t, D_T)
    proj = {"query": _linear(rng, 2 * D_S, 2 * D_T), "t2s": _linear(rng, D_T, D_S),
            "s2t": _linear(rng, D_S, D_T), "dtw_embed_t2s": _linear(rng, D_T, D_S)}
    return S, T, proj


def dwa_parts(texts, tok, ct):
    """``dwa_kd_loss`` (loss and parts) for the DWA variant at step 0 and step 300 (gate
    warm-up over) and for the DSKD variant."""
    S, T, proj = dwa_inputs(texts, tok)
    args = (S["z"], T["z"], S["labels"], T["labels"], S["H"], T["H"], S["e_in"], S["e_tgt"],
            T["e_in"], T["e_tgt"], proj, S["W"], T["W"])
    out = {}
    for label, step, kw in (("dwa_step0", 0, {}), ("dwa_step300", 300, {}),
                            ("dwa_step300_positions_prefix", 300, {"positions": "prefix"}),
                            ("dskd_step300", 300, {"variant": "dskd"})):
        loss, parts = ct.dwa_kd_loss(*args, step, **kw)
        out[label] = {"loss": float(loss),
                      **{k: float(np.asarray(v)) for k, v in dict(parts).items()
                         if np.ndim(v) == 0}}
    out["setup"] = {"sentences": len(texts), "d_s": D_S, "d_t": D_T,
                    "student_targets": int((S["labels"] != -100).sum()),
                    "teacher_targets": int((T["labels"] != -100).sum()),
                    "N_prime": int(S["labels"].shape[1]), "M_prime": int(T["labels"].shape[1])}
    return out


# --------------------------------------------------------------------------- plotting


def _show(text):
    return text.replace(" ", "\u2423")


def _token_row(ax, y, text, offsets, color, label):
    from matplotlib.patches import Rectangle

    for k, (a, b) in enumerate(offsets):
        ax.add_patch(Rectangle((a, y - 0.38), b - a, 0.76, fc=color[k % 2], ec="k", lw=0.6))
        ax.text((a + b) / 2, y, _show(text[a:b]), ha="center", va="center", fontsize=7,
                clip_on=True)
    ax.text(-0.5, y, label, ha="right", va="center", fontsize=8)


def _span_row(ax, y, spans, label, color):
    from matplotlib.patches import Rectangle

    for r, (a, b) in enumerate(spans):
        ax.add_patch(Rectangle((a, y - 0.38), b - a, 0.76, fc=color[r % 2], ec="k", lw=0.8))
        ax.text((a + b) / 2, y, str(r), ha="center", va="center", fontsize=7)
    ax.text(-0.5, y, label, ha="right", va="center", fontsize=8)


def _char_axis(ax, text, rows):
    ax.set_xlim(0, len(text))
    ax.set_ylim(-0.6, rows - 0.4)
    ax.set_xticks(np.arange(len(text)) + 0.5, list(_show(text)), fontsize=7, family="monospace")
    ax.tick_params(axis="x", length=0)
    ax.set_yticks([])
    for side in ("left", "right", "top"):
        ax.spines[side].set_visible(False)


def run(outdir: pathlib.Path) -> dict:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    outdir = pathlib.Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    ct = api()
    corpus, chosen, rejected = make_data()
    tok = train_tokenizers(corpus)
    n = len(SHOWN)

    # 1. aligned spans of the shown sentence
    off_s, off_t, spans, seg_s, seg_t = aligned(SHOWN, tok["student"], tok["teacher"], ct,
                                                 rule="official")
    off_w, _, spans_off, _, _ = aligned(SHOWN, tok["whitespace"], tok["teacher"], ct,
                                        rule="official")
    _, _, spans_ends, _, _ = aligned(SHOWN, tok["whitespace"], tok["teacher"], ct, rule="ends",
                                     normalize_offsets=True)
    every = [aligned(t, tok["student"], tok["teacher"], ct, rule="official")
             for t in [SHOWN] + chosen + rejected]
    all_tile = all(tiles(a[2], len(t)) for a, t in zip(every, [SHOWN] + chosen + rejected))
    all_assigned = all(np.all(a[3] >= 0) and np.all(a[4] >= 0) for a in every)
    official_equals_ends = all(
        np.array_equal(a[2], aligned(t, tok["student"], tok["teacher"], ct, rule="ends")[2])
        for a, t in zip(every, [SHOWN] + chosen + rejected))
    words = word_spans(SHOWN)
    word_bounds_kept = set(words.ravel().tolist()) <= set(spans_ends.ravel().tolist())

    # 2-3. CTPD and DPO on the bigram student
    s = ctpd_setup(tok, chosen, rejected, corpus, ct)
    curves = {m: train_student(s, m, ct) for m in ("ctpd", "dpo")}
    c = curves["ctpd"]

    # 4. DWA-KD parts
    dwa = dwa_parts(chosen[PAIRS:PAIRS + DWA_SENTENCES], tok, ct)

    # 5. Soft-DTW alignment
    table = np.random.default_rng([SEED, 3]).normal(size=(128, CHAR_DIM))
    al = soft_alignment(SHOWN, tok["student"], tok["teacher"], table, ct)
    masses = [soft_alignment(t, tok["student"], tok["teacher"], table, ct)["overlap_mass"]
              for t in chosen[PAIRS:] + rejected[PAIRS:]]

    verdicts = {
        "overlap_mass_shown": al["overlap_mass"],
        "overlap_mass_eval_mean": float(np.mean(masses)),
        "overlap_mass_eval_min": float(np.min(masses)),
        "soft_dtw_mass_on_overlapping_pairs_ge_85pct": bool(al["overlap_mass"] >= OVERLAP_PASS
                                                            and np.mean(masses) >= OVERLAP_PASS),
        "ctpd_loss_start_end": [c["loss"][0], c["loss"][-1]],
        "ctpd_eval_loss_start_end": [c["eval_loss"][0], c["eval_loss"][-1]],
        "ctpd_eval_reward_accuracy_start_end": [c["eval_reward_accuracy"][0],
                                                c["eval_reward_accuracy"][-1]],
        "ctpd_eval_likelihood_accuracy_start_end": [c["eval_likelihood_accuracy"][0],
                                                    c["eval_likelihood_accuracy"][-1]],
        "ctpd_loss_decreases": bool(c["loss"][-1] < c["loss"][0]),
        "ctpd_eval_accuracy_increases": bool(c["eval_reward_accuracy"][-1]
                                             > c["eval_reward_accuracy"][0]),
        "spans_tile_every_text": bool(all_tile),
        "every_token_in_a_span": bool(all_assigned),
        "official_equals_ends_on_contiguous_offsets": bool(official_equals_ends),
        "whitespace_official_spans": len(spans_off),
        "whitespace_ends_normalized_spans": len(spans_ends),
        "whitespace_official_collapses": bool(len(spans_off) < len(words)),
        "whitespace_ends_keeps_every_word_boundary": bool(word_bounds_kept),
        "dwa_kd_finite": bool(all(np.isfinite(v) for d in dwa.values() if d is not dwa["setup"]
                                  for v in d.values())),
    }
    verdicts["pass"] = bool(verdicts["soft_dtw_mass_on_overlapping_pairs_ge_85pct"]
                            and verdicts["ctpd_loss_decreases"]
                            and verdicts["ctpd_eval_accuracy_increases"]
                            and verdicts["spans_tile_every_text"])

    # ---------------------------------------------------------------- figure
    fig = plt.figure(figsize=(17, 11.5))
    gs = fig.add_gridspec(3, 4, height_ratios=(1.0, 1.25, 1.9), hspace=0.4, wspace=0.35,
                          left=0.08, right=0.98, top=0.96, bottom=0.07)
    ax = fig.add_subplot(gs[0, :])
    _token_row(ax, 2, SHOWN, off_s, ("#cfe2f3", "#9fc5e8"), f"student BPE {VOCAB_STUDENT}")
    _token_row(ax, 1, SHOWN, off_t, ("#fce5cd", "#f9cb9c"), f"teacher BPE {VOCAB_TEACHER}")
    _span_row(ax, 0, spans, "shared spans", ("#d9ead3", "#b6d7a8"))
    for a in spans[:, 0].tolist() + [n]:
        ax.axvline(a, color="tab:red", lw=1.2, ls="--")
    _char_axis(ax, SHOWN, 3)
    ax.set_title(f"1a. span_align(rule=\"official\"): {len(off_s)} student and {len(off_t)} "
                 f"teacher tokens -> {len(spans)} shared spans (red: common token ends)",
                 fontsize=10)
    ax = fig.add_subplot(gs[1, :])
    _token_row(ax, 3, SHOWN, off_w, ("#ead1dc", "#d5a6bd"), f"Whitespace BPE {VOCAB_WHITESPACE}")
    _token_row(ax, 2, SHOWN, off_t, ("#fce5cd", "#f9cb9c"), f"teacher BPE {VOCAB_TEACHER}")
    _span_row(ax, 1, spans_off, "official", ("#f4cccc", "#ea9999"))
    _span_row(ax, 0, spans_ends, "ends + normalize", ("#d9ead3", "#b6d7a8"))
    _char_axis(ax, SHOWN, 4)
    ax.set_title(f"1b. Whitespace offsets leave the spaces out: the official rule collapses to "
                 f"{len(spans_off)} spans, rule=\"ends\" + normalize_offsets gives "
                 f"{len(spans_ends)} ({len(words) - 1} words and the period)", fontsize=10)

    ax = fig.add_subplot(gs[2, 0])
    tr = s["train"]
    nr, nr_r = len(tr["spans"][0]), len(tr["spans"][PAIRS])
    labels = ([_show(tr["texts"][0][a:b]) for a, b in tr["spans"][0]]
              + [_show(tr["texts"][PAIRS][a:b]) for a, b in tr["spans"][PAIRS]])
    ax.barh(-np.arange(nr), tr["w"][0, :nr], color="tab:green", label="chosen (mu = +1)")
    ax.barh(-nr - 1 - np.arange(nr_r), tr["w"][PAIRS, :nr_r], color="tab:red",
            label="rejected (mu = -1)")
    ax.set_yticks(np.r_[-np.arange(nr), -nr - 1 - np.arange(nr_r)], labels, fontsize=6)
    ax.axvline(1.0, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("span weight w_r")
    ax.set_title("2. span_weights of training pair 0\n(pi+/pi- bigrams on student spans)",
                 fontsize=10)
    ax.legend(fontsize=7, loc="lower right")

    ax = fig.add_subplot(gs[2, 1])
    for m, color in (("ctpd", "tab:blue"), ("dpo", "tab:orange")):
        ax.plot(curves[m]["step"], curves[m]["loss"], color=color, label=f"{m.upper()} train")
        ax.plot(curves[m]["step"], curves[m]["eval_loss"], color=color, ls="--",
                label=f"{m.upper()} held-out")
    ax.axhline(np.log(2), color="grey", lw=0.8, ls=":", label="log 2")
    ax.set_yscale("log")
    ax.set_xlabel("gradient step")
    ax.set_ylabel("loss")
    ax.set_title(f"3a. bigram student, {PAIRS} training pairs\n(beta {BETA}, lr {LR}; DPO: "
                 f"reference = initial student)", fontsize=10)
    ax.legend(fontsize=7)
    ax = fig.add_subplot(gs[2, 2])
    for m, color in (("ctpd", "tab:blue"), ("dpo", "tab:orange")):
        ax.plot(curves[m]["step"], curves[m]["eval_reward_accuracy"], color=color,
                label=f"{m.upper()}: reward(chosen) > reward(rejected)")
        ax.plot(curves[m]["step"], curves[m]["eval_likelihood_accuracy"], color=color, ls=":",
                label=f"{m.upper()}: log pi(chosen) > log pi(rejected)")
    ax.set_ylim(-0.03, 1.03)
    ax.set_xlabel("gradient step")
    ax.set_ylabel("fraction of held-out pairs")
    ax.set_title(f"3b. held-out preference accuracy ({EVAL_PAIRS} pairs);\n"
                 f"the log pi ranking is saturated from step 0", fontsize=10)
    ax.legend(fontsize=7)

    ax = fig.add_subplot(gs[2, 3])
    E, O, P = al["E"], al["O"], al["P"]
    im = ax.imshow(E, cmap="magma_r", vmin=0.0, vmax=1.0, aspect="auto", interpolation="nearest")
    for k, l in zip(*np.nonzero(O)):
        ax.add_patch(Rectangle((l - 0.5, k - 0.5), 1, 1, fill=False, ec="tab:cyan", lw=1.0))
    ax.imshow(np.ma.masked_where(P == 0, P), cmap="Greys", vmin=0.0, vmax=2.5 * P.max(),
              alpha=0.6, aspect="auto", interpolation="nearest")
    ax.set_yticks(np.arange(len(al["off_s"])), [_show(SHOWN[a:b]) for a, b in al["off_s"]],
                  fontsize=6)
    ax.set_xticks(np.arange(len(al["off_t"])), [_show(SHOWN[a:b]) for a, b in al["off_t"]],
                  fontsize=6, rotation=90)
    fig.colorbar(im, ax=ax, shrink=0.8, label="E (expected alignment)")
    ax.set_title(f"4. Soft-DTW E (gamma {GAMMA}): {100 * al['overlap_mass']:.1f}% of the mass\n"
                 f"on char-overlapping pairs (cyan); grey: outside\n"
                 f"the CMA band ({100 * al['band_mass']:.1f}% of the mass inside)", fontsize=10)
    fig.savefig(outdir / "cross_tokenizer.png", dpi=100)
    plt.close(fig)

    summary = {
        "setup": {"corpus_sentences": len(corpus), "templates": len(TEMPLATES), "seed": SEED,
                  "vocab": {k: t.get_vocab_size() for k, t in tok.items()},
                  "student_bigram_sentences": s["n_student"], "pairs": PAIRS,
                  "eval_pairs": EVAL_PAIRS, "beta": BETA, "lr": LR, "steps": STEPS,
                  "gamma": GAMMA, "char_dim": CHAR_DIM, "band_scale": BAND_SCALE},
        "shown": {"text": SHOWN, "student_offsets": off_s.tolist(),
                  "teacher_offsets": off_t.tolist(), "whitespace_offsets": off_w.tolist(),
                  "spans": spans.tolist(), "seg_s": seg_s.tolist(), "seg_t": seg_t.tolist(),
                  "whitespace_official_spans": spans_off.tolist(),
                  "whitespace_ends_spans": spans_ends.tolist()},
        "span_weights_pair0": {"chosen": tr["w"][0, :nr].tolist(),
                               "rejected": tr["w"][PAIRS, :nr_r].tolist()},
        "curves": curves,
        "dwa_kd": dwa,
        "soft_dtw": {"value": al["value"], "E": al["E"].tolist(), "overlap": al["O"].tolist(),
                     "band_penalty": al["P"].tolist(), "overlap_mass": al["overlap_mass"],
                     "band_mass": al["band_mass"], "eval_overlap_masses": masses},
        "verdicts": verdicts,
    }
    summary["headline"] = {
        "pass": verdicts["pass"],
        "Soft-DTW mass on char-overlapping pairs": f"{100 * al['overlap_mass']:.1f}% (shown), "
                                                   f"{100 * np.mean(masses):.1f}% (eval mean)",
        "CTPD loss start -> end": f"{c['loss'][0]:.4f} -> {c['loss'][-1]:.4f}",
        **{f"{m.upper()} held-out reward / likelihood accuracy start -> end":
           f"{curves[m]['eval_reward_accuracy'][0]:.3f} -> "
           f"{curves[m]['eval_reward_accuracy'][-1]:.3f} / "
           f"{curves[m]['eval_likelihood_accuracy'][0]:.3f} -> "
           f"{curves[m]['eval_likelihood_accuracy'][-1]:.3f}" for m in curves},
        "Whitespace vs teacher spans (official / ends+normalize / words+period)":
            f"{len(spans_off)} / {len(spans_ends)} / {len(words)}",
        "DWA-KD loss (step 0, step 300, DSKD)": ", ".join(
            f"{dwa[k]['loss']:.4f}" for k in ("dwa_step0", "dwa_step300", "dskd_step300")),
    }
    (outdir / "cross_tokenizer.json").write_text(json.dumps(summary, indent=1))
    return summary
