"""Agora's trained model (the labeler): anything that gives a task's examples a label, and the gate it must pass.

Three kinds, each with `predict(examples) -> [label index]` (class index; COPA: choice index):
- `CheckpointLabeler`: a task checkpoint finetune_bort.py wrote (same vocabulary as the runs, checked).
- `PredictionsLabeler`: any model's labels, a JSONL file of objects with the example's text fields (text_a and
  text_b; COPA: premise and choices) and `label` (as the task's files spell it, or the class index). Examples are
  matched by their whitespace-normalised text (`bort.agora.generators.example_key`); a missing one is an error.
- `CommandLabeler`: a shell command that reads the examples as JSONL (text fields only) on stdin and writes one
  JSON object `{"label": ...}` per example, in order, on stdout.

`check_labeler` is the gate (issue #21): measured on E only (never the held-out rows), the labeler's official
score (`bort.finetune.tasks.main_score`: MRPC's F1/accuracy mean, CoLA's MCC, ...) must be at least 2/3 *and*
above the score of the best constant (majority-class) labeler, which a constant labeler never is.
"""
import json
import subprocess

import numpy as np

from bort.agora.generators import example_key, text_fields
from bort.errors import BortError
from bort.finetune.tasks import main_score
from bort.io import read_jsonl
from bort.validation import check_vocab_matches

MIN_SCORE = 2.0 / 3.0


class CheckpointLabeler:
    def __init__(self, task, path, tokenizer, max_len, batch_size=32):
        from bort.finetune.checkpoints import load_task_checkpoint

        self.task, self.name, self.tokenizer, self.max_len, self.batch_size = task, path, tokenizer, max_len, \
            batch_size
        self.model = load_task_checkpoint(path, task)
        # a labeler of another vocabulary (Bort for a MiniLM student) would embed the wrong tokens, silently
        check_vocab_matches(self.model.config, tokenizer, path)

    def predict(self, examples):
        from bort.finetune.predict import predict_outputs

        instances = self.task.encode(examples, self.tokenizer, self.max_len)
        outputs = predict_outputs(self.task, self.model, instances, self.tokenizer.pad_id, self.batch_size)
        return [int(p) for p in self.task.predict(examples, instances, outputs)]


def text_only(example):
    """The fields a labeler reads: the texts (and COPA's question), no label, no provenance."""
    return {f: example[f] for f in ("text_a", "text_b", "premise", "choices", "question") if f in example}


class PredictionsLabeler:
    def __init__(self, task, path):
        self.task, self.name, self.labels = task, path, {}
        for number, record in read_jsonl(path):
            where = f"{path}:{number}"
            if "label" not in record:
                raise BortError(f"{where}: field 'label' missing")
            try:
                key = example_key(task, record)
            except (KeyError, IndexError, TypeError, AttributeError):
                raise BortError(f"{where}: expected the example's text fields "
                                f"({', '.join(map(str, text_fields(task, {'text_b': '', 'choices': [0, 0]})))})") \
                    from None
            self.labels[key] = task.label_index(record["label"], where)

    def predict(self, examples):
        out = []
        for ex in examples:
            key = example_key(self.task, ex)
            if key not in self.labels:
                raise BortError(f"{self.name}: no prediction for the example {ex.get('where') or key!r} "
                                f"(--labeler_predictions must cover E and every generated example)")
            out.append(self.labels[key])
        return out


class CommandLabeler:
    def __init__(self, task, command):
        self.task, self.name, self.command = task, command, command

    def predict(self, examples):
        if not examples:
            return []
        lines = "".join(json.dumps(text_only(ex), ensure_ascii=False) + "\n" for ex in examples)
        proc = subprocess.run(self.command, shell=True, input=lines, capture_output=True, text=True)
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1][:300]
            raise BortError(f"--labeler_command: exited with {proc.returncode}: {last}")
        answers = [line for line in proc.stdout.splitlines() if line.strip()]
        if len(answers) != len(examples):
            raise BortError(f"--labeler_command: wrote {len(answers)} lines for {len(examples)} examples")
        out = []
        for number, line in enumerate(answers, 1):
            try:
                label = json.loads(line)["label"]
            except (json.JSONDecodeError, TypeError, KeyError):
                raise BortError(f"--labeler_command: output line {number}: expected {{\"label\": ...}}, found "
                                f"{line[:60]!r}") from None
            out.append(self.task.label_index(label, f"--labeler_command output line {number}"))
        return out


def make_labeler(config, task, tokenizer, max_len):
    """The labeler an AgoraConfig names (exactly one of its three flags is set)."""
    if config.labeler_predictions:
        return PredictionsLabeler(task, config.labeler_predictions)
    if config.labeler_command:
        return CommandLabeler(task, config.labeler_command)
    return CheckpointLabeler(task, config.teacher_parameters, tokenizer, max_len)


def official_score(task, predictions_by_segment, examples_by_segment):
    return main_score(task, {seg: task.metrics(predictions_by_segment[seg], task.gold(examples))
                             for seg, examples in examples_by_segment.items()})


def majority_score(task, examples_by_segment):
    """The official score of the best constant labeler (one class, or one choice, for every example)."""
    classes = sorted({g for examples in examples_by_segment.values() for g in task.gold(examples)})
    scores = [official_score(task, {seg: [c] * len(examples) for seg, examples in examples_by_segment.items()},
                             examples_by_segment) for c in classes]
    return max([s for s in scores if not np.isnan(s)] or [0.0])


def check_labeler(labeler, task, evaluation):
    """(score, majority score) of the labeler on E (`evaluation`: {segment: examples}); one-line BortError unless
    score >= 2/3 and score > the majority class's."""
    predictions = {seg: labeler.predict(examples) for seg, examples in evaluation.items()}
    score = official_score(task, predictions, evaluation)
    majority = majority_score(task, evaluation)
    if np.isnan(score) or not (score >= MIN_SCORE and score > majority):
        raise BortError(f"{labeler.name}: the trained model's official score on E is {score:.4f}; Agora needs >= "
                        f"2/3 and above the majority class's {majority:.4f} (a stronger {task.name} labeler)")
    return score, majority
