"""Agora's labeler: the gate (official score on E, above the majority class), external labelers (a predictions
file keyed by text, a command), and Θ's two pruning rules with their round counts on the paper's grid."""
import json
import sys

import pytest

from bort.agora.grid import read_grid, trials
from bort.agora.labelers import CommandLabeler, PredictionsLabeler, check_labeler, majority_score
from bort.agora.pruning import prune, round_count_summary, round_counts
from bort.errors import BortError
from bort.finetune.tasks import get_task


def pairs(labels):
    return [{"text_a": f"first {i}", "text_b": f"second {i}", "label": str(y), "where": f"dev.tsv:{i + 2}"}
            for i, y in enumerate(labels)]


def labels_file(path, examples, labels):
    path.write_text("".join(json.dumps({"text_a": x["text_a"], "text_b": x["text_b"], "label": str(y)}) + "\n"
                            for x, y in zip(examples, labels)))
    return str(path)


def test_a_constant_labeler_fails_the_gate_that_raw_accuracy_passed(tmp_path):
    """MRPC-like E with 70 % of one class: a constant labeler has accuracy 0.70 >= 2/3 (the old gate passed it)
    but only ties the majority class's official score (mean of F1 and accuracy)."""
    task = get_task("MRPC")
    gold = [1] * 7 + [0] * 3
    evaluation = {"dev": pairs(gold)}
    assert majority_score(task, evaluation) == pytest.approx((0.7 + 2 * 7 / (7 + 10)) / 2)
    constant = PredictionsLabeler(task, labels_file(tmp_path / "c.jsonl", evaluation["dev"], [1] * 10))
    with pytest.raises(BortError, match=r"c.jsonl: the trained model's official score on E is 0.7618; Agora needs "
                                        r">= 2/3 and above the majority class's 0.7618"):
        check_labeler(constant, task, evaluation)
    good = PredictionsLabeler(task, labels_file(tmp_path / "g.jsonl", evaluation["dev"], [1] * 7 + [0, 0, 1]))
    score, majority = check_labeler(good, task, evaluation)
    assert score == pytest.approx((0.9 + 2 * 7 / (7 + 8)) / 2) and majority < score
    cola = get_task("CoLA")  # MCC: a constant labeler scores 0 whatever the class balance
    sentences = [dict(x, text_b=None) for x in evaluation["dev"]]
    with pytest.raises(BortError, match="official score on E is 0.0000"):
        check_labeler(PredictionsLabeler(cola, labels_file(tmp_path / "k.jsonl", sentences, [1] * 10)), cola,
                      {"dev": sentences})


def test_predictions_file_is_keyed_by_text_and_must_cover_the_examples(tmp_path):
    task = get_task("MRPC")
    examples = pairs([1, 0])
    labeler = PredictionsLabeler(task, labels_file(tmp_path / "p.jsonl", examples, [0, 1]))
    spaced = dict(examples[1], text_a="  first   1 ")  # matched by whitespace-normalised text
    assert labeler.predict([examples[0], spaced]) == [0, 1]
    with pytest.raises(BortError, match="p.jsonl: no prediction for the example 'x'"):
        labeler.predict([dict(examples[0], text_a="unseen", where="x")])
    (tmp_path / "bad.jsonl").write_text('{"text_a": "a", "text_b": "b", "label": "maybe"}\n')
    with pytest.raises(BortError, match="bad.jsonl:1: unknown label 'maybe'"):
        PredictionsLabeler(task, str(tmp_path / "bad.jsonl"))


def test_command_labeler_reads_examples_on_stdin_and_labels_on_stdout(tmp_path):
    task = get_task("MRPC")
    script = tmp_path / "label.py"
    script.write_text("import json, sys\nfor line in sys.stdin:\n"
                      "    x = json.loads(line)\n    assert 'label' not in x and 'where' not in x\n"
                      "    print(json.dumps({'label': '1' if x['text_a'].endswith('1') else '0'}))\n")
    labeler = CommandLabeler(task, f"{sys.executable} {script}")
    assert labeler.predict(pairs([0, 0, 0])) == [0, 1, 0] and labeler.predict([]) == []
    with pytest.raises(BortError, match="--labeler_command: exited with 3: oops"):
        CommandLabeler(task, f"{sys.executable} -c \"import sys; sys.exit('oops') if 0 else (print('oops', "
                             f"file=sys.stderr), sys.exit(3))\"").predict(pairs([0]))
    with pytest.raises(BortError, match="wrote 0 lines for 1 examples"):
        CommandLabeler(task, "true").predict(pairs([0]))


# ---- Θ: both pruning rules --------------------------------------------------------------------------------------
def theta(scores):
    return [(f"lr{lr}_seed{seed}", {"lr": lr, "seed": seed}, scores[i])
            for i, (lr, seed) in enumerate([(lr, seed) for lr in (1, 2) for seed in (0, 1)])]


def test_best_rule_removes_the_sets_sharing_the_longest_prefix_with_the_best():
    kept = prune(theta([0.5, 0.7, 0.9, 0.6]), "best")  # best lr2_seed0; lr2_seed1 shares "lr2" with it
    assert [name for name, _, _ in kept] == ["lr2_seed0", "lr1_seed1", "lr1_seed0"]
    kept = prune(kept, "best")  # nothing shares a value with the best any more: all but the best go
    assert [name for name, _, _ in kept] == ["lr2_seed0"] and prune(kept, "best") == []


def test_round_counts_of_both_rules_on_the_papers_grid():
    """The numbers docs/agora.md states for the original README's 480-set grid (seed first in its key order)."""
    settings = list(trials(read_grid("scripts/agora_grids/default.json")))
    stable = {name: i for i, (name, _) in enumerate(settings)}
    by_rank = lambda k, names: [-stable[n] for n in names]  # noqa: E731
    assert round_counts(settings, "prefix", by_rank) == (6, 480 + 240 + 60 + 15 + 5 + 1)
    assert round_counts(settings, "best", by_rank) == (6, 480 + 479 + 473 + 449 + 385 + 1)
    summary = round_count_summary(settings, seeds=2)
    assert summary["prefix"]["random"]["rounds_max"] == 6 and summary["best"]["random"]["rounds_min"] > 100
