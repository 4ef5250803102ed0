"""Hostile-input sweep: build malformed, out-of-range and concurrent inputs in a temporary directory, run every
CLI on them as a user would, and classify each outcome.

    python -m experiments.hostile_sweep [--json sweep.json] [--keep DIR] [--only CLASS] [--trials 5]

Outcomes: `one-line error` (non-zero exit, one `error: ...` line, the last line of the output, no traceback,
nothing left behind that the case forbids), `handled` (a valid but unusual input: exit 0 and the files it must
write), `traceback`, `silently accepted` (exit 0 on input that must be refused), `crash` (killed by a signal, e.g. a
segmentation fault), `error not last` (other output after the error line), `left output` (an empty output
directory or a partial file stayed behind), `bad message` (e.g. passes on torch's weights_only=False advice),
`wrong output` (a valid input whose files are missing or short), `hang` (timeout). Cases of the dataset readers
(owned by another change) are reported in their own rows; cases another change fixes are counted apart too.
Then SIGTERM and kill -9 trials of create_pretraining_data count surviving workers and leftover shards.
Prints a table and writes JSON. The cases themselves are in `experiments/hostile_cases.py` and (the third round:
damaged artifacts, faults mid-run, full and read-only disks, inference inputs)
`experiments/hostile_cases_artifacts.py`.
"""
import argparse
import collections
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from bort.runtime import process_alive, process_descendants
from experiments.hostile_cases import CASE_CLASSES, READER_CLASS, ROOT, SAMPLE, VOCAB, Sweep, build_cases
from experiments.hostile_cases_artifacts import ARTIFACT_CLASSES

CLASSES = {**CASE_CLASSES, **ARTIFACT_CLASSES}
CRASH_EXITS = (134, 139)  # abort, segmentation fault (as a shell reports them)


# ---- running and classifying --------------------------------------------------------------------------------------
def _holder(directory):
    code = (f"import time\nfrom bort.locking import hold_directory\n"
            f"hold_directory({directory!r}); print('held', flush=True); time.sleep(600)")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    proc.stdout.readline()
    return proc


def run_case(case, timeout):
    holder = _holder(case.holder) if case.holder else None
    start = time.time()
    try:
        proc = subprocess.run([sys.executable] + list(case.argv), cwd=ROOT, capture_output=True, text=True,
                              timeout=timeout)
        rc, stderr = proc.returncode, proc.stderr
    except subprocess.TimeoutExpired:
        rc, stderr = None, ""
    finally:
        if holder:
            holder.kill()
            holder.communicate()
    lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    if rc is None:
        outcome = "hang"
    elif rc < 0 or rc in CRASH_EXITS:
        outcome = "crash"
    elif "Traceback (most recent call last)" in stderr:
        outcome = "traceback"
    elif rc == 0:
        outcome = "handled" if case.lines and _has_lines(case.lines) else \
            "wrong output" if case.lines else "silently accepted"
    elif case.lines:
        outcome = "traceback" if len(lines) != 1 else "refused a valid input"
    elif any(os.path.exists(p) for p in case.absent):
        outcome = "left output"
    elif any(f in stderr for f in case.forbid):
        outcome = "bad message"
    elif len(lines) == 1 and stderr.strip().splitlines()[-1] != lines[0]:
        outcome = "error not last"
    elif len(lines) == 1:
        outcome = "one-line error"
    else:
        outcome = "traceback"  # a non-zero exit without our one line
    return {"class": case.cls, "name": case.name, "reader": case.reader, "pending": case.pending,
            "outcome": outcome, "exit": rc, "error": lines[-1] if lines else (stderr.strip().splitlines() or [""])[-1],
            "seconds": round(time.time() - start, 1)}


def _has_lines(expected):
    """Whether every file of {path: number of lines} exists with that many lines."""
    for path, count in expected.items():
        if not os.path.isfile(path):
            return False
        with open(path, encoding="utf-8") as handle:
            if sum(1 for _ in handle) != count:
                return False
    return True


