"""The plain grid search over finetune_bort.py, and the trial runner Agora's rounds use (bort/agora/rounds.py).

A grid is a JSON file {flag: [values, ...]} (scripts/agora_grids/default.json, or <TASK>.json beside it when it
exists). Each combination is one trial, a finetune_bort.py run in `<output_dir>/<trial>/` (its own process, or a
call in this one with `in_process`: `TrialRunner`); a trial is finished when its result.json exists, so a rerun
skips finished trials and reruns interrupted ones (failed ones too with retry_failed). A crashed trial is recorded
(status.json) and the search goes on. Results are written to `<output_dir>/results.csv` and `results.md`, sorted
by the dev score, best first. The settings come from a GridConfig (bort.agora.options).
"""
import contextlib
import csv
import dataclasses
import fcntl
import functools
import itertools
import logging
import os
import queue
import subprocess
import sys
import threading
import time
import traceback

from bort.errors import BortError, run_cli
from bort.agora.state import read_result, read_status, trial_trust
from bort.io import atomic_write, file_sha256, read_json, write_json
from bort.locking import LOCK_NAME, owned_directory
from bort.paths import AGORA_GRIDS, FINETUNE_CLI
from bort.runtime import die_with_parent

CPU = 999  # finetune_bort.py's --gpu for the CPU
LOCK_WAIT_SECONDS = 60.0  # how long a trial waits for another process to let go of its folder


def grid_path(task_name, explicit=None):
    if explicit:
        return explicit
    per_task = os.path.join(AGORA_GRIDS, f"{task_name}.json")
    return per_task if os.path.isfile(per_task) else os.path.join(AGORA_GRIDS, "default.json")


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
    """pending (no folder), incomplete (interrupted), failed (recorded as failed) or done (result.json exists)."""
    if os.path.isfile(os.path.join(folder, "result.json")):
        return "done"
    if os.path.isfile(os.path.join(folder, "status.json")):
        recorded = read_status(folder)["status"]
        return "failed" if recorded == "failed" else "incomplete"  # running/done without a result: interrupted
    return "incomplete" if os.path.isdir(folder) else "pending"


def last_error_line(log_path):
    with open(log_path, encoding="utf-8", errors="replace") as handle:
        lines = [line.strip() for line in handle if line.strip()]
    errors = [line for line in lines if line.startswith("error:") or "Error" in line]
    return (errors or lines or ["(no output)"])[-1][:300]


def search(config):
    """Run (or resume) the grid of a GridConfig (bort.agora.options); returns the sorted result rows."""
    all_trials = list(trials(read_grid(grid_path(config.task_name, config.grid))))
    TrialRunner.of(config).run_pending(all_trials, config.output_dir, retry_failed=config.retry_failed,
                                       rerun_changed=config.rerun_changed)
    rows = collect(config.output_dir, all_trials)
    write_tables(config.output_dir, rows)
    return rows


@dataclasses.dataclass(frozen=True)
class TrialRunner:
    """Runs trials: finetune_bort.py for `task_name` with a trial's setting and `finetune_args` (the flags after
    `--`), in `<output_dir>/<trial>/`, its output in log.txt, its outcome in status.json.

    gpus: GPU ids, one trial per GPU at a time (empty: CPU, in sequence).
    in_process: call `finetune_bort.main` in this process instead of starting a Python process per trial (no
    start-up cost; one trial at a time). The trial holds its folder's lock (bort.locking) while it runs, and its
    outcome is recorded as for a process: the exit status finetune_bort.py would have had (2 after a one-line
    error, 1 after an exception, whose traceback goes to log.txt) and the last error line.
    """

    task_name: str
    finetune_args: tuple = ()
    gpus: tuple = ()
    in_process: bool = False

    def __post_init__(self):
        if self.in_process and len(self.gpus) > 1:
            raise BortError("--in_process runs one trial at a time: give at most one GPU in --gpus")

    @classmethod
    def of(cls, config):
        """The runner of a GridConfig or AgoraConfig (bort.agora.options)."""
        return cls(config.task_name, tuple(config.finetune_args), tuple(config.gpus), config.in_process)

    def command(self, folder, setting, device, data_dir=None):
        """The finetune_bort.py command line of a trial; `data_dir` (an Agora round's folder) overrides any
        --data_dir among the flags given after `--`."""
        command = [sys.executable, FINETUNE_CLI, "--task_name", self.task_name, "--output_dir", folder]
        for key, value in setting.items():
            command += [f"--{key}", str(value)]
        command += ["--gpu", str(device)] + list(self.finetune_args)
        if data_dir:
            command += ["--data_dir", data_dir]
        return command

    def run(self, folder, setting, device, data_dir=None):
        """One trial in `folder`; returns its status record (also written to status.json)."""
        os.makedirs(folder, exist_ok=True)
        wait_for_lock(folder)  # a trial of a killed driver may still be dying: never overwrite its log under it
        command = self.command(folder, setting, device, data_dir)
        record = {"command": command, "device": device}
        if self.in_process:
            record["in_process"] = True
        write_json(os.path.join(folder, "status.json"), dict(record, status="running"))
        tic = time.time()
        log_path = os.path.join(folder, "log.txt")
        with open(log_path, "w", encoding="utf-8") as log:
            if self.in_process:
                code = run_in_process(command[2:], folder, log)
            else:
                code = start_trial(command, log).wait()
        status = dict(record, status="done" if code == 0 else "failed", returncode=code, seconds=time.time() - tic)
        if code != 0:
            status["error"] = last_error_line(log_path)
        elif os.path.isfile(os.path.join(folder, "result.json")):  # the result set's manifest, checked on resume
            status["result_sha256"] = file_sha256(os.path.join(folder, "result.json"))
        write_json(os.path.join(folder, "status.json"), status)
        if code == 130 and self.in_process:  # Ctrl-C reached the trial: it stops the search, as it would a process
            raise KeyboardInterrupt
        return status

    def run_pending(self, all_trials, output_dir, data_dir=None, retry_failed=False, rerun_changed=False,
                    label="agora"):
        """Run the trials of `all_trials` ([(name, setting)]) that have no result in `output_dir`. A recorded
        trial is reused only when its command (the flags) is this one's and its result set is unchanged
        (`bort.agora.state.trial_trust`); otherwise one-line BortError, or a rerun with `rerun_changed`."""
        todo = []
        for name, setting in all_trials:
            folder = os.path.join(output_dir, name)
            status = trial_status(folder)
            if status in ("done", "failed"):
                distrust = trial_trust(folder, self.command(folder, setting, CPU, data_dir))
                if distrust and not rerun_changed:
                    raise BortError(f"{folder}: recorded trial not reused: {distrust}; rerun with --rerun_changed "
                                    f"to run it again, or choose a new --output_dir")
                if not distrust and (status == "done" or not retry_failed):
                    continue
            todo.append((name, setting))
        print(f"{label}: {len(all_trials)} trials, {len(all_trials) - len(todo)} already recorded, {len(todo)} to "
              f"run", flush=True)
        jobs = queue.Queue()
        for item in todo:
            jobs.put(item)

        def worker(device):
            while True:
                try:
                    name, setting = jobs.get_nowait()
                except queue.Empty:
                    return
                status = self.run(os.path.join(output_dir, name), setting, device, data_dir=data_dir)
                failure = " " + status.get("error", "") if status["status"] != "done" else ""
                print(f"{label}: {name} on {'cpu' if device == CPU else f'gpu {device}'}: {status['status']} "
                      f"({status['seconds']:.0f} s){failure}", flush=True)

        if self.in_process:  # in this thread: a KeyboardInterrupt must reach the caller
            worker(self.gpus[0] if self.gpus else CPU)
            return
        threads = [threading.Thread(target=worker, args=(d,)) for d in (self.gpus or [CPU])]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()


