import csv
import json
import logging
import os
import subprocess
import sys
import time

import pytest

import finetune_bort
from bort.agora import grid
from bort.agora.grid import TrialRunner, read_grid, trials
from bort.agora.options import AgoraConfig
from bort.errors import BortError
from bort.runtime import process_alive

FINETUNE_ARGS = ["--data_dir", "test_data/glue/WNLI", "--pretrained_parameters", "none", "--model_config",
                 "bort_tiny", "--vocab_json", "test_data/vocab/vocab.json", "--merges", "test_data/vocab/merges.txt",
                 "--max_len", "32", "--epochs", "1", "--ramp_up_epochs", "1"]


def agora(out, grid, *extra):
    return subprocess.run([sys.executable, "scripts/agora.py", "--task_name", "WNLI", "--output_dir", str(out),
                           "--grid", str(grid), *extra, "--"] + FINETUNE_ARGS,
                          capture_output=True, text=True, timeout=400)


def test_default_grid_is_the_papers_grid():
    grid = read_grid("scripts/agora_grids/default.json")
    assert grid == {"seed": [0, 1, 2, 3, 4], "lr": [1e-4, 1e-5, 9e-6], "weight_decay": [0, 10, 100, 350],
                    "warmup_ratio": [0.35, 0.40, 0.45, 0.50], "batch_size": [8, 16]}
    assert len(list(trials(grid))) == 5 * 3 * 4 * 4 * 2


def test_bad_grid(tmp_path):
    (tmp_path / "g.json").write_text('{"lr": [1e-4],\n "seed": }')
    with pytest.raises(BortError, match=r"g.json:2: invalid JSON"):
        read_grid(str(tmp_path / "g.json"))


def test_agora_config_checks_its_settings():
    with pytest.raises(BortError, match="--teacher_parameters: required"):
        AgoraConfig("RTE", "out", teacher_parameters=None)
    with pytest.raises(BortError, match="--max_replays non-negative"):
        AgoraConfig("RTE", "out", "t.params", max_replays=-1)
    with pytest.raises(BortError, match="one trial at a time"):
        TrialRunner("RTE", gpus=(0, 1), in_process=True)


def test_in_process_trials_are_recorded_as_processes(tmp_path, monkeypatch):
    """A trial run in this process: the exit status finetune_bort.py would have (2 after a one-line error, 1 after
    an exception), its output in log.txt and not here, its folder locked against other runs while it runs."""
    runner = TrialRunner("WNLI", tuple(FINETUNE_ARGS), in_process=True)
    handlers = logging.getLogger().handlers[:]
    status = runner.run(str(tmp_path / "bad"), {"batch_size": 0}, 999)
    assert status["status"] == "failed" and status["returncode"] == 2 and status["in_process"]
    assert "--batch_size: must be positive" in status["error"]
    assert json.loads((tmp_path / "bad" / "status.json").read_text()) == json.loads(json.dumps(status))
    assert (tmp_path / "bad" / "log.txt").read_text().strip().splitlines()[-1].startswith("error: ")
    assert not (tmp_path / "bad" / ".bort.lock").exists() and logging.getLogger().handlers == handlers

    def crash(argv):
        logging.getLogger("trial").warning("about to crash")
        raise RuntimeError("boom")

    monkeypatch.setattr(finetune_bort, "main", crash)
    status = runner.run(str(tmp_path / "crash"), {}, 999)
    assert status["returncode"] == 1 and status["error"] == "RuntimeError: boom"
    log = (tmp_path / "crash" / "log.txt").read_text()
    assert "Traceback" in log and "about to crash" in log
    # another run holds the folder: the driver waits for it, then stops in one line, recording nothing (it used
    # to record the trial as failed and overwrite its log)
    monkeypatch.setattr(grid, "LOCK_WAIT_SECONDS", 1.0)
    (tmp_path / "held").mkdir()
    (tmp_path / "held" / "log.txt").write_text("the running trial's log\n")
    holder = hold_lock(tmp_path / "held", seconds=60)
    try:
        with pytest.raises(BortError, match="held by another run"):
            runner.run(str(tmp_path / "held"), {}, 999)
    finally:
        holder.kill()
        holder.wait()
    assert (tmp_path / "held" / "log.txt").read_text() == "the running trial's log\n"
    assert not (tmp_path / "held" / "status.json").exists()
    # a holder that dies while the trial waits (a killed driver's trial): its lock is reclaimed, the trial runs
    monkeypatch.setattr(grid, "LOCK_WAIT_SECONDS", 30.0)
    holder = hold_lock(tmp_path / "held", seconds=1)
    status = runner.run(str(tmp_path / "held"), {}, 999)
    holder.wait()
    assert status["returncode"] == 1 and status["error"] == "RuntimeError: boom"


def hold_lock(folder, seconds):
    """A process holding `folder`'s lock (as a running trial does) for `seconds`; returns once it holds it."""
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, os, sys, time\n"
                               "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)\n"
                               "fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True)\n"
                               "time.sleep(float(sys.argv[2]))",
                               str(folder / ".bort.lock"), str(seconds)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_a_trial_dies_with_its_driver(tmp_path):
    """kill -9 of the driver (scripts/agora.py) takes its running trial down too (it used to be orphaned)."""
    driver = subprocess.Popen([sys.executable, "-c", "import os, sys\n"
                               "from bort.agora.grid import start_trial\n"
                               "trial = start_trial([sys.executable, '-c', 'import time; time.sleep(120)'], "
                               "open(os.devnull, 'w'))\n"
                               "print(trial.pid, flush=True); trial.wait()"], stdout=subprocess.PIPE, text=True)
    trial = int(driver.stdout.readline())
    assert process_alive(trial)
    driver.kill()
    driver.wait()
    deadline = time.time() + 10
    while process_alive(trial) and time.time() < deadline:
        time.sleep(0.1)
    assert not process_alive(trial)


@pytest.mark.slow
def test_two_by_two_grid_with_crash_and_resume(tmp_path):
    """The CLI and its trials as processes (tests/test_agora_rounds.py runs trials in-process)."""
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
