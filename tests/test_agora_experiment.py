"""experiments/agora_experiment.py on the SST-2 fixture with fake trials (tests/agora_fakes.py): the three arms,
matched budgets, saved per-example predictions and the statistics, in CI time."""
import json

import pytest

import finetune_bort
from agora_fakes import fake_finetune, keyword_labeler
from bort.agora.grid import read_grid
from bort.errors import BortError
from bort.io import read_jsonl
from experiments import agora_experiment
from helpers import VOCAB_FLAGS


def test_grid_control_and_agora_with_matched_budgets(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(finetune_bort, "main", fake_finetune)
    grid = tmp_path / "theta.json"
    grid.write_text(json.dumps({"lr": [1e-3, 1e-4]}))
    out = tmp_path / "exp"
    argv = ["--task_name", "SST-2", "--data_dir", "test_data/glue/SST-2", "--labeler_command",
            keyword_labeler(str(tmp_path)), "--grid", str(grid), "--train_rows", "24", "--seeds", "1,2",
            "--max_rounds", "2", "--variants", "2", "--heldout_fraction", "0.5", "--in_process", "--output_dir",
            str(out), "--", "--max_len", "32", "--epochs", "2", "--ramp_up_epochs", "2"] + VOCAB_FLAGS
    agora_experiment.main(argv)
    report = json.loads((out / "experiment.json").read_text())
    assert [(r["train_rows"], r["seed"]) for r in report["records"]] == [(24, 1), (24, 2)]
    for r in report["records"]:
        agora, grid_arm, control = r["agora"], r["grid"], r["control"]
        assert grid_arm["runs"] == control["runs"] == agora["runs"] == 2 + 1  # the same number of runs ...
        # ... and the same row-epochs up to whole epochs: the grid trains on fewer rows, so for longer
        for arm in (grid_arm, control):
            assert abs(arm["row_epochs"] - agora["row_epochs"]) <= arm["runs"] * (r["train_rows"] + r["generated"])
        assert control["generated"] == r["generated"] > 0
        seed_dir = out / f"rows{r['train_rows']}" / f"seed{r['seed']}"
        status = json.loads(next((seed_dir / "grid").glob("lr*/status.json")).read_text())
        epochs = int(status["command"][status["command"].index("--epochs") + 1])
        assert epochs == round(agora["row_epochs"] / (3 * r["train_rows"]))  # from 2: scaled to Agora's rows
        assert grid_arm["row_epochs"] == 3 * r["train_rows"] * epochs
        control_train = (seed_dir / "control" / "data" / "train.tsv").read_text().splitlines()
        assert len(control_train) == 1 + r["train_rows"] + r["generated"]
        for arm in ("grid_predictions.jsonl", "control_predictions.jsonl", "agora/heldout_predictions.jsonl"):
            assert len(read_jsonl(str(seed_dir / arm))) == 20  # the held-out half of the 40 dev rows
    summary = report["summary"]["24"]
    assert set(summary["comparisons"]) == {"agora-grid", "agora-control", "control-grid"}
    seeds = summary["comparisons"]["agora-grid"]["seeds"]
    assert seeds["n"] == 2 and {"ci_low", "ci_high", "t_p", "sign_p", "mde"} <= set(seeds)
    assert summary["comparisons"]["agora-grid"]["examples"]["examples"] == 40  # pooled over 2 seeds
    table = (out / "experiment.md").read_text()
    assert "| agora |" in table and "McNemar" in table and "Command: `python -m experiments.agora_experiment" in table
    assert "8 or more" in capsys.readouterr().err


def test_grid_trials_extend_the_seeds_and_the_budget_flags_are_checked(tmp_path):
    base = read_grid("scripts/agora_grids/experiment_theta.json")
    names = [n for n, _ in agora_experiment.grid_trials(base, 6)]
    assert len(set(names)) == 6 and names[4].endswith("seed1000")
    assert agora_experiment.scaled_flags(("--epochs", "3", "--ramp_up_epochs=2", "--lr", "1"), 2.5) == \
        ("--lr", "1", "--epochs", "8", "--ramp_up_epochs", "5")
    with pytest.raises(BortError, match="--epochs after it: required"):
        agora_experiment.main(["--task_name", "SST-2", "--data_dir", "x", "--output_dir", str(tmp_path),
                               "--teacher_parameters", "t", "--grid", "g.json", "--", "--lr", "1"])
