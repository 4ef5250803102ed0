import csv
import json
import os
import subprocess
import sys

import pytest

from bort.agora.grid import read_grid, trials
from bort.errors import BortError

FINETUNE_ARGS = ["--data_dir", "test_data/glue/WNLI", "--pretrained_parameters", "none", "--model_config",
                 "bort_tiny", "--vocab_json", "test_data/vocab/vocab.json", "--merges", "test_data/vocab/merges.txt",
                 "--max_len", "32", "--epochs", "1", "--ramp_up_epochs", "1"]


def agora(out, grid, *extra):
    return subprocess.run([sys.executable, "scripts/agora.py", "--task_name", "WNLI", "--output_dir", str(out),
                           "--grid", str(grid), *extra, "--"] + FINETUNE_ARGS,
                          capture_output=True, text=True, timeout=400)


def test_default_grid_is_the_readme_grid():
    grid = read_grid("scripts/agora_grids/default.json")
    assert grid == {"seed": [0, 1, 2, 3, 4], "lr": [1e-4, 1e-5, 9e-6], "weight_decay": [0, 10, 100, 350],
                    "warmup_ratio": [0.35, 0.40, 0.45, 0.50], "batch_size": [8, 16]}
    assert len(list(trials(grid))) == 5 * 3 * 4 * 4 * 2


def test_bad_grid(tmp_path):
    (tmp_path / "g.json").write_text('{"lr": [1e-4],\n "seed": }')
    with pytest.raises(BortError, match=r"g.json:2: invalid JSON"):
        read_grid(str(tmp_path / "g.json"))


@pytest.mark.slow
def test_two_by_two_grid_with_crash_and_resume(tmp_path):
    grid = tmp_path / "grid.json"
    # batch_size 0 makes finetune_bort.py fail: two trials crash, the search goes on
    grid.write_text(json.dumps({"lr": [1e-4, 1e-3], "batch_size": [8, 0]}))
    out = tmp_path / "agora"
    proc = agora(out, grid)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "4 to run" in proc.stdout
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert [r["status"] for r in rows] == ["done", "done", "failed", "failed"]
    assert all("--batch_size: must be positive" in r["error"] for r in rows[2:])
    scores = [float(r["score"]) for r in rows[:2]]
    assert scores == sorted(scores, reverse=True)
    best = rows[0]["checkpoint"]
    assert os.path.isfile(best) and f"checkpoint={best}" in proc.stdout and "--only_inference" in proc.stdout
    assert (out / "results.md").read_text().count("\n") == 6
    # an interrupted trial: its result is missing; the rerun runs only that trial
    victim = out / rows[1]["trial"]
    os.remove(victim / "result.json")
    stamp = os.path.getmtime(out / rows[0]["trial"] / "result.json")
    proc = agora(out, grid)
    assert "1 to run" in proc.stdout, proc.stdout
    assert (victim / "result.json").is_file()
    assert os.path.getmtime(out / rows[0]["trial"] / "result.json") == stamp
    again = list(csv.DictReader(open(out / "results.csv")))
    assert [r["status"] for r in again] == ["done", "done", "failed", "failed"]
    # the printed --only_inference command runs as printed (it used to drop the flags given after `--`)
    command = [line for line in proc.stdout.splitlines() if line.startswith("predict: ")][-1][len("predict: "):]
    assert "--data_dir test_data/glue/WNLI" in command and "--model_parameters " + again[0]["checkpoint"] in command
    proc = subprocess.run(command, shell=True, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (out / "submission" / "WNLI.tsv").read_text().startswith("index\tprediction\n0\t")
