"""The task registry: every GLUE, SuperGLUE and RACE task as an instance of its kind's class
(bort.finetune.task_kinds).

API (used by finetune_bort.py, bort/agora/ and the prediction code):

    task = get_task("MRPC")                        # names of the original are accepted too (SST, AXb, RACE-H, ...)
    examples = task.read("dev", data_dir)          # segment names: task.train_segment, task.dev_segments,
                                                   # task.test_segments (segment -> submission file name)
    task.has_data("test", data_dir)                # whether the segment's file is there
    instances = task.encode(examples, tokenizer, max_len, train=False)
    preds = task.predict(examples, instances, outputs)         # outputs: one row of scores per instance
    metrics = task.metrics(preds, task.gold(examples))         # {"accuracy": ..., ...}: every metric of the task
    official_score(task, metrics)                              # the leaderboard's number; model selection uses it
    task.write_submission(preds, examples, out_dir, segment)   # leaderboard file; returns its path

The registry only describes tasks; models, checkpoints and prediction are bort.finetune.checkpoints' and
bort.finetune.predict's, which use this module, never the reverse.
"""
import numpy as np

from bort.errors import BortError
from bort.finetune.task_kinds import (ClassificationTask, CopaTask, EntityTask, MultiAnswerTask, RaceTask,
                                      RegressionTask, Task)


def _glue(name, labels=("0", "1"), **kw):
    return ClassificationTask(name, "glue", labels=labels, **kw)


def _superglue(name, labels=("false", "true"), **kw):
    return ClassificationTask(name, "superglue", labels=labels, **kw)


ENTAIL2 = ("not_entailment", "entailment")
NLI3 = ("neutral", "entailment", "contradiction")
TASKS = {t.name: t for t in [
    _glue("CoLA", metric_names=("accuracy", "mcc"), score_metrics=("mcc",)),
    _glue("SST-2", aliases=("SST",)),
    _glue("MRPC", metric_names=("accuracy", "f1"), score_metrics=("f1", "accuracy")),
    RegressionTask("STS-B", "glue"),
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
    CopaTask("COPA", "superglue", num_choices=2),
    MultiAnswerTask("MultiRC", "superglue"),
    EntityTask("ReCoRD", "superglue"),
    _superglue("SuperGLUE-RTE", labels=ENTAIL2, test_segments=(("test", "RTE"),), aliases=("SuperGLUERTE",)),
    _superglue("WiC", span_texts=(0, 1)),  # the word in each sentence
    _superglue("WSC", span_texts=(0, 0), output_labels=("False", "True")),  # noun phrase and pronoun, one text
    _superglue("AX-b", labels=ENTAIL2, metric_names=("accuracy", "mcc"), score_metrics=("mcc",), dev_segments=(),
               test_segments=(("AX-b", "AX-b"),), model_task="SuperGLUE-RTE", aliases=("AXb", "superglue_ax_b"),
               legacy_dirs=("superglue_axb",)),
    _superglue("AX-g", labels=ENTAIL2, metric_names=("accuracy", "gender_parity"), dev_segments=(),
               test_segments=(("AX-g", "AX-g"),), model_task="SuperGLUE-RTE", aliases=("AXg", "superglue_ax_g"),
               legacy_dirs=("superglue_axg",)),
    RaceTask("RACE-M", "race", num_choices=4, aliases=("RACE-middle",)),
    RaceTask("RACE-H", "race", num_choices=4, aliases=("RACE-high",)),
    RaceTask("RACE", "race", num_choices=4, aliases=("RACE-all",)),
]}
ALIASES = {alias: t.name for t in TASKS.values() for alias in t.aliases}
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
