#!/usr/bin/env python
"""Hostile-input sweep of the task readers (issue 12): malformed GLUE/SuperGLUE/RACE files through what
finetune_bort.py does before training (Task.read, encode, gold labels, metrics). Prints one row per input and the
totals; `--json PATH` also writes them. Each input must end in a one-line error (BortError), never a traceback or
a silent acceptance (the valid inputs, a file with a byte-order mark and an AX-g line without its pair, must be
accepted).

    python -m experiments.sweep_reader_inputs --json sweep.json
"""
import argparse
import json
import os
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
from bort.errors import BortError
from bort.io import write_json
from bort.finetune.tasks import get_task
from bort.text.tokenizer import load_tokenizer

J = json.dumps
TSV_HEADER = "index\tsentence1\tsentence2\tlabel\n"
MRPC_HEADER = "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"


def multirc(answers):
    return J({"idx": 0, "passage": {"text": "t", "questions": [{"question": "q", "idx": 0, "answers": answers}]}})


def record(entities, qas=None):
    qas = qas if qas is not None else [{"query": "@placeholder x", "idx": 0, "answers": [{"text": "Harbor"}]}]
    return J({"idx": 0, "passage": {"text": "Harbor Town opens", "entities": entities}, "qas": qas})


def wic(**fields):
    return J(dict({"sentence1": "a bank", "sentence2": "the bank", "word": "bank", "start1": 2, "end1": 6,
                   "start2": 4, "end2": 8, "label": True}, **fields))


def wsc(**target):
    return J({"text": "The man saw it .", "idx": 0, "label": True,
              "target": dict({"span1_text": "The man", "span1_index": 0, "span2_text": "it", "span2_index": 3},
                             **target)})


def race(**fields):
    return J(dict({"article": "a", "questions": ["q"], "options": [["a", "b", "c", "d"]], "answers": ["A"]},
                  **fields))


