"""The task registry: every GLUE, SuperGLUE and RACE task as one `Task` entry.

API (used by finetune_bort.py, scripts/agora.py and prediction scripts):

    task = get_task("MRPC")                        # names of the original are accepted too (SST, AXb, RACE-H, ...)
    examples = task.read("dev", data_dir)          # segment names: task.train_segment, task.dev_segments,
                                                   # task.test_segments (segment -> submission file name)
    instances = task.encode(examples, tokenizer, max_len, train=False)
    preds = task.predict(examples, instances, outputs)         # outputs: one row of scores per instance
    metrics = task.metrics(preds, task.gold(examples))         # {"accuracy": ..., ...}: every metric of the task
    official_score(task, metrics)                              # the leaderboard's number; model selection uses it
    task.write_submission(preds, examples, out_dir, segment)   # leaderboard file; returns its path

The registry only describes tasks; models, checkpoints and prediction are bort.finetune.loop's (`build_task_model`,
`load_task_checkpoint`, `predict_outputs`), which uses this module, never the reverse.

Encoding follows the original Bort fine-tuning: `<s> A </s>` for one text and `<s> A </s> B </s>` for a pair
(one separator, as its `concat_sequences`), both texts truncated to equal shares of `max_len` (bort/text/encoding.py).
Kinds of task:

- classify / regress: one sequence per example (STS-B: one output, L2 loss).
- choice (COPA, RACE): one sequence per option, one score each, softmax over the options. COPA's option is
  "premise because|so choice" (the original's phrasing); RACE's is the pair (article, question + option).
- answers (MultiRC): one pair (passage, question + answer) per answer option, classified true/false.
- entities (ReCoRD): one pair (passage, query with @placeholder replaced by the entity) per candidate entity,
  classified true/false; the prediction is the candidate with the highest score. Training uses the original's
  semi-balanced set (positives paired with as many negatives).
- spans (WiC, WSC): pairs plus the mean of the span tokens in the head (see bort/finetune/heads.py).
"""
import dataclasses
import json
import os

import numpy as np

from data.glue import GLUE_COLUMNS, default_data_dir, read_glue
from data.race import LETTERS, race_dir, read_race
from data.superglue import SUPERGLUE_DIRS, read_superglue

from bort.finetune import metrics as M
from bort.errors import BortError
from bort.text.encoding import SequenceEncoder, truncate_equal  # noqa: F401  (part of this module's API)
from bort.io import atomic_write

CLASSIFY, REGRESS, CHOICE, ANSWERS, ENTITIES = "classify", "regress", "choice", "answers", "entities"


@dataclasses.dataclass
class Instance:
    """One training/prediction unit: K token sequences (K > 1 for multiple choice), spans, a target."""

    example: int
    seqs: list
    spans: list = None  # per sequence: [(start, end), ...] token positions
    target: float = None


