"""Hostile-input sweep: build malformed, out-of-range and concurrent inputs in a temporary directory, run every
CLI on them as a user would, and classify each outcome.

    python -m experiments.hostile_sweep [--json sweep.json] [--keep DIR] [--only CLASS] [--trials 5]

Outcomes: `one-line error` (non-zero exit, one `error: ...` line, no traceback, nothing left behind that the
case forbids), `traceback`, `silently accepted` (exit 0 on input that must be refused), `left output` (an empty
output directory or a partial file stayed behind), `bad message` (e.g. passes on torch's weights_only=False
advice), `hang` (timeout). Cases of the dataset readers (owned by another change) are reported in their own rows.
Then SIGTERM and kill -9 trials of create_pretraining_data count surviving workers and leftover shards.
Prints a table and writes JSON. The cases themselves are in `experiments/hostile_cases.py`.
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
    elif "Traceback (most recent call last)" in stderr:
        outcome = "traceback"
    elif rc == 0:
        outcome = "silently accepted"
    elif any(os.path.exists(p) for p in case.absent):
        outcome = "left output"
    elif any(f in stderr for f in case.forbid):
        outcome = "bad message"
    elif len(lines) == 1:
        outcome = "one-line error"
    else:
        outcome = "traceback"  # a non-zero exit without our one line
    return {"class": case.cls, "name": case.name, "reader": case.reader, "outcome": outcome, "exit": rc,
            "error": lines[-1] if lines else (stderr.strip().splitlines() or [""])[-1],
            "seconds": round(time.time() - start, 1)}


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


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", default="hostile_sweep.json", help="where to write the results")
    parser.add_argument("--keep", default=None, help="build the inputs here and keep them")
    parser.add_argument("--only", default=None, choices=list(CASE_CLASSES),
                        help="build and run only the cases of this class")
    parser.add_argument("--skip", action="append", default=[], choices=list(CASE_CLASSES),
                        help="skip the cases of this class (repeatable)")
    parser.add_argument("--timeout", type=int, default=300, help="seconds per case")
    parser.add_argument("--trials", type=int, default=3, help="SIGTERM and kill -9 trials each (0: none)")
    args = parser.parse_args(argv)
    work = args.keep or tempfile.mkdtemp(prefix="bort_sweep_")
    os.makedirs(work, exist_ok=True)
    sweep = Sweep(work)
    results = []
    for case in build_cases(sweep, only=args.only, skip=args.skip):
        results.append(run_case(case, args.timeout))
        r = results[-1]
        print(f"{r['outcome']:18} {r['class']:18} {r['name']}: {r['error']}"[:200], flush=True)
    trials = [shutdown_trials(work, args.trials, sig) for sig in (signal.SIGTERM, signal.SIGKILL)] \
        if args.trials else []
    table = collections.OrderedDict()
    for r in results:
        row = table.setdefault(r["class"], collections.Counter())
        row["inputs"] += 1
        row[r["outcome"]] += 1
    print("\n| class | inputs | one-line error | traceback | silently accepted | other |")
    print("|---|---|---|---|---|---|")
    for cls, row in list(table.items()) + [("total (without dataset readers)", sum(
            (c for k, c in table.items() if k != READER_CLASS), collections.Counter()))]:
        other = row["inputs"] - row["one-line error"] - row["traceback"] - row["silently accepted"]
        print(f"| {cls} | {row['inputs']} | {row['one-line error']} | {row['traceback']} | "
              f"{row['silently accepted']} | {other} |")
    for t in trials:
        print(f"{t['signal']} of create_pretraining_data: {t['trials']} trials, {t['surviving_workers']} surviving "
              f"workers, {t['trials_with_shard_files_left']} with shard files left")
    with open(args.json, "w", encoding="utf-8") as handle:
        json.dump({"cases": results, "shutdown": trials, "work_dir": work}, handle, indent=2)
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    bad = [r for r in results if not r["reader"] and r["outcome"] != "one-line error"]
    return 1 if bad or any(t["surviving_workers"] or t["trials_with_shard_files_left"] for t in trials) else 0


if __name__ == "__main__":
    sys.exit(main())