# (task, segment, file name ("RACE": train/high/1.txt), content, description)
CASES = [
    ("RTE", "train", "train.tsv", TSV_HEADER + "0\ta\tb\tentailment\textra\n", "extra TSV field"),
    ("RTE", "train", "train.tsv", TSV_HEADER + "0\ta\n", "too few TSV fields"),
    ("RTE", "train", "train.tsv", TSV_HEADER + "0\ta\tb\tyes\n", "unknown label"),
    ("RTE", "train", "train.tsv", "", "empty TSV"),
    ("RTE", "train", "train.tsv", TSV_HEADER.encode() + b"0\t\xff\tb\tentailment\n", "invalid UTF-8"),
    ("MRPC", "train", "train.tsv", b"\xef\xbb\xbf" + (MRPC_HEADER + "1\t1\t2\ta\tb\n").encode(), "BOM (valid input)"),
    ("STS-B", "train", "train.tsv", "index\tsentence1\tsentence2\tscore\n0\ta\tb\thigh\n", "non-numeric score"),
    ("CoLA", "test", "test.tsv", "index\tsentence\nx\ta\n", "non-integer test index"),
    ("MultiRC", "train", "train.jsonl", multirc(["yes", "no"]), "MultiRC answers as strings"),
    ("MultiRC", "train", "train.jsonl", multirc([{"text": "a", "idx": 0, "label": "yes"}]), "MultiRC label 'yes'"),
    ("MultiRC", "train", "train.jsonl", multirc([{"idx": 0, "label": 1}]), "MultiRC answer without text"),
    ("MultiRC", "train", "train.jsonl", J({"idx": 0, "passage": {"text": "t", "questions": "q"}}),
     "MultiRC questions a string"),
    ("MultiRC", "train", "train.jsonl", J({"idx": 0, "passage": "t"}), "MultiRC passage a string"),
    ("ReCoRD", "train", "train.jsonl", record([{"start": 0}]), "ReCoRD entity without end"),
    ("ReCoRD", "train", "train.jsonl", record([{"start": "0", "end": 5}]), "ReCoRD entity start a string"),
    ("ReCoRD", "train", "train.jsonl", record([{"start": 0, "end": 99}]), "ReCoRD entity beyond the passage"),
    ("ReCoRD", "train", "train.jsonl", record([{"start": 0, "end": 5}], qas={"query": "q"}), "ReCoRD qas an object"),
    ("ReCoRD", "train", "train.jsonl",
     record([{"start": 0, "end": 5}], qas=[{"query": "q", "idx": 0, "answers": ["Harbor"]}]),
     "ReCoRD answers as strings"),
    ("WiC", "train", "train.jsonl", wic(start1="2"), "WiC offset a string"),
    ("WiC", "train", "train.jsonl", wic(start1=2.5), "WiC offset a float"),
    ("WiC", "train", "train.jsonl", wic(end1=60), "WiC offset beyond the sentence"),
    ("WSC", "train", "train.jsonl", wsc(span1_index="0"), "WSC index a string"),
    ("WSC", "train", "train.jsonl", wsc(span2_index=9), "WSC index beyond the text"),
    ("WSC", "train", "train.jsonl", wsc(span1_text=["The"]), "WSC span text a list"),
    ("BoolQ", "train", "train.jsonl", J({"passage": ["p"], "question": "q", "label": True}), "BoolQ passage a list"),
    ("COPA", "train", "train.jsonl",
     J({"premise": "p", "choice1": "a", "choice2": 2, "question": "cause", "label": 0}), "COPA choice an int"),
    ("AX-b", "AX-b", "AX-b.jsonl", J({"sentence1": "a", "sentence2": "b", "idx": "x"}), "AX-b idx not a number"),
    ("AX-g", "AX-g", "AX-g.jsonl", J({"premise": "a", "hypothesis": "b", "idx": 0, "label": "entailment"}),
     "AX-g without its pair (valid input)"),  # predicted; gender parity over the complete pairs, with a warning
    ("AX-g", "AX-g", "AX-g.jsonl", J({"premise": "a", "hypothesis": "b", "idx": 0, "label": "entailment"}) + "\n"
     + J({"premise": "c", "hypothesis": "d", "idx": 1, "label": "entailment"}), "AX-g pair of two hypotheses"),
    ("RACE-H", "train", "RACE", race(questions=["q1", "q2"], answers=["A", "B"]), "RACE question beyond the options"),
    ("RACE-H", "train", "RACE", race(answers=["A", "B"]), "RACE extra answer"),
    ("RACE-H", "train", "RACE", race(questions="q"), "RACE questions a string"),
    ("RACE-H", "train", "RACE", race(answers=["AB"]), "RACE answer 'AB'"),
    ("RACE-H", "train", "RACE", "[1, 2]", "RACE file a JSON list"),
]
VALID = {"BOM (valid input)", "AX-g without its pair (valid input)"}


def run_case(tok, task_name, segment, name, content):
    with tempfile.TemporaryDirectory() as d:
        target = os.path.join(d, "train", "high", "1.txt") if name == "RACE" else os.path.join(d, name)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(target, "wb") as f:
            f.write(content if isinstance(content, bytes) else content.encode())
        task = get_task(task_name)
        try:
            ex = task.read(segment, d)
            task.encode(ex, tok, 32, train=True)
            gold = task.gold(ex)
            if gold is not None:
                task.metrics(gold, gold)
        except BortError as err:
            return "one-line error", str(err).replace(d, "DIR")
        except Exception as err:  # noqa: BLE001  (what the sweep looks for)
            return "traceback", f"{type(err).__name__}: {err}"
        return "accepted", ""


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", help="also write the rows and totals here")
    args = parser.parse_args()
    tok = load_tokenizer(vocab_json=os.path.join(ROOT, "test_data/vocab/vocab.json"),
                         merges=os.path.join(ROOT, "test_data/vocab/merges.txt"))
    rows, counts = [], {"one-line error": 0, "traceback": 0, "silently accepted": 0, "valid, accepted": 0}
    for task_name, segment, name, content, what in CASES:
        outcome, detail = run_case(tok, task_name, segment, name, content)
        if outcome == "accepted":
            outcome = "valid, accepted" if what in VALID else "silently accepted"
        counts[outcome] += 1
        rows.append({"input": what, "task": task_name, "outcome": outcome, "message": detail})
        print(f"{what:36s} {outcome:18s} {detail[:100]}")
    print(f"{len(CASES)} inputs: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    if args.json:
        write_json(args.json, {"inputs": len(CASES), "totals": counts, "rows": rows})
    return 0 if counts["traceback"] == counts["silently accepted"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
