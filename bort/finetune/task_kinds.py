"""The kinds of task, one class each: what a task's examples become (instances), how per-instance scores become
predictions, metrics and leaderboard files. The registry (bort.finetune.tasks) builds one instance per task.

ClassificationTask (GLUE, most of SuperGLUE; with spans: WiC, WSC), RegressionTask (STS-B), MultipleChoiceTask
(CopaTask, RaceTask), MultiAnswerTask (MultiRC), EntityTask (ReCoRD). Texts are encoded as the original Bort
fine-tuning did: `<s> A </s>` or `<s> A </s> B </s>`, both texts truncated to equal shares of `max_len`
(bort/text/encoding.py). A task's benchmark (glue, superglue, race) decides where its data lies, the reader and the
leaderboard file's format.
"""
import dataclasses
import json
import os

import numpy as np

from data import glue, superglue
from data.glue import GLUE_COLUMNS, default_data_dir, read_glue
from data.race import LETTERS, LEVELS, race_dir, read_race
from data.superglue import SUPERGLUE_DIRS, read_superglue

from bort.finetune import metrics as M
from bort.errors import BortError
from bort.text.encoding import SequenceEncoder
from bort.finetune.leaderboard_files import nest_multirc, write_race_original
from bort.io import atomic_write


@dataclasses.dataclass
class Instance:
    """One training/prediction unit: K token sequences (K > 1 for multiple choice), spans, a target."""

    example: int
    seqs: list
    spans: list = None  # per sequence: [(start, end), ...] token positions
    target: float = None


