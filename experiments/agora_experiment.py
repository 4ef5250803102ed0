#!/usr/bin/env python
"""Scarce-data experiment: plain grid search vs Agora with the same number of fine-tuning runs, several seeds.

    python -m experiments.agora_experiment --task_name SST-2 --data_dir ../shared/real_data/glue_data/SST-2 \
        --teacher_parameters labeler/model_bort_SST-2.params --grid theta.json --train_rows 200 --seeds 1,2,3 \
        --output_dir agora_experiment -- --pretrained_parameters none --model_config bort_tiny ...

For each seed: a training set of --train_rows rows drawn (seeded) from the task's training file; Agora runs on it
(E = a seeded part of the dev set, the rest held out); then the plain grid runs the same number of fine-tuning runs
(Θ's settings with more seeds) on the same training rows, best picked on E. Both final models are scored on the
held-out part. Writes `<output_dir>/experiment.json` and `experiment.md` (one row per seed, and the means).
"""
import argparse
import itertools
import os
import sys


import bort  # noqa: F401
import numpy as np

from bort.agora.data_files import split_dev, write_examples
from bort.agora.grid import TrialRunner, collect, read_grid, trials
from bort.agora.options import AgoraConfig, add_agora_flags, add_trial_flags, config_of, parse_flags
from bort.agora.rounds import finetune_options, run_agora, score_examples
from bort.errors import BortError, run_cli
from bort.io import atomic_write, write_json
from bort.finetune.tasks import get_task
from bort.text.tokenizer import tokenizer_from_args


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task_name", required=True)
    p.add_argument("--data_dir", required=True, help="the task's official files (train and dev)")
    p.add_argument("--labeler_data", default=None,
                   help="only write a data folder for training the labeler (every training row; dev = the E part "
                        "of the experiment's dev rows, so the held-out part stays unseen) and exit")
    p.add_argument("--train_rows", type=int, default=200)
    p.add_argument("--seeds", default="1,2,3")
    p.add_argument("--output_dir", required=True)
    p.add_argument("--dev_rows", type=int, default=0, help="use this many dev rows (seeded; 0: all)")
    add_trial_flags(p)  # --grid: Θ, whose 'seed' list is extended for the baseline
    add_agora_flags(p, max_rounds=3)  # --teacher_parameters: required unless --labeler_data
    return p


def parse_args(argv):
    args = parse_flags(build_parser(), argv)
    args.seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    return args


def baseline_trials(grid, count):
    """The first `count` trials of Θ repeated with new seeds (seed + 1000 * replica): the plain grid's budget."""
    base = list(trials(grid))
    out = []
    for replica in itertools.count():
        for _, setting in base:
            if len(out) == count:
                return out
            full = dict(setting)
            full["seed"] = int(full.get("seed", 0)) + 1000 * replica
            out.append(("_".join(f"{k}{v}" for k, v in full.items()), full))


def dev_subset(task, segment, args):
    """The dev rows of the experiment (--dev_rows of them, drawn with --split_seed; all when 0)."""
    dev = task.read(segment, args.data_dir)
    if not args.dev_rows or args.dev_rows >= len(dev):
        return dev
    return [dev[i] for i in sorted(np.random.RandomState(args.split_seed).permutation(len(dev))[:args.dev_rows])]


def run_seed(args, seed, task, tokenizer, max_len):
    folder = os.path.join(args.output_dir, f"seed{seed}")
    data_dir = os.path.join(folder, "data")
    train = task.read("train", args.data_dir)
    rows = np.random.RandomState(seed).permutation(len(train))[:args.train_rows]
    write_examples(task, "train", [train[i] for i in sorted(rows)], data_dir)
    for segment in task.dev_segments:
        write_examples(task, segment, dev_subset(task, segment, args), data_dir)
    config = config_of(AgoraConfig, args, output_dir=os.path.join(folder, "agora"), seed=seed,
                       finetune_args=args.finetune_args + ("--data_dir", data_dir))
    agora = run_agora(config)
    heldout = {seg: task.read(seg, os.path.join(folder, "agora", "heldout")) for seg in agora["heldout"]}
    baseline = baseline_trials(read_grid(args.grid), agora["runs"])
    grid_dir = os.path.join(folder, "grid")
    runner = TrialRunner(task.name, args.finetune_args, args.gpus, args.in_process)
    runner.run_pending(baseline, grid_dir, data_dir=os.path.join(folder, "agora", "round_01", "data"),
                       label=f"grid seed {seed}")
    best = [r for r in collect(grid_dir, baseline) if r["score"] is not None][0]
    _, grid_heldout = score_examples(task, best["checkpoint"], heldout, tokenizer, max_len)
    return {"seed": seed, "runs": agora["runs"], "grid_E": best["score"], "grid_heldout": grid_heldout,
            "agora_E": agora["E_score"], "agora_heldout": agora["heldout_score"], "agora_rounds": agora["rounds"],
            "agora_generated": agora["generated"], "agora_replays": sum(agora["replays"].values()),
            "teacher_accuracy": agora["teacher_accuracy"]}


COLUMNS = ["seed", "runs", "grid_E", "grid_heldout", "agora_E", "agora_heldout", "agora_rounds", "agora_generated",
           "agora_replays"]


def main(argv=None):
    args = parse_args(argv)
    task = get_task(args.task_name)
    options = finetune_options(args.finetune_args)
    tokenizer = tokenizer_from_args(options)
    if any(a == "--data_dir" or a.startswith("--data_dir=") for a in args.finetune_args):
        raise BortError("--data_dir: give it before `--` (the experiment writes each seed's data folder)")
    if args.labeler_data:
        write_examples(task, "train", task.read("train", args.data_dir), args.labeler_data)
        for segment in task.dev_segments:
            evaluation, _ = split_dev(task, {segment: dev_subset(task, segment, args)}, args.heldout_fraction,
                                      args.split_seed)[segment]
            write_examples(task, segment, evaluation, args.labeler_data)
        print(f"labeler data: {args.labeler_data}")
        return
    if not args.teacher_parameters or not args.grid:
        raise BortError("--teacher_parameters and --grid: required (unless --labeler_data)")
    rows = [run_seed(args, seed, task, tokenizer, options.max_len) for seed in args.seeds]
    means = {c: float(np.mean([r[c] for r in rows])) for c in COLUMNS[1:]}
    wins = sum(r["agora_heldout"] > r["grid_heldout"] for r in rows)
    summary = {"rows": rows, "means": means, "agora_wins_heldout": wins, "seeds": len(rows),
               "command": " ".join(sys.argv)}
    write_json(os.path.join(args.output_dir, "experiment.json"), summary)
    with atomic_write(os.path.join(args.output_dir, "experiment.md")) as handle:
        handle.write("| " + " | ".join(COLUMNS) + " |\n|" + "---|" * len(COLUMNS) + "\n")
        for r in rows + [dict(means, seed="mean")]:
            handle.write("| " + " | ".join(f"{r[c]:.4f}" if isinstance(r[c], float) else str(r[c])
                                           for c in COLUMNS) + " |\n")
        handle.write(f"\nAgora beats the grid on the held-out part in {wins} of {len(rows)} seeds.\n")
    print(open(os.path.join(args.output_dir, "experiment.md"), encoding="utf-8").read())


if __name__ == "__main__":
    run_cli(main)()
