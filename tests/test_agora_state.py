"""Agora's driver on fake trials (a stand-in for finetune_bort.main that writes a real tiny task checkpoint and a
result set in a blink): rounds, both pruning rules, a replay and resume in CI time, and the trust it puts in what
it finds on disk (issue #24, item 3): commands, checksums, paths and the structure of every state file."""
import json
import os

import bort  # noqa: F401
import pytest

import finetune_bort
from agora_fakes import fake_finetune, keyword_labeler
from bort.agora.options import AgoraConfig
from bort.agora.rounds import Agora, run_agora
from bort.errors import BortError
from bort.finetune.tasks import get_task
from bort.io import file_sha256
from helpers import VOCAB_FLAGS

SST2 = "test_data/glue/SST-2"


@pytest.fixture
def fake_trials(monkeypatch):
    monkeypatch.setattr(finetune_bort, "main", fake_finetune)


@pytest.fixture
def gold_labels(tmp_path):
    """An external labeler (a command) that gets the SST-2 fixture right from its keywords."""
    return keyword_labeler(tmp_path)


def config(tmp_path, labeler, theta=None, extra=(), **fields):
    grid = tmp_path / "theta.json"
    grid.write_text(json.dumps(theta or {"lr": [1e-3, 1e-4], "seed": [0, 1]}))
    fields = dict(dict(in_process=True, max_rounds=3, variants=1, heldout_fraction=0.25), **fields)
    return AgoraConfig("SST-2", str(tmp_path / "agora"), labeler_command=labeler, grid=str(grid),
                       finetune_args=("--data_dir", SST2, "--max_len", "32") + tuple(VOCAB_FLAGS) + tuple(extra),
                       **fields)


def rounds(out):
    return [json.loads((out / f"round_0{k}" / "round.json").read_text()) for k in (1, 2, 3)
            if (out / f"round_0{k}" / "round.json").exists()]


@pytest.mark.parametrize("rule, runs", [("prefix", [4, 2, 1]), ("best", [4, 3, 1])])
def test_rounds_prune_by_either_rule(tmp_path, fake_trials, gold_labels, capsys, rule, runs):
    result = run_agora(config(tmp_path, gold_labels, prune_rule=rule))
    out = tmp_path / "agora"
    assert [r["runs"] for r in rounds(out)] == runs and result["prune_rule"] == rule
    # best rule: lr1e-3/seed1 is best; lr1e-3/seed0 shares the longest prefix with it and goes first
    if rule == "best":
        assert rounds(out)[1]["theta"] == ["lr0.001_seed1", "lr0.0001_seed1", "lr0.0001_seed0"]
    split = json.loads((out / "split.json").read_text())["segments"]["dev"]
    assert not set(split["E_generation"]) & set(split["E_selection"])
    assert sorted(split["E_generation"] + split["E_selection"]) == sorted(split["E"])
    # the runs' dev set (epoch and trial selection) is E_sel only; mistakes are rows of E_gen
    dev_rows = get_task("SST-2").read("dev", str(out / "round_01" / "data"))
    assert len(dev_rows) == len(split["E_selection"]) and len(split["E_generation"]) > 0
    assert result["row_runs"] == sum(r["runs"] * r["train_size"] for r in rounds(out))
    held = [json.loads(x) for x in (out / "heldout_predictions.jsonl").read_text().splitlines()]
    assert len(held) == len(split["heldout"]) and {"label", "prediction", "where"} <= set(held[0])


def test_replay_and_resume_after_an_interrupted_round(tmp_path, fake_trials, gold_labels, capsys):
    cfg = config(tmp_path, gold_labels, replay_margin=1.0)  # every round falls short of the last: one replay each
    first = run_agora(cfg)
    out = tmp_path / "agora"
    assert (out / "round_02.replay1").is_dir() and first["runs"] == 4 + 2 + 2 + 1 + 1
    second = rounds(out)[1]
    os.remove(out / "round_02" / "round.json")
    os.remove(out / "round_02" / second["theta"][1] / "result.json")
    capsys.readouterr()
    again = run_agora(cfg)
    printed = capsys.readouterr().out
    assert "resuming after round 1" in printed and "2 trials, 1 already recorded, 1 to run" in printed
    assert again["best"] == first["best"]


