"""Agora's data files: the official dev set split into E and a held-out part, and training sets written back in
the task's own file format (so finetune_bort.py reads a round's folder like any --data_dir).

Formats written: GLUE `.tsv` (a header naming the columns the reader uses; CoLA header-less as released) and
SuperGLUE `.jsonl` (BoolQ, CB, RTE, COPA records with the fields of the release).
"""
import json
import os

import numpy as np

from bort.errors import BortError
from bort.io import atomic_write
from bort.finetune.task_kinds import ClassificationTask, MultipleChoiceTask

SUPERGLUE_FIELDS = {"BoolQ": ("passage", "question"), "CB": ("premise", "hypothesis"),
                    "SuperGLUE-RTE": ("premise", "hypothesis")}
SUPERGLUE_FILES = {"train": "train.jsonl", "dev": "val.jsonl"}


def check_supported(task):
    if task.benchmark == "glue" and isinstance(task, ClassificationTask):
        return
    if task.benchmark == "superglue" and (task.name in SUPERGLUE_FIELDS or task.name == "COPA"):
        return
    raise BortError(f"{task.name}: Agora writes training sets for the GLUE classification tasks and SuperGLUE "
                    f"BoolQ, CB, RTE and COPA; {task.name} is not supported (use the plain grid)")


def label_index(task, example):
    return task.label_index(example["label"], example.get("where", "generated example"))


def raw_label(task, index):
    """The label as the task's files spell it, from a class (or choice) index."""
    if isinstance(task, MultipleChoiceTask):
        return int(index)
    if task.name == "BoolQ":
        return bool(index)
    return task.labels[int(index)]


def file_name(task, segment):
    if task.benchmark == "glue":
        return f"{segment}.tsv"
    return SUPERGLUE_FILES.get(segment, f"{segment}.jsonl")


def write_examples(task, segment, examples, folder):
    """Write labelled examples (label given as an index in `label_index` or raw) as `segment`'s file."""
    from data.glue import GLUE_COLUMNS

    path = os.path.join(folder, file_name(task, segment))
    with atomic_write(path) as handle:
        if task.benchmark == "glue":
            _, col_a, col_b, col_label = GLUE_COLUMNS[task.name]
            if task.name != "CoLA":
                handle.write("\t".join([col_a] + ([col_b] if col_b else []) + [col_label]) + "\n")
            for ex in examples:
                label = raw_label(task, label_index(task, ex))
                if task.name == "CoLA":
                    handle.write(f"agora\t{label}\t\t{ex['text_a']}\n")
                else:
                    handle.write("\t".join([ex["text_a"]] + ([ex["text_b"]] if col_b else []) + [label]) + "\n")
        else:
            for i, ex in enumerate(examples):
                label = raw_label(task, label_index(task, ex))
                if task.name == "COPA":
                    record = {"premise": ex["premise"], "choice1": ex["choices"][0], "choice2": ex["choices"][1],
                              "question": ex["question"]}
                else:
                    first, second = SUPERGLUE_FIELDS[task.name]
                    record = {first: ex["text_a"], second: ex["text_b"]}
                record.update(idx=i, label=label)
                handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    return path


def split_dev(task, dev_by_segment, heldout_fraction, seed):
    """{segment: (E examples, held-out examples)}: a seeded split, stratified by label, of each dev segment."""
    if not 0.0 <= heldout_fraction < 1.0:
        raise BortError(f"--heldout_fraction: expected a number in [0, 1), got {heldout_fraction}")
    rng = np.random.RandomState(seed)
    out = {}
    for segment, examples in dev_by_segment.items():
        by_label = {}
        for i, ex in enumerate(examples):
            by_label.setdefault(label_index(task, ex), []).append(i)
        held = set()
        for label in sorted(by_label):
            rows = by_label[label]
            order = rng.permutation(len(rows))
            held.update(rows[j] for j in order[:int(round(len(rows) * heldout_fraction))])
        out[segment] = ([ex for i, ex in enumerate(examples) if i not in held],
                        [ex for i, ex in enumerate(examples) if i in held])
    return out