def start_trial(command, log):
    """The trial's process (output to the open file `log`); the kernel kills it when this process dies, even by
    `kill -9`, so a killed driver leaves no orphan holding the trial's folder."""
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                            preexec_fn=functools.partial(die_with_parent, os.getpid()))


def wait_for_lock(folder, timeout=None):
    """Wait until no process holds `folder`'s lock (bort.locking), e.g. the trial of a killed driver that the
    kernel is still taking down; one-line BortError after `timeout` seconds (another driver runs it)."""
    path = os.path.join(folder, LOCK_NAME)
    timeout = LOCK_WAIT_SECONDS if timeout is None else timeout
    deadline = time.time() + timeout
    while os.path.exists(path):
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return  # free: a dead owner's file, reclaimed by the trial's own lock
        except OSError:
            if time.time() > deadline:
                raise BortError(f"{folder}: the trial is held by another run for over {timeout:.0f} s (another "
                                f"scripts/agora.py on this --output_dir?); wait for it or choose another "
                                f"--output_dir") from None
        finally:
            os.close(fd)
        time.sleep(0.2)


def run_in_process(argv, folder, log):
    """finetune_bort.main(argv) in this process, holding `folder` as a finetune_bort.py process would, with its
    output (stdout, stderr, logging) going to the open file `log`; returns the exit status a process would have."""
    import finetune_bort  # noqa: PLC0415  (the fine-tuning CLI, a top-level module)

    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    handler = logging.StreamHandler(log)
    handler.setFormatter(logging.Formatter(finetune_bort.LOG_FORMAT, datefmt="%H:%M:%S"))
    root.handlers[:] = [handler]  # the trial's records go to its log only (and finetune_bort's basicConfig is a no-op)
    root.setLevel(logging.INFO)

    def trial():
        with owned_directory(folder, "--output_dir"):
            finetune_bort.main(argv)

    try:
        with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            try:
                run_cli(trial)()
                return 0
            except SystemExit as stop:
                return stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
            except Exception:  # noqa: BLE001 - a failed trial, recorded as a crashed process would be
                traceback.print_exc(file=log)
                return 1
    finally:
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)


def collect(output_dir, all_trials):
    rows = []
    for name, setting in all_trials:
        folder = os.path.join(output_dir, name)
        row = {"trial": name, **setting, "status": trial_status(folder), "score": None, "metrics": "",
               "best_epoch": None, "checkpoint": "", "error": ""}
        result_path = os.path.join(folder, "result.json")
        if row["status"] == "done" and os.path.isfile(result_path):
            result = read_result(folder)
            row.update(score=result.get("score"), best_epoch=result.get("best_epoch"),
                       checkpoint=result.get("checkpoint") or "",
                       metrics="; ".join(f"{seg}: " + ", ".join(f"{k}={v:.4f}" for k, v in m.items())
                                         for seg, m in result.get("dev", {}).items()))
        elif row["status"] == "failed":
            row["error"] = str(read_status(folder).get("error", ""))
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
    command = [sys.executable, FINETUNE_CLI, "--task_name", task_name, "--only_inference", "--model_parameters",
               checkpoint, "--output_dir", output_dir] + kept
    return " ".join(shlex.quote(str(c)) for c in command)