@dataclasses.dataclass
class Task:
    name: str
    benchmark: str  # glue, superglue, race
    kind: str
    labels: tuple = ()  # class names as they appear in the data (classify)
    output_labels: tuple = ()  # label strings written to the leaderboard file, same order (default: labels)
    num_spans: int = 0
    num_choices: int = 0
    metric_names: tuple = ("accuracy",)  # every metric computed and logged
    score_metrics: tuple = ("accuracy",)  # the official score is their mean (see official_score)
    dev_segments: tuple = ("dev",)
    test_segments: tuple = (("test", None),)  # (segment, submission file stem)
    model_task: str = None  # diagnostics are predicted with this task's checkpoint
    aliases: tuple = ()

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
        names = [self.default_dirname] + list(LEGACY_DIRS.get(self.name, ()))
        for name in names:  # the original's directory name first, then this project's earlier one
            if os.path.isdir(default_data_dir(name)):
                return default_data_dir(name)
        return default_data_dir(names[0])

    def read(self, segment, data_dir=None, cb_expansion=False):
        """Examples of `segment`; `cb_expansion` shortens long CB texts as the original did (--cb_expansion)."""
        data_dir = os.path.expanduser(data_dir or self.default_data_dir())
        if self.benchmark == "glue":
            examples = read_glue(self.name, segment, data_dir)
        elif self.benchmark == "superglue":
            examples = read_superglue(self.name, segment, data_dir, cb_expansion=cb_expansion)
        else:
            examples = read_race(self.name, segment, data_dir)
        return examples

    @property
    def num_outputs(self):
        if self.kind == CLASSIFY:
            return len(self.labels)
        if self.kind in (ANSWERS, ENTITIES):
            return 2
        return 1

    # ---- labels -----------------------------------------------------------------------------------------
    def label_index(self, label, where):
        """The class index of a raw label from the data (bools and ints of SuperGLUE included)."""
        if self.kind == REGRESS:
            try:
                return float(label)
            except (TypeError, ValueError):
                raise BortError(f"{where}: expected a numeric score, found {label!r}") from None
        if self.kind == CHOICE:
            if label not in range(self.num_choices) or isinstance(label, bool):
                raise BortError(f"{where}: expected a label in 0..{self.num_choices - 1}, found {label!r}")
            return int(label)
        key = str(label).lower() if isinstance(label, bool) else str(label)
        if key not in self.labels:
            raise BortError(f"{where}: unknown label {label!r}; expected one of {list(self.labels)}")
        return self.labels.index(key)

    def gold(self, examples):
        """Gold labels in the form `metrics` expects (None when the examples are unlabelled)."""
        if any(e["label"] is None for e in examples):
            return None
        if self.kind == ANSWERS:
            return [[self._binary(a["label"], e["where"]) for a in e["answers"]] for e in examples]
        if self.kind == ENTITIES:
            return [e["answers"] for e in examples]
        return [self.label_index(e["label"], e["where"]) for e in examples]

    @staticmethod
    def _binary(label, where):
        if label in (0, 1, True, False) and label is not None:
            return int(label)
        raise BortError(f"{where}: expected an answer label 0 or 1, found {label!r}")

    # ---- encoding ---------------------------------------------------------------------------------------
    def encode(self, examples, tokenizer, max_len, train=False):
        encoder = SequenceEncoder(tokenizer, max_len)
        instances = []
        for i, ex in enumerate(examples):
            labelled = ex["label"] is not None
            if self.kind in (CLASSIFY, REGRESS):
                spans = [(0,) + tuple(s) if j == 0 or self.name == "WSC" else (1,) + tuple(s)
                         for j, s in enumerate(ex.get("spans", []))]
                ids, token_spans = encoder(ex["text_a"], ex.get("text_b"), spans)
                target = self.label_index(ex["label"], ex["where"]) if labelled else None
                instances.append(Instance(i, [ids], [token_spans] if spans else None, target))
            elif self.kind == CHOICE:
                if self.name == "COPA":
                    joint = " because " if ex["question"] == "cause" else " so "
                    seqs = [encoder(ex["premise"] + joint + c[:1].lower() + c[1:])[0] for c in ex["choices"]]
                else:
                    seqs = [encoder(ex["text_a"], ex["question"] + " " + c)[0] for c in ex["choices"]]
                target = self.label_index(ex["label"], ex["where"]) if labelled else None
                instances.append(Instance(i, seqs, None, target))
            elif self.kind == ANSWERS:
                for answer in ex["answers"]:
                    ids, _ = encoder(ex["text_a"], ex["question"] + " " + answer["text"])
                    target = self._binary(answer["label"], ex["where"]) if answer["label"] is not None else None
                    instances.append(Instance(i, [ids], None, target))
            elif self.kind == ENTITIES:
                rows = [(entity, int(entity in (ex["answers"] or []))) for entity in ex["entities"]]
                if train and ex["answers"]:
                    rows = semi_balanced(rows)
                for entity, target in rows:
                    ids, _ = encoder(ex["text_a"], ex["query"].replace("@placeholder", entity))
                    instances.append(Instance(i, [ids], None, target if labelled else None))
        return instances

    # ---- predictions, metrics, files --------------------------------------------------------------------
    def predict(self, examples, instances, outputs):
        """Per-example predictions from per-instance outputs (array, one row per instance)."""
        outputs = np.asarray(outputs)
        if self.kind == REGRESS:
            return [float(o[0]) for o in outputs]
        if self.kind in (CLASSIFY, CHOICE):
            return [int(np.argmax(o)) for o in outputs]
        grouped = [[] for _ in examples]
        for inst, out in zip(instances, outputs):
            grouped[inst.example].append(out)
        if self.kind == ANSWERS:
            return [[int(np.argmax(o)) for o in rows] for rows in grouped]
        preds = []
        for ex, rows in zip(examples, grouped):
            scores = [o[1] - o[0] for o in rows]
            preds.append(ex["entities"][int(np.argmax(scores))] if scores else "")
        return preds

    def metrics(self, preds, labels):
        if labels is None:
            return {}
        if self.kind == REGRESS:
            return {"pearson": M.pearson(preds, labels), "spearman": M.spearman(preds, labels)}
        if self.kind == ANSWERS:
            f1a, em = M.multirc_scores(preds, labels)
            return {"f1a": f1a, "em": em}
        if self.kind == ENTITIES:
            f1, em = M.record_scores(preds, labels)
            return {"f1": f1, "em": em}
        out = {"accuracy": M.accuracy(preds, labels)}
        if "f1" in self.metric_names:
            out["f1"] = M.f1(preds, labels)
        if "mcc" in self.metric_names:
            out["mcc"] = M.matthews_corr(preds, labels)
        if "macro_f1" in self.metric_names:
            out["macro_f1"] = M.macro_f1(preds, labels, num_classes=len(self.labels))
        if "gender_parity" in self.metric_names:
            out["gender_parity"] = M.gender_parity(preds)
        return out

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

    def write_submission(self, preds, examples, out_dir, segment="test", race_format="json"):
        """Write the leaderboard file for `segment` atomically; returns its path (RACE with
        race_format="original": the original's RACE-H.txt / RACE-M.txt, see write_race_original; the last path)."""
        if self.benchmark == "race" and race_format == "original":
            return write_race_original(preds, examples, out_dir)[-1]
        path = os.path.join(out_dir, self.submission_name(segment))
        with atomic_write(path) as handle:
            if self.benchmark == "glue":
                handle.write("index\tprediction\n")
                for ex, pred in zip(examples, preds):
                    value = f"{min(5.0, max(0.0, pred)):.3f}" if self.kind == REGRESS else self.output_label(pred)
                    handle.write(f"{ex['idx']}\t{value}\n")
            elif self.benchmark == "race":
                json.dump({ex["idx"]: LETTERS[pred] for ex, pred in zip(examples, preds)}, handle, indent=1)
                handle.write("\n")
            elif self.kind == ANSWERS:
                for record in nest_multirc(preds, examples):
                    handle.write(json.dumps(record) + "\n")
            else:
                for ex, pred in zip(examples, preds):
                    if self.kind == ENTITIES:
                        label = pred
                    elif self.kind == CHOICE:
                        label = int(pred)
                    else:
                        label = self.output_label(pred)
                    handle.write(json.dumps({"idx": ex["idx"], "label": label}) + "\n")
        return path


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