@dataclasses.dataclass
class Task:
    """What every kind shares: the data files of a benchmark, segments, labels, submission files. Subclasses give
    the kind's outputs, encoding (`example_instances`), predictions and metrics."""

    name: str
    benchmark: str  # glue, superglue, race
    labels: tuple = ()  # class names as they appear in the data
    output_labels: tuple = ()  # label strings written to the leaderboard file, same order (default: labels)
    metric_names: tuple = ("accuracy",)  # every metric computed and logged
    score_metrics: tuple = ("accuracy",)  # the official score is their mean (see official_score)
    dev_segments: tuple = ("dev",)
    test_segments: tuple = (("test", None),)  # (segment, submission file stem)
    model_task: str = None  # diagnostics are predicted with this task's checkpoint
    aliases: tuple = ()
    legacy_dirs: tuple = ()  # earlier default directories under $MXNET_HOME/datasets, still found

    kind = None  # the kind's name (class attribute), for messages
    num_outputs = 1  # scores per sequence
    num_spans = 0  # spans per sequence whose token states the head pools

    # ---- data -------------------------------------------------------------------------------------------
    @property
    def train_segment(self):
        return "train"

    @property
    def default_dirname(self):
        if self.benchmark == "glue":
            return GLUE_COLUMNS[self.name][0]
        if self.benchmark == "superglue":
            return SUPERGLUE_DIRS[self.name]
        return "race"

    def default_data_dir(self):
        if self.benchmark == "race":
            return race_dir()
        names = [self.default_dirname] + list(self.legacy_dirs)
        for name in names:  # the original's directory name first, then this project's earlier one
            if os.path.isdir(default_data_dir(name)):
                return default_data_dir(name)
        return default_data_dir(names[0])

    def has_data(self, segment, data_dir=None):
        """Whether `data_dir` holds the file(s) `read(segment, data_dir)` reads (a test segment may be absent)."""
        data_dir = os.path.expanduser(data_dir or self.default_data_dir())
        if self.benchmark == "race":
            return all(os.path.isdir(os.path.join(data_dir, segment, level)) for level in LEVELS[self.name])
        names = (glue if self.benchmark == "glue" else superglue).SEGMENT_FILES[segment]
        return any(os.path.isfile(os.path.join(data_dir, name)) for name in names)

    def read(self, segment, data_dir=None, cb_expansion=False):
        """Examples of `segment`; `cb_expansion` shortens long CB texts as the original did (--cb_expansion)."""
        data_dir = os.path.expanduser(data_dir or self.default_data_dir())
        if self.benchmark == "glue":
            return read_glue(self.name, segment, data_dir)
        if self.benchmark == "superglue":
            return read_superglue(self.name, segment, data_dir, cb_expansion=cb_expansion)
        return read_race(self.name, segment, data_dir)

    # ---- labels and encoding ----------------------------------------------------------------------------
    def label_index(self, label, where):
        """The class index of a raw label from the data (bools and ints of SuperGLUE included)."""
        key = str(label).lower() if isinstance(label, bool) else str(label)
        if key not in self.labels:
            raise BortError(f"{where}: unknown label {label!r}; expected one of {list(self.labels)}")
        return self.labels.index(key)

    def gold(self, examples):
        """Gold labels in the form `metrics` expects (None when the examples are unlabelled)."""
        if any(e["label"] is None for e in examples):
            return None
        return [self.label_index(e["label"], e["where"]) for e in examples]

    def encode(self, examples, tokenizer, max_len, train=False):
        """Instances of `examples` (each knows its example's position), token sequences of at most `max_len`."""
        encoder = SequenceEncoder(tokenizer, max_len)
        return [inst for i, ex in enumerate(examples) for inst in self.example_instances(i, ex, encoder, train)]

    def example_instances(self, i, ex, encoder, train):
        raise NotImplementedError

    # ---- predictions, metrics, files --------------------------------------------------------------------
    def predict(self, examples, instances, outputs):
        """Per-example predictions from per-instance outputs (array, one row per instance)."""
        return [int(np.argmax(o)) for o in np.asarray(outputs)]

    def metrics(self, preds, labels):
        """Every metric of `metric_names` ({} without labels)."""
        return {"accuracy": M.accuracy(preds, labels)} if labels is not None else {}

    def submission_name(self, segment):
        for seg, stem in self.test_segments:
            if seg == segment:
                stem = stem or self.name
                ext = {"glue": "tsv", "superglue": "jsonl", "race": "json"}[self.benchmark]
                return f"{stem}.{ext}"
        raise BortError(f"{self.name}: no test segment {segment!r}; expected one of "
                        f"{[s for s, _ in self.test_segments]}")

    def output_label(self, pred):
        names = self.output_labels or self.labels
        return names[pred]

    def submission_label(self, pred):
        """The value of one prediction in the leaderboard file."""
        return self.output_label(pred)

    def write_submission(self, preds, examples, out_dir, segment="test", race_format="json"):
        """Write the leaderboard file for `segment` atomically (GLUE: index<TAB>prediction rows; SuperGLUE: JSON
        lines of idx and label); returns its path. `race_format` is RACE's (RaceTask)."""
        path = os.path.join(out_dir, self.submission_name(segment))
        with atomic_write(path) as handle:
            if self.benchmark == "glue":
                handle.write("index\tprediction\n")
                for ex, pred in zip(examples, preds):
                    handle.write(f"{ex['idx']}\t{self.submission_label(pred)}\n")
            else:
                for ex, pred in zip(examples, preds):
                    handle.write(json.dumps({"idx": ex["idx"], "label": self.submission_label(pred)}) + "\n")
        return path


def single_sequence(ex, encoder, span_texts=()):
    """(ids, token spans) of an example's text or text pair; span j lies in text span_texts[j] (0: A, 1: B)."""
    spans = [(span_texts[j],) + tuple(s) for j, s in enumerate(ex.get("spans", []))]
    return encoder(ex["text_a"], ex.get("text_b"), spans)