def shutdown_trials(work, trials, sig):
    """create_pretraining_data with 2 workers, interrupted by `sig` once the workers run; survivors after 10 s."""
    corpus = os.path.join(work, "corpus.txt")
    if not os.path.exists(corpus):
        with open(SAMPLE, encoding="utf-8") as handle:
            text = handle.read().strip() + "\n\n"
        with open(corpus, "w", encoding="utf-8") as handle:
            while handle.tell() < 6e6:
                handle.write(text)
    survivors = leftovers = 0
    for trial in range(trials):
        out = os.path.join(work, f"shutdown_{sig}_{trial}")
        proc = subprocess.Popen([sys.executable, "create_pretraining_data.py", "--input_file", corpus, "--output_dir",
                                 out, "--num_workers", "2", "--no_progress", "--dupe_factor", "40"] + VOCAB, cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline, workers = time.time() + 60, []
        while time.time() < deadline and len(workers) < 2 and proc.poll() is None:
            time.sleep(0.2)
            workers = process_descendants(proc.pid)
        time.sleep(0.5 + trial * 0.3)
        proc.send_signal(sig)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            survivors += 1
        time.sleep(10)
        alive = [p for p in workers if process_alive(p)]
        survivors += len(alive)
        for pid in alive:
            os.kill(pid, signal.SIGKILL)
        if os.path.isdir(out) and any(n.endswith((".npz", ".tmp")) for n in os.listdir(out)):
            leftovers += 1
    return {"signal": signal.Signals(sig).name, "trials": trials, "surviving_workers": survivors,
            "trials_with_shard_files_left": leftovers}


COLUMNS = ("one-line error", "handled", "traceback", "silently accepted", "crash")
PENDING_ROW = "fixed by other changes of #24 (pass once merged)"


def table_rows(results):
    """[(row name, Counter of outcomes with 'inputs')]: one row per class, the cases another change fixes in a row
    of their own, then the total of the reliability classes (dataset readers and pending cases apart)."""
    table = collections.OrderedDict()
    for r in results:
        row = table.setdefault(PENDING_ROW if r.get("pending") else r["class"], collections.Counter())
        row["inputs"] += 1
        row[r["outcome"]] += 1
    total = sum((c for k, c in table.items() if k not in (READER_CLASS, PENDING_ROW)), collections.Counter())
    rows = [(k, c) for k, c in table.items() if k != PENDING_ROW]
    return rows + [("total (without dataset readers and pending)", total)] + \
        [(k, c) for k, c in table.items() if k == PENDING_ROW]


def print_table(results):
    print("\n| class | inputs | " + " | ".join(COLUMNS) + " | other |")
    print("|---|" + "---|" * (len(COLUMNS) + 2))
    for name, row in table_rows(results):
        other = row["inputs"] - sum(row[c] for c in COLUMNS)
        print(f"| {name} | {row['inputs']} | " + " | ".join(str(row[c]) for c in COLUMNS) + f" | {other} |")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", default="hostile_sweep.json", help="where to write the results")
    parser.add_argument("--keep", default=None, help="build the inputs here and keep them")
    parser.add_argument("--only", default=None, choices=list(CLASSES),
                        help="build and run only the cases of this class")
    parser.add_argument("--skip", action="append", default=[], choices=list(CLASSES),
                        help="skip the cases of this class (repeatable)")
    parser.add_argument("--timeout", type=int, default=300, help="seconds per case")
    parser.add_argument("--trials", type=int, default=3, help="SIGTERM and kill -9 trials each (0: none)")
    args = parser.parse_args(argv)
    work = args.keep or tempfile.mkdtemp(prefix="bort_sweep_")
    os.makedirs(work, exist_ok=True)
    sweep = Sweep(work)
    results = []
    try:
        for case in build_cases(sweep, only=args.only, skip=args.skip, classes=CLASSES):
            results.append(run_case(case, args.timeout))
            r = results[-1]
            pending = " (pending)" if r["pending"] else ""
            print(f"{r['outcome']:18} {r['class']:18} {r['name']}{pending}: {r['error']}"[:200], flush=True)
    finally:
        sweep.close()  # the small tmpfs disks
    if sweep.mount_refused:
        print("note: tmpfs mounts not allowed here: the full and read-only disk cases were left out")
    trials = [shutdown_trials(work, args.trials, sig) for sig in (signal.SIGTERM, signal.SIGKILL)] \
        if args.trials else []
    print_table(results)
    for t in trials:
        print(f"{t['signal']} of create_pretraining_data: {t['trials']} trials, {t['surviving_workers']} surviving "
              f"workers, {t['trials_with_shard_files_left']} with shard files left")
    with open(args.json, "w", encoding="utf-8") as handle:
        json.dump({"cases": results, "shutdown": trials, "work_dir": work,
                   "totals": {name: dict(row) for name, row in table_rows(results)}}, handle, indent=2)
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    bad = [r for r in results if not r["reader"] and r["outcome"] not in ("one-line error", "handled")]
    return 1 if bad or any(t["surviving_workers"] or t["trials_with_shard_files_left"] for t in trials) else 0


if __name__ == "__main__":
    sys.exit(main())