def _glue(name, kind=CLASSIFY, labels=("0", "1"), **kw):
    return Task(name, "glue", kind, labels=labels, **kw)


def _superglue(name, kind=CLASSIFY, labels=("false", "true"), **kw):
    return Task(name, "superglue", kind, labels=labels, **kw)


ENTAIL2 = ("not_entailment", "entailment")
NLI3 = ("neutral", "entailment", "contradiction")
TASKS = {t.name: t for t in [
    _glue("CoLA", metric_names=("accuracy", "mcc"), score_metrics=("mcc",)),
    _glue("SST-2", aliases=("SST",)),
    _glue("MRPC", metric_names=("accuracy", "f1"), score_metrics=("f1", "accuracy")),
    _glue("STS-B", kind=REGRESS, labels=(), metric_names=("pearson", "spearman"),
          score_metrics=("pearson", "spearman")),
    _glue("QQP", metric_names=("accuracy", "f1"), score_metrics=("f1", "accuracy")),
    _glue("MNLI", labels=NLI3, dev_segments=("dev_matched", "dev_mismatched"),
          test_segments=(("test_matched", "MNLI-m"), ("test_mismatched", "MNLI-mm"))),
    _glue("QNLI", labels=ENTAIL2),
    _glue("RTE", labels=ENTAIL2),
    _glue("WNLI"),
    _glue("AX", labels=NLI3, metric_names=("accuracy", "mcc"), score_metrics=("mcc",), dev_segments=(),
          test_segments=(("diagnostic", "AX"),), model_task="MNLI"),
    _superglue("BoolQ"),
    _superglue("CB", labels=NLI3, metric_names=("accuracy", "macro_f1"), score_metrics=("accuracy", "macro_f1")),
    _superglue("COPA", kind=CHOICE, labels=(), num_choices=2),
    _superglue("MultiRC", kind=ANSWERS, labels=(), metric_names=("f1a", "em"), score_metrics=("f1a", "em")),
    _superglue("ReCoRD", kind=ENTITIES, labels=(), metric_names=("f1", "em"), score_metrics=("f1", "em")),
    _superglue("SuperGLUE-RTE", labels=ENTAIL2, test_segments=(("test", "RTE"),), aliases=("SuperGLUERTE",)),
    _superglue("WiC", num_spans=2),
    _superglue("WSC", num_spans=2, output_labels=("False", "True")),
    _superglue("AX-b", labels=ENTAIL2, metric_names=("accuracy", "mcc"), score_metrics=("mcc",), dev_segments=(),
               test_segments=(("AX-b", "AX-b"),), model_task="SuperGLUE-RTE", aliases=("AXb", "superglue_ax_b")),
    _superglue("AX-g", labels=ENTAIL2, metric_names=("accuracy", "gender_parity"), dev_segments=(),
               test_segments=(("AX-g", "AX-g"),), model_task="SuperGLUE-RTE", aliases=("AXg", "superglue_ax_g")),
    Task("RACE-M", "race", CHOICE, num_choices=4, aliases=("RACE-middle",)),
    Task("RACE-H", "race", CHOICE, num_choices=4, aliases=("RACE-high",)),
    Task("RACE", "race", CHOICE, num_choices=4, aliases=("RACE-all",)),
]}
ALIASES = {alias: t.name for t in TASKS.values() for alias in t.aliases}
# Earlier default directories under $MXNET_HOME/datasets, still found (the original's names come first).
LEGACY_DIRS = {"AX-b": ("superglue_axb",), "AX-g": ("superglue_axg",)}
# Diagnostics written after the test files of the task whose model predicts them.
DIAGNOSTICS = {"MNLI": ("AX",), "SuperGLUE-RTE": ("AX-b", "AX-g")}