@dataclasses.dataclass
class ClassificationTask(Task):
    """One sequence per example, one score per class; `span_texts` gives spans (WiC, WSC) to the head."""

    span_texts: tuple = ()  # per span: the text it lies in (0: text_a, 1: text_b)

    kind = "classify"

    @property
    def num_outputs(self):
        return len(self.labels)

    @property
    def num_spans(self):
        return len(self.span_texts)

    def example_instances(self, i, ex, encoder, train):
        ids, token_spans = single_sequence(ex, encoder, self.span_texts)
        target = self.label_index(ex["label"], ex["where"]) if ex["label"] is not None else None
        return [Instance(i, [ids], [token_spans] if self.span_texts else None, target)]

    def metrics(self, preds, labels):
        if labels is None:
            return {}
        out = {"accuracy": M.accuracy(preds, labels)}
        if "f1" in self.metric_names:
            out["f1"] = M.f1(preds, labels)
        if "mcc" in self.metric_names:
            out["mcc"] = M.matthews_corr(preds, labels)
        if "macro_f1" in self.metric_names:
            out["macro_f1"] = M.macro_f1(preds, labels, num_classes=len(self.labels))
        if "gender_parity" in self.metric_names:
            preds = list(preds)  # AX-g: the minimal pairs of lines 2i, 2i+1; a last odd line has no pair
            out["gender_parity"] = M.gender_parity(preds[:len(preds) - len(preds) % 2])
        return out


@dataclasses.dataclass
class RegressionTask(Task):
    """One sequence per example, one real-valued output (STS-B's similarity, 0..5; L2 loss)."""

    metric_names: tuple = ("pearson", "spearman")
    score_metrics: tuple = ("pearson", "spearman")

    kind = "regress"

    def label_index(self, label, where):
        try:
            return float(label)
        except (TypeError, ValueError):
            raise BortError(f"{where}: expected a numeric score, found {label!r}") from None

    def example_instances(self, i, ex, encoder, train):
        ids, _ = single_sequence(ex, encoder)
        target = self.label_index(ex["label"], ex["where"]) if ex["label"] is not None else None
        return [Instance(i, [ids], None, target)]

    def predict(self, examples, instances, outputs):
        return [float(o[0]) for o in np.asarray(outputs)]

    def metrics(self, preds, labels):
        if labels is None:
            return {}
        return {"pearson": M.pearson(preds, labels), "spearman": M.spearman(preds, labels)}

    def submission_label(self, pred):
        return f"{min(5.0, max(0.0, pred)):.3f}"


@dataclasses.dataclass
class MultipleChoiceTask(Task):
    """One sequence per option, one score each (the instance's outputs: one row of `num_choices` scores)."""

    num_choices: int = 0

    kind = "choice"

    def label_index(self, label, where):
        if label not in range(self.num_choices) or isinstance(label, bool):
            raise BortError(f"{where}: expected a label in 0..{self.num_choices - 1}, found {label!r}")
        return int(label)

    def option_sequences(self, ex, encoder):
        """RACE: the pair (article, question + option) per option."""
        return [encoder(ex["text_a"], ex["question"] + " " + c)[0] for c in ex["choices"]]

    def example_instances(self, i, ex, encoder, train):
        target = self.label_index(ex["label"], ex["where"]) if ex["label"] is not None else None
        return [Instance(i, self.option_sequences(ex, encoder), None, target)]

    def submission_label(self, pred):
        return int(pred)


class CopaTask(MultipleChoiceTask):
    """COPA: each option is one text, "premise because|so choice" (the original's phrasing)."""

    def option_sequences(self, ex, encoder):
        joint = " because " if ex["question"] == "cause" else " so "
        return [encoder(ex["premise"] + joint + c[:1].lower() + c[1:])[0] for c in ex["choices"]]


class RaceTask(MultipleChoiceTask):
    """RACE's levels: a JSON {question id: letter}, or with race_format="original" the original's files."""

    def write_submission(self, preds, examples, out_dir, segment="test", race_format="json"):
        """The path written (race_format="original": the original's RACE-H.txt / RACE-M.txt, see
        write_race_original; the last path)."""
        if race_format == "original":
            return write_race_original(preds, examples, out_dir)[-1]
        path = os.path.join(out_dir, self.submission_name(segment))
        with atomic_write(path) as handle:
            json.dump({ex["idx"]: LETTERS[pred] for ex, pred in zip(examples, preds)}, handle, indent=1)
            handle.write("\n")
        return path


