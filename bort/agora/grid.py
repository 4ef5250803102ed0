"""The plain grid search over finetune_bort.py, and the trial runner Agora's rounds use (bort/agora/rounds.py).

A grid is a JSON file {flag: [values, ...]} (scripts/agora_grids/default.json, or <TASK>.json beside it when it
exists). Each combination is one trial, run as its own finetune_bort.py process in `<output_dir>/<trial>/`; a
trial is finished when its result.json exists, so a rerun skips finished trials and reruns interrupted ones
(failed ones too with retry_failed). A crashed trial is recorded (status.json) and the search goes on. Results
are written to `<output_dir>/results.csv` and `results.md`, sorted by the dev score, best first.
"""
import csv
import itertools
import json
import os
import queue
import subprocess
import sys
import threading
import time

from bort.errors import BortError
from bort.io import atomic_write, read_json, write_json
from bort.paths import AGORA_GRIDS, FINETUNE_CLI

GRID_DIR = AGORA_GRIDS
FINETUNE = FINETUNE_CLI


def split_finetune_flags(argv=None):
    """(own flags, flags after `--` that go to every finetune_bort.py run) of a command line."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" not in argv:
        return argv, []
    cut = argv.index("--")
    return argv[:cut], argv[cut + 1:]


def grid_path(task_name, explicit=None):
    if explicit:
        return explicit
    per_task = os.path.join(GRID_DIR, f"{task_name}.json")
    return per_task if os.path.isfile(per_task) else os.path.join(GRID_DIR, "default.json")


def read_grid(path):
    grid = read_json(path, "a grid file {flag: [values]}")
    if not isinstance(grid, dict):
        raise BortError(f"{path}: expected a JSON object {{flag: [values]}}")
    grid = {k: v for k, v in grid.items() if not k.startswith("_")}
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise BortError(f"{path}: {key!r} must be a non-empty list of values")
    return grid


def trials(grid):
    keys = list(grid)
    for values in itertools.product(*(grid[k] for k in keys)):
        setting = dict(zip(keys, values))
        name = "_".join(f"{k}{v}" for k, v in setting.items())
        yield name, setting


def trial_status(folder):
    if os.path.isfile(os.path.join(folder, "result.json")):
        return "done"
    status = os.path.join(folder, "status.json")
    if os.path.isfile(status):
        with open(status, encoding="utf-8") as handle:
            recorded = json.load(handle).get("status")
        return "failed" if recorded == "failed" else "incomplete"  # running/done without a result: interrupted
    return "incomplete" if os.path.isdir(folder) else "pending"


def run_trial(name, setting, args, device, python=sys.executable, output_dir=None, data_dir=None):
    """One finetune_bort.py process in `<output_dir>/<name>/`; `data_dir` (an Agora round's folder) overrides
    any --data_dir among the flags given after `--`."""
    folder = os.path.join(output_dir or args.output_dir, name)
    os.makedirs(folder, exist_ok=True)
    command = [python, FINETUNE, "--task_name", args.task_name, "--output_dir", folder]
    for key, value in setting.items():
        command += [f"--{key}", str(value)]
    command += ["--gpu", str(device)] + list(args.finetune_args)
    if data_dir:
        command += ["--data_dir", data_dir]
    write_json(os.path.join(folder, "status.json"), {"status": "running", "command": command, "device": device})
    tic = time.time()
    with open(os.path.join(folder, "log.txt"), "w", encoding="utf-8") as log:
        code = subprocess.call(command, stdout=log, stderr=subprocess.STDOUT)
    status = {"status": "done" if code == 0 else "failed", "returncode": code, "seconds": time.time() - tic,
              "command": command, "device": device}
    if code != 0:
        status["error"] = last_error_line(os.path.join(folder, "log.txt"))
    write_json(os.path.join(folder, "status.json"), status)
    return status


def last_error_line(log_path):
    with open(log_path, encoding="utf-8", errors="replace") as handle:
        lines = [line.strip() for line in handle if line.strip()]
    errors = [line for line in lines if line.startswith("error:") or "Error" in line]
    return (errors or lines or ["(no output)"])[-1][:300]


def search(args):
    """Run (or resume) the grid; returns the sorted result rows."""
    all_trials = list(trials(read_grid(grid_path(args.task_name, args.grid))))
    run_pending(all_trials, args, args.output_dir, retry_failed=args.retry_failed)
    rows = collect(args.output_dir, all_trials)
    write_tables(args.output_dir, rows)
    return rows


def run_pending(all_trials, args, output_dir, data_dir=None, retry_failed=False, label="agora"):
    """Run the trials without a result (one per device at a time, CPU: in sequence)."""
    todo = []
    for name, setting in all_trials:
        status = trial_status(os.path.join(output_dir, name))
        if status == "done" or (status == "failed" and not retry_failed):
            continue
        todo.append((name, setting))
    print(f"{label}: {len(all_trials)} trials, {len(all_trials) - len(todo)} already recorded, {len(todo)} to run",
          flush=True)
    devices = args.gpus if args.gpus else [999]
    jobs = queue.Queue()
    for item in todo:
        jobs.put(item)

    def worker(device):
        while True:
            try:
                name, setting = jobs.get_nowait()
            except queue.Empty:
                return
            status = run_trial(name, setting, args, device, output_dir=output_dir, data_dir=data_dir)
            print(f"{label}: {name} on {'cpu' if device == 999 else f'gpu {device}'}: {status['status']} "
                  f"({status['seconds']:.0f} s){' ' + status.get('error', '') if status['status'] != 'done' else ''}",
                  flush=True)

    threads = [threading.Thread(target=worker, args=(d,)) for d in devices]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def collect(output_dir, all_trials):
    rows = []
    for name, setting in all_trials:
        folder = os.path.join(output_dir, name)
        row = {"trial": name, **setting, "status": trial_status(folder), "score": None, "metrics": "",
               "best_epoch": None, "checkpoint": "", "error": ""}
        result_path = os.path.join(folder, "result.json")
        if row["status"] == "done" and os.path.isfile(result_path):
            with open(result_path, encoding="utf-8") as handle:
                result = json.load(handle)
            row.update(score=result.get("score"), best_epoch=result.get("best_epoch"),
                       checkpoint=result.get("checkpoint") or "",
                       metrics="; ".join(f"{seg}: " + ", ".join(f"{k}={v:.4f}" for k, v in m.items())
                                         for seg, m in result.get("dev", {}).items()))
        elif row["status"] == "failed":
            with open(os.path.join(folder, "status.json"), encoding="utf-8") as handle:
                row["error"] = json.load(handle).get("error", "")
        rows.append(row)
    rows.sort(key=lambda r: (r["score"] is None, -(r["score"] or 0.0)))
    return rows


def write_tables(output_dir, rows):
    if not rows:
        return
    fields = list(rows[0])
    with atomic_write(os.path.join(output_dir, "results.csv")) as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    with atomic_write(os.path.join(output_dir, "results.md")) as handle:
        handle.write("| " + " | ".join(fields) + " |\n|" + "---|" * len(fields) + "\n")
        for row in rows:
            cells = [f"{v:.4f}" if isinstance(v, float) else ("" if v is None else str(v)) for v in row.values()]
            handle.write("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |\n")


def inference_command(task_name, checkpoint, output_dir, finetune_args):
    """The finetune_bort.py --only_inference command line for a checkpoint, with the flags given after `--`
    (data directory, vocabulary, model config, ...) so that it runs as printed."""
    import shlex

    skip = {"--task_name", "--output_dir", "--model_parameters", "--only_inference"}
    kept, i, extra = [], 0, list(finetune_args)
    while i < len(extra):
        flag = extra[i].split("=", 1)[0]
        if flag in skip:
            takes_value = "=" not in extra[i] and flag != "--only_inference"
            i += 2 if takes_value else 1
            continue
        kept.append(extra[i])
        i += 1
    command = [sys.executable, FINETUNE, "--task_name", task_name, "--only_inference", "--model_parameters",
               checkpoint, "--output_dir", output_dir] + kept
    return " ".join(shlex.quote(str(c)) for c in command)
