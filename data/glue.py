"""Readers for the GLUE data release (`.tsv` files as distributed), with their quirks.

`read_glue(task, segment, data_dir)` returns a list of example dicts: `idx` (the test file's index column, else
the row number from 0), `text_a`, `text_b` (pair tasks), `label` (the raw label string or float; None on test)
and `where` ("file:line", for error messages).

Quirks of the released files handled here (tests/test_glue_quirks.py reproduces each one):
- MRPC's train/dev files start with a UTF-8 byte-order mark (dropped by bort.io).
- CoLA's train/dev files have no header (source, label, original mark, sentence) and an empty third column.
- SST-2's train/dev sentences end in a space, its test sentences do not: text fields are stripped, so that
  train and test encode alike (GPT-2 BPE would otherwise give the training sentences an extra final token).
- STS-B: ids zero-padded in `old_index`, scores written `5.000`; MNLI: 12, 16 and 10 columns in train, dev and
  test (columns are found by header name); test files have no label column.
- Fields are never quoted: quote characters are literal, often unbalanced (`"` opening a field that never
  closes), so rows are split on tabs, never parsed as CSV.
- The last line may lack its newline (CoLA dev, the diagnostic file).
- QQP's train/dev contain malformed rows (a question broken over lines): skipped with a count. Elsewhere a row
  with fewer or more fields than the header is an error naming the line.
"""
import logging
import os

from bort.errors import BortError
from bort.io import read_lines
from bort.paths import mxnet_home

# task: (default directory under $MXNET_HOME/datasets, text_a column, text_b column or None, label column)
GLUE_COLUMNS = {
    "CoLA": ("glue_cola", "sentence", None, "label"),
    "SST-2": ("glue_sst", "sentence", None, "label"),
    "MRPC": ("glue_mrpc", "#1 String", "#2 String", "Quality"),
    "STS-B": ("glue_stsb", "sentence1", "sentence2", "score"),
    "QQP": ("glue_qqp", "question1", "question2", "is_duplicate"),
    "MNLI": ("glue_mnli", "sentence1", "sentence2", "gold_label"),
    "QNLI": ("glue_qnli", "question", "sentence", "label"),
    "RTE": ("glue_rte", "sentence1", "sentence2", "label"),
    "WNLI": ("glue_wnli", "sentence1", "sentence2", "label"),
    "AX": ("glue_diagnostic", "sentence1", "sentence2", "label"),
}
COLA_COLUMNS = ["source", "label", "original_label", "sentence"]
# Files per segment; the first one that exists is read.
SEGMENT_FILES = {
    "train": ["train.tsv"], "dev": ["dev.tsv"], "test": ["test.tsv"],
    "dev_matched": ["dev_matched.tsv"], "dev_mismatched": ["dev_mismatched.tsv"],
    "test_matched": ["test_matched.tsv"], "test_mismatched": ["test_mismatched.tsv"],
    "diagnostic": ["diagnostic.tsv", "AX.tsv"],
}
GLUE_HELP = "get the GLUE data release with the GLUE download script (glue_data/<TASK>/*.tsv)"


def default_data_dir(dirname):
    return os.path.join(mxnet_home(), "datasets", dirname)


def find_file(data_dir, candidates, help_text):
    for name in candidates:
        path = os.path.join(data_dir, name)
        if os.path.isfile(path):
            return path
    if not os.path.isdir(data_dir):
        raise BortError(f"{data_dir}: data directory not found; expected {' or '.join(candidates)} there "
                        f"({help_text}; pass --data_dir)")
    raise BortError(f"{os.path.join(data_dir, candidates[0])}: file not found; expected "
                    f"{' or '.join(candidates)} in {data_dir} ({help_text})")


def read_glue(task, segment, data_dir):
    """Examples of a GLUE task's segment (train, dev, test, dev_matched, ..., diagnostic)."""
    if task not in GLUE_COLUMNS:
        raise BortError(f"unknown GLUE task {task!r}; expected one of {sorted(GLUE_COLUMNS)}")
    _, col_a, col_b, col_label = GLUE_COLUMNS[task]
    path = find_file(data_dir, SEGMENT_FILES[segment], GLUE_HELP)
    lines = read_lines(path)
    if not lines:
        raise BortError(f"{path}: empty file; expected a GLUE .tsv file with rows")
    is_test = segment.startswith("test") or segment == "diagnostic"
    if task == "CoLA" and not is_test:
        header, body = COLA_COLUMNS, lines  # header-less
    else:
        header, body = lines[0][1].split("\t"), lines[1:]
    columns = {name: i for i, name in enumerate(header)}
    needed = [col_a] + ([col_b] if col_b else []) + ([] if is_test else [col_label])
    for name in needed:
        if name not in columns:
            raise BortError(f"{path}:1: missing column {name!r}; the header has {header}")
    index_col = columns.get("index", columns.get("id"))
    width = max(columns[name] for name in needed) + 1
    examples, skipped = [], 0
    for number, line in body:
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < width or len(fields) > len(header) or (task == "QQP" and len(fields) != len(header)):
            if task == "QQP":  # known malformed rows of the QQP release
                skipped += 1
                continue
            raise BortError(f"{path}:{number}: expected {len(header)} tab-separated fields "
                            f"({', '.join(header)}), found {len(fields)}")
        example = {"idx": len(examples), "text_a": fields[columns[col_a]].strip(), "where": f"{path}:{number}",
                   "label": None}
        if col_b:
            example["text_b"] = fields[columns[col_b]].strip()
        if is_test and index_col is not None:
            try:
                example["idx"] = int(fields[index_col])
            except ValueError:
                raise BortError(f"{path}:{number}: expected an integer index, found {fields[index_col]!r}") from None
        if not is_test:
            example["label"] = fields[columns[col_label]].strip()
        examples.append(example)
    if skipped:
        logging.warning("%s: skipped %d malformed rows", path, skipped)
    if not examples:
        raise BortError(f"{path}: no examples; expected rows after the header")
    return examples
