"""Leaderboard files whose layout is not one row per example: the original Bort's RACE files, MultiRC's nesting."""
import json
import os

from data.race import LETTERS

from bort.io import atomic_write


def write_race_original(preds, examples, out_dir):
    """The original Bort's RACE output: per level, `RACE-H.txt` / `RACE-M.txt` with each test article as one
    JSON line (id, article, questions, options) and `answers` replaced by the predicted letters."""
    articles = {}
    for ex, pred in zip(examples, preds):
        key = (ex["level"], ex["where"])
        article = articles.setdefault(key, {"answers": [], "options": [], "questions": [], "article": ex["text_a"],
                                            "id": ex["file_id"]})
        article["answers"].append(LETTERS[pred])
        article["options"].append(ex["choices"])
        article["questions"].append(ex["question"])
    paths = []
    for level, stem in (("middle", "RACE-M"), ("high", "RACE-H")):
        records = [a for (lev, _), a in articles.items() if lev == level]
        if not records:
            continue
        path = os.path.join(out_dir, f"{stem}.txt")
        with atomic_write(path) as handle:
            for record in records:
                handle.write(json.dumps(record) + "\n")
        paths.append(path)
    return paths


def nest_multirc(preds, examples):
    """MultiRC's nested submission: one line per passage, its questions and their answers' 0/1 labels."""
    passages = {}
    for ex, pred in zip(examples, preds):
        passage = passages.setdefault(ex["passage_idx"], {"idx": ex["passage_idx"], "passage": {"questions": []}})
        passage["passage"]["questions"].append(
            {"idx": ex["idx"], "answers": [{"idx": a["idx"], "label": int(p)} for a, p in zip(ex["answers"], pred)]})
    return list(passages.values())