def test_a_rerun_with_other_flags_is_refused_or_reruns_with_consent(tmp_path, fake_trials, gold_labels, capsys):
    run_agora(config(tmp_path, gold_labels, max_rounds=1))
    os.remove(tmp_path / "agora" / "round_01" / "round.json")  # the round is rerun, its trials are looked at
    other = config(tmp_path, gold_labels, max_rounds=1, extra=("--epochs", "7"))
    with pytest.raises(BortError, match="recorded trial not reused: it was run with another command.*--rerun_changed"):
        run_agora(other)
    capsys.readouterr()
    run_agora(config(tmp_path, gold_labels, max_rounds=1, extra=("--epochs", "7"), rerun_changed=True))
    assert "4 trials, 0 already recorded, 4 to run" in capsys.readouterr().out


RESULT = "round_01/lr0.001_seed1/result.json"  # round 1's best trial
DAMAGE = [  # (file, change of its JSON or its new text, the error's words); each is undone before the next
    (RESULT, lambda r: r.update(score=0.99), "its result.json changed after the trial wrote it"),
    ("round_01/lr0.001_seed1/model_bort_SST-2.task.json", "{}", "its result set changed"),
    (RESULT, lambda r: r.update(checkpoint="/etc/passwd"), "lies outside"),  # checksum forged too, below
    ("round_01/round.json", lambda r: r.update(round_best_trial="../../elsewhere"), "field 'round_best_trial'"),
    ("round_01/round.json", lambda r: r.update(round_best_score="0.9"), "field 'round_best_score': expected a number"),
    ("round_01/round.json", lambda r: r.pop("next_theta"), "field 'next_theta' missing"),
    ("round_01/round.json", lambda r: r.update(mistake_rows=[["dev", 999]]), "field 'mistake_rows'"),
    ("round_01/round.json", '{"round": 1, "theta": [', "round.json:1: invalid JSON"),
    ("round_01/round.json", "[1, 2]", "round.json: expected a JSON object, found list"),
    ("round_01/lr0.001_seed1/status.json", lambda r: r.update(command={"a": 1}), "field 'command': expected a list"),
    ("round_01/lr0.001_seed1/status.json", '{"status": "do', "status.json:1: invalid JSON"),
    ("agora_state.json", lambda r: r.update(replays=[1]), "field 'replays': expected an object"),
    ("round_01/generated.jsonl", '{"text_a": "x", "label": "1"}\n{"text_a": "y", "lab', "generated.jsonl:2: invalid"),
    ("round_01/generated.jsonl", '{"text_a": 5, "label": "1"}\n', "generated.jsonl:1: expected text"),
    ("round_01/generated.jsonl", '{"text_a": "x", "label": "7"}\n', "generated.jsonl:1: unknown label"),
]


def test_damaged_state_files_are_one_line_errors(tmp_path, fake_trials, gold_labels, capsys):
    """Edited, forged, truncated or mistyped state files: each a one-line error naming the file (and the field),
    on resume of a finished round and on the rerun of an unfinished one (they gave tracebacks or were trusted)."""
    cfg = config(tmp_path, gold_labels, max_rounds=2)
    run_agora(cfg)
    out = tmp_path / "agora"
    for name, change, message in DAMAGE:
        path = out / name
        saved = {p: p.read_bytes() for p in (path, path.parent / "status.json") if p.exists()}
        if isinstance(change, str):
            path.write_text(change)
        else:
            record = json.loads(path.read_text())
            change(record)
            path.write_text(json.dumps(record))
        if "outside" in message:  # a thorough forger updates the recorded checksum too
            status = path.parent / "status.json"
            status.write_text(json.dumps(dict(json.loads(status.read_text()), result_sha256=file_sha256(str(path)))))
        with pytest.raises(BortError, match=message) as error:
            Agora(cfg).run()
        assert str(path.parent) in str(error.value) and "\n" not in str(error.value), (name, message)
        if name.startswith("round_01/lr"):  # the same damage in a trial of a round that is rerun
            round_record = (out / "round_01" / "round.json").read_bytes()
            os.remove(out / "round_01" / "round.json")
            with pytest.raises(BortError, match=message):
                Agora(cfg).run()
            (out / "round_01" / "round.json").write_bytes(round_record)
        for p, data in saved.items():
            p.write_bytes(data)
    Agora(cfg).run()  # every file restored: the run is trusted again