def task_names():
    return sorted(TASKS) + sorted(ALIASES)


def get_task(name):
    name = ALIASES.get(name, name)
    if name not in TASKS:
        raise BortError(f"unknown task {name!r}; expected one of {', '.join(sorted(TASKS))}")
    return TASKS[name]


def official_score(task, metrics):
    """The leaderboard's score of one segment's metrics: the mean of the task's official metrics (MRPC and QQP:
    F1 and accuracy; STS-B: Pearson and Spearman; CB: accuracy and macro-F1; MultiRC: F1a and EM; ReCoRD: F1 and
    EM; CoLA, AX, AX-b: Matthews correlation; the others: accuracy). NaN when one of them is missing."""
    task = task if isinstance(task, Task) else get_task(task)
    if not all(name in metrics for name in task.score_metrics):
        return float("nan")
    return float(np.mean([metrics[name] for name in task.score_metrics]))


def main_score(task, metrics_by_segment):
    """The number model selection (and the Agora grid, through result.json's "score") maximizes: the official
    score, averaged over the dev segments (MNLI matched and mismatched)."""
    values = [official_score(task, m) for m in metrics_by_segment.values()]
    values = [v for v in values if not np.isnan(v)]
    return float(np.mean(values)) if values else float("nan")


def read_options(args):
    """Keyword arguments of `Task.read` from fine-tuning flags (finetune_bort.py --cb_expansion)."""
    return {"cb_expansion": bool(getattr(args, "cb_expansion", False))}


def submission_options(args):
    """Keyword arguments of `Task.write_submission` from fine-tuning flags (--race_submission_format)."""
    return {"race_format": getattr(args, "race_submission_format", None) or "json"}
