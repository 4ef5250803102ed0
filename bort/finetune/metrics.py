"""Task metrics as the GLUE, SuperGLUE and RACE leaderboards compute them (numpy only).

accuracy, binary F1, Matthews correlation (CoLA), Pearson and Spearman with average ranks for ties (STS-B),
macro-F1 (CB), AX-g gender parity, MultiRC F1a (binary F1 over all answer options) and exact match (per
question), ReCoRD token F1 and exact match with the official SQuAD-style normalization (max over the gold answers).
"""
import collections
import re
import string

import numpy as np


def accuracy(preds, labels):
    preds, labels = np.asarray(preds), np.asarray(labels)
    return float((preds == labels).mean()) if len(labels) else 0.0


def _confusion(preds, labels, positive=1):
    preds, labels = np.asarray(preds) == positive, np.asarray(labels) == positive
    tp = float(np.sum(preds & labels))
    fp = float(np.sum(preds & ~labels))
    fn = float(np.sum(~preds & labels))
    tn = float(np.sum(~preds & ~labels))
    return tp, fp, fn, tn


def f1(preds, labels, positive=1):
    """F1 of the positive class (0 when there is no true or predicted positive)."""
    tp, fp, fn, _ = _confusion(preds, labels, positive)
    return 2 * tp / (2 * tp + fp + fn) if tp else 0.0


def matthews_corr(preds, labels):
    """Matthews correlation of binary labels (0 when a marginal is empty, as scikit-learn)."""
    tp, fp, fn, tn = _confusion(preds, labels)
    denom = np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return float((tp * tn - fp * fn) / denom) if denom else 0.0


def pearson(x, y):
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    x, y = x - x.mean(), y - y.mean()
    denom = np.sqrt((x * x).sum() * (y * y).sum())
    return float((x * y).sum() / denom) if denom else 0.0


def rankdata(values):
    """Ranks from 1, tied values getting the average of their ranks."""
    values = np.asarray(values, dtype=np.float64)
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(len(values), dtype=np.float64)
    sorted_values = values[order]
    start = 0
    while start < len(values):
        end = start
        while end + 1 < len(values) and sorted_values[end + 1] == sorted_values[start]:
            end += 1
        ranks[order[start:end + 1]] = (start + end) / 2.0 + 1.0
        start = end + 1
    return ranks


def spearman(x, y):
    return pearson(rankdata(x), rankdata(y))


def macro_f1(preds, labels, num_classes=None):
    preds, labels = np.asarray(preds), np.asarray(labels)
    classes = range(num_classes) if num_classes else sorted(set(labels.tolist()) | set(preds.tolist()))
    return float(np.mean([f1(preds, labels, positive=c) for c in classes]))


def multirc_scores(preds, labels):
    """preds, labels: one list of 0/1 answer labels per question. Returns (F1a, EM); a question without answer
    options is never an exact match."""
    flat_p = [p for question in preds for p in question]
    flat_l = [l for question in labels for l in question]
    em = np.mean([bool(l) and list(p) == list(l) for p, l in zip(preds, labels)]) if labels else 0.0
    return f1(flat_p, flat_l), float(em)


def gender_parity(preds):
    """AX-g's gender parity: the share of minimal pairs with the same prediction. A pair is two consecutive
    examples in file order (idx 2i and 2i+1: one premise with the pronoun's gender switched), as the SuperGLUE
    toolkit compares them; the released pair_id differs within a pair, so it cannot group them."""
    preds = list(preds)
    if len(preds) % 2:
        raise ValueError(f"gender parity needs pairs of predictions, got {len(preds)}")
    pairs = [(preds[i], preds[i + 1]) for i in range(0, len(preds), 2)]
    return float(np.mean([a == b for a, b in pairs])) if pairs else 0.0


def normalize_answer(text):
    """Lower case, drop punctuation and the articles a/an/the, collapse whitespace (the official ReCoRD script)."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def token_f1(prediction, gold):
    pred_tokens, gold_tokens = normalize_answer(prediction).split(), normalize_answer(gold).split()
    common = collections.Counter(pred_tokens) & collections.Counter(gold_tokens)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred_tokens), same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def exact_match(prediction, gold):
    return float(normalize_answer(prediction) == normalize_answer(gold))


def record_scores(preds, golds):
    """preds: one answer string per question; golds: the list of gold answer strings. Returns (F1, EM)."""
    if not preds:
        return 0.0, 0.0
    f1s = [max(token_f1(p, g) for g in gold) if gold else 0.0 for p, gold in zip(preds, golds)]
    ems = [max(exact_match(p, g) for g in gold) if gold else 0.0 for p, gold in zip(preds, golds)]
    return float(np.mean(f1s)), float(np.mean(ems))