def binary_label(label, where):
    if label in (0, 1, True, False) and label is not None:
        return int(label)
    raise BortError(f"{where}: expected an answer label 0 or 1, found {label!r}")


def group_by_example(examples, instances, outputs):
    """Output rows of each example's instances, in example order."""
    grouped = [[] for _ in examples]
    for inst, out in zip(instances, np.asarray(outputs)):
        grouped[inst.example].append(out)
    return grouped


@dataclasses.dataclass
class MultiAnswerTask(Task):
    """MultiRC: one pair (passage, question + answer) per answer option, each classified false/true."""

    metric_names: tuple = ("f1a", "em")
    score_metrics: tuple = ("f1a", "em")

    kind = "answers"
    num_outputs = 2

    def gold(self, examples):
        if any(e["label"] is None for e in examples):
            return None
        return [[binary_label(a["label"], e["where"]) for a in e["answers"]] for e in examples]

    def example_instances(self, i, ex, encoder, train):
        instances = []
        for answer in ex["answers"]:
            ids, _ = encoder(ex["text_a"], ex["question"] + " " + answer["text"])
            target = binary_label(answer["label"], ex["where"]) if answer["label"] is not None else None
            instances.append(Instance(i, [ids], None, target))
        return instances

    def predict(self, examples, instances, outputs):
        return [[int(np.argmax(o)) for o in rows] for rows in group_by_example(examples, instances, outputs)]

    def metrics(self, preds, labels):
        if labels is None:
            return {}
        f1a, em = M.multirc_scores(preds, labels)
        return {"f1a": f1a, "em": em}

    def write_submission(self, preds, examples, out_dir, segment="test", race_format="json"):
        """MultiRC's nested file: one JSON line per passage (see nest_multirc); returns its path."""
        path = os.path.join(out_dir, self.submission_name(segment))
        with atomic_write(path) as handle:
            for record in nest_multirc(preds, examples):
                handle.write(json.dumps(record) + "\n")
        return path


@dataclasses.dataclass
class EntityTask(Task):
    """ReCoRD: one pair (passage, query with the entity) per candidate entity, classified false/true; the
    prediction is the entity with the highest true-minus-false score."""

    metric_names: tuple = ("f1", "em")
    score_metrics: tuple = ("f1", "em")

    kind = "entities"
    num_outputs = 2

    def gold(self, examples):
        if any(e["label"] is None for e in examples):
            return None
        return [e["answers"] for e in examples]

    def example_instances(self, i, ex, encoder, train):
        rows = [(entity, int(entity in (ex["answers"] or []))) for entity in ex["entities"]]
        if train and ex["answers"]:
            rows = semi_balanced(rows)
        labelled = ex["label"] is not None
        return [Instance(i, [encoder(ex["text_a"], ex["query"].replace("@placeholder", entity))[0]], None,
                         target if labelled else None) for entity, target in rows]

    def predict(self, examples, instances, outputs):
        preds = []
        for ex, rows in zip(examples, group_by_example(examples, instances, outputs)):
            scores = [o[1] - o[0] for o in rows]
            preds.append(ex["entities"][int(np.argmax(scores))] if scores else "")
        return preds

    def metrics(self, preds, labels):
        if labels is None:
            return {}
        f1, em = M.record_scores(preds, labels)
        return {"f1": f1, "em": em}

    def submission_label(self, pred):
        return pred


def semi_balanced(rows):
    """The original ReCoRD training set: each positive paired with a negative (all rows when positives dominate)."""
    positives = [r for r in rows if r[1]]
    negatives = [r for r in rows if not r[1]]
    if len(positives) > len(negatives):
        return positives + negatives
    out = []
    for pos, neg in zip(positives, negatives):
        out += [pos, neg]
    return out
