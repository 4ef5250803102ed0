#!/usr/bin/env python
"""Does Agora beat the grid? Three arms per training-set size and seed, on the same scarce training rows:

- grid:    Θ's settings (with more seeds when needed) for as many fine-tuning runs as Agora used, each run's
           --epochs (and --ramp_up_epochs) scaled so the arm also trains on as many row-epochs as Agora did;
- control: the same budgets, on the training rows plus as many labeler-labelled generated rows as Agora generated,
           made from random *training* rows instead of E's mistakes (plain augmentation, Agora's idea taken out);
- agora:   bort.agora.rounds (scripts/agora.py --algorithm agora).

Every arm picks its model on E_sel (Agora's selection part of E); all are scored on the same held-out part, whose
per-example predictions are saved (`rows<size>/seed<N>/{grid,control}_predictions.jsonl`,
`.../agora/heldout_predictions.jsonl`). Per size: paired differences over
seeds with 95 % intervals, the paired t and sign tests, McNemar on the pooled predictions, the disagreement rate and
the minimum detectable effects (bort.agora.paired_stats), and both budgets (runs, row-epochs) of every arm.

    python -m experiments.agora_experiment --task_name SST-2 --data_dir ../shared/real_data/glue_data/SST-2 \\
        --teacher_parameters labeler/model_bort_SST-2.params --grid scripts/agora_grids/experiment_theta.json \\
        --train_rows 100,300 --seeds 1,2,3,4,5,6,7,8 --heldout_fraction 0.8 --output_dir exp/SST-2 \\
        -- --pretrained_parameters <pretrained encoder> <tokenizer flags> --epochs 3 --ramp_up_epochs 3
Flags after `--` go to every finetune_bort.py run (the pretrained student and its tokenizer: whatever
finetune_bort.py loads). Writes `<output_dir>/experiment.json` and `experiment.md`; rerunning resumes.
"""
import argparse
import os
import sys

import bort  # noqa: F401
import numpy as np

from bort.agora import generators as augment
from bort.agora.data_files import raw_label, split_dev, write_examples
from bort.agora.grid import TrialRunner, collect, read_grid, trials
from bort.agora.options import AgoraConfig, add_agora_flags, add_trial_flags, config_of, parse_flags
from bort.agora.paired_stats import paired_summary, prediction_summary
from bort.agora.rounds import Agora, finetune_options, score_examples, write_predictions
from bort.errors import BortError, run_cli
from bort.finetune.tasks import get_task
from bort.io import atomic_write, read_jsonl, write_json

ARMS = ("grid", "control", "agora")
COMPARISONS = (("agora", "grid"), ("agora", "control"), ("control", "grid"))


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task_name", required=True)
    p.add_argument("--data_dir", required=True, help="the task's official files (train and dev)")
    p.add_argument("--labeler_data", default=None,
                   help="only write a data folder for training the labeler (every training row; dev = the E part "
                        "of the experiment's dev rows, so the held-out part stays unseen) and exit")
    p.add_argument("--train_rows", default="100,300", help="comma-separated training-set sizes")
    p.add_argument("--seeds", default="1,2,3,4,5,6,7,8", help="comma-separated seeds (8 or more for the table)")
    p.add_argument("--output_dir", required=True)
    p.add_argument("--dev_rows", type=int, default=0, help="use this many dev rows (seeded; 0: all)")
    add_trial_flags(p)  # --grid: Θ, whose 'seed' list is extended for the grid arm
    add_agora_flags(p, max_rounds=3)  # the labeler flags: required unless --labeler_data
    return p


def parse_args(argv):
    args = parse_flags(build_parser(), argv)
    args.seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    args.train_rows = [int(s) for s in args.train_rows.split(",") if s.strip()]
    return args


def flag_value(flags, name):
    """The value of `--name` among finetune_bort.py flags (None when absent)."""
    for i, flag in enumerate(flags):
        if flag == name and i + 1 < len(flags):
            return flags[i + 1]
        if flag.startswith(name + "="):
            return flag.split("=", 1)[1]
    return None


def with_flag(flags, name, value):
    """`flags` with `--name value` replacing any earlier value."""
    out, i = [], 0
    while i < len(flags):
        if flags[i] == name:
            i += 2
            continue
        if not flags[i].startswith(name + "="):
            out.append(flags[i])
        i += 1
    return tuple(out) + (name, str(value))


def scaled_flags(flags, factor):
    """The flags with --epochs (and --ramp_up_epochs, when given) multiplied by `factor`, rounded, at least 1."""
    out = with_flag(flags, "--epochs", max(1, round(int(flag_value(flags, "--epochs")) * factor)))
    if flag_value(flags, "--ramp_up_epochs") is not None:
        out = with_flag(out, "--ramp_up_epochs", max(1, round(int(flag_value(flags, "--ramp_up_epochs")) * factor)))
    return out


def grid_trials(grid, count):
    """The first `count` trials of Θ repeated with new seeds (seed + 1000 * replica)."""
    base, out, replica = list(trials(grid)), [], 0
    while len(out) < count:
        for _, setting in base[:count - len(out)]:
            full = dict(setting, seed=int(setting.get("seed", 0)) + 1000 * replica)
            out.append(("_".join(f"{k}{v}" for k, v in full.items()), full))
        replica += 1
    return out


def dev_subset(task, segment, args):
    """The dev rows of the experiment (--dev_rows of them, drawn with --split_seed; all when 0)."""
    dev = task.read(segment, args.data_dir)
    if not args.dev_rows or args.dev_rows >= len(dev):
        return dev
    return [dev[i] for i in sorted(np.random.RandomState(args.split_seed).permutation(len(dev))[:args.dev_rows])]


def control_rows(agora, count, seed):
    """`count` labeller-labelled variants of random training rows (Agora's generators and variants per source)."""
    rng = np.random.RandomState(seed * 7919 + 17)
    seen = {augment.example_key(agora.task, ex) for ex in agora.train}
    out = []
    for _ in range(3):  # passes over the shuffled training rows, until enough distinct variants
        for i in rng.permutation(len(agora.train)):
            if len(out) >= count:
                break
            new = augment.generate(agora.task, [agora.train[i]], agora.functions, agora.config.variants, rng, seen)
            seen.update(augment.example_key(agora.task, ex) for ex in new)
            out += new[:count - len(out)]
    for ex, label in zip(out, agora.labeler.predict(out) if out else []):
        ex["label"] = raw_label(agora.task, label)
    return out


def run_arm(args, agora, name, folder, train, budget, seed):
    """Fine-tune `budget["runs"]` grid trials on `train` (dev: E_sel) with epochs scaled to `budget`'s row-epochs;
    the best on E_sel scored on the held-out part. Returns the arm's record."""
    task, data_dir = agora.task, os.path.join(folder, "data")
    write_examples(task, task.train_segment, train, data_dir)
    for segment, examples in agora.selection.items():
        write_examples(task, segment, examples, data_dir)
    epochs = int(flag_value(args.finetune_args, "--epochs"))
    flags = scaled_flags(args.finetune_args, budget["row_epochs"] / (budget["runs"] * len(train) * epochs))
    runs = grid_trials(read_grid(args.grid), budget["runs"])
    TrialRunner(task.name, flags, args.gpus, args.in_process).run_pending(
        runs, folder, data_dir=data_dir, rerun_changed=args.rerun_changed, label=f"{name} seed {seed}")
    done = [r for r in collect(folder, runs) if r["score"] is not None]
    if not done:
        raise BortError(f"{folder}: every {name} trial failed; see the log.txt of each trial")
    best = done[0]
    _, score, predictions = score_examples(task, best["checkpoint"], agora.heldout, agora.tokenizer,
                                           agora.options.max_len)
    write_predictions(predictions_path(os.path.dirname(folder), name), task, agora.heldout, predictions)
    return {"E": best["score"], "heldout": score, "runs": len(runs),
            "row_epochs": len(runs) * len(train) * int(flag_value(flags, "--epochs"))}


def run_seed(args, size, seed, task):
    folder = os.path.join(args.output_dir, f"rows{size}", f"seed{seed}")
    data_dir = os.path.join(folder, "data")
    train = task.read("train", args.data_dir)
    if size > len(train):
        raise BortError(f"--train_rows {size}: {args.data_dir} has only {len(train)} training rows")
    rows = np.random.RandomState(seed).permutation(len(train))[:size]
    write_examples(task, "train", [train[i] for i in sorted(rows)], data_dir)
    for segment in task.dev_segments:
        write_examples(task, segment, dev_subset(task, segment, args), data_dir)
    config = config_of(AgoraConfig, args, output_dir=os.path.join(folder, "agora"), seed=seed,
                       finetune_args=args.finetune_args + ("--data_dir", data_dir))
    agora = Agora(config)
    result = agora.run()
    epochs = int(flag_value(args.finetune_args, "--epochs"))
    budget = {"runs": result["runs"], "row_epochs": result["row_runs"] * epochs}
    record = {"train_rows": size, "seed": seed, "generated": result["generated"], "rounds": result["rounds"],
              "replays": sum(result["replays"].values()), "labeler_score": result["teacher_accuracy"],
              "agora": {"E": result["E_score"], "heldout": result["heldout_score"], **budget}}
    record["grid"] = run_arm(args, agora, "grid", os.path.join(folder, "grid"), agora.train, budget, seed)
    extra = control_rows(agora, result["generated"], seed)
    record["control"] = run_arm(args, agora, "control", os.path.join(folder, "control"), agora.train + extra, budget,
                                seed)
    record["control"]["generated"] = len(extra)
    return record


def predictions_path(seed_folder, arm):
    """Where an arm's per-example held-out predictions are (Agora writes its own in its output folder)."""
    if arm == "agora":
        return os.path.join(seed_folder, "agora", "heldout_predictions.jsonl")
    return os.path.join(seed_folder, f"{arm}_predictions.jsonl")


def correctness(seed_folder, arm):
    return [r["prediction"] == r["label"] for _, r in read_jsonl(predictions_path(seed_folder, arm))]


def summarize(args, records):
    """{train_rows: {arm means and budgets, comparisons}} over seeds."""
    out = {}
    for size in args.train_rows:
        rows = [r for r in records if r["train_rows"] == size]
        folders = [os.path.join(args.output_dir, f"rows{size}", f"seed{r['seed']}") for r in rows]
        summary = {"seeds": len(rows), "arms": {}, "comparisons": {}}
        for arm in ARMS:
            summary["arms"][arm] = {k: float(np.mean([r[arm][k] for r in rows])) for k in ("heldout", "E", "runs",
                                                                                          "row_epochs")}
        for a, b in COMPARISONS:
            pooled_a = [c for f in folders for c in correctness(f, a)]
            pooled_b = [c for f in folders for c in correctness(f, b)]
            summary["comparisons"][f"{a}-{b}"] = {
                "seeds": paired_summary([r[a]["heldout"] for r in rows], [r[b]["heldout"] for r in rows]),
                "examples": prediction_summary(pooled_a, pooled_b)}
        out[str(size)] = summary
    return out


def write_report(path, task_name, records, summary, command):
    with atomic_write(path) as handle:
        for size, s in summary.items():
            handle.write(f"## {task_name}, {size} training rows, {s['seeds']} seeds\n\n| arm | held-out (mean) | "
                         f"E_sel (mean) | runs | row-epochs |\n|---|---|---|---|---|\n")
            for arm, m in s["arms"].items():
                handle.write(f"| {arm} | {m['heldout']:.4f} | {m['E']:.4f} | {m['runs']:.1f} | "
                             f"{m['row_epochs']:.0f} |\n")
            handle.write("\n| comparison | mean diff [95 % CI] | paired t p | sign p (W/L/T) | MDE (seeds) | "
                         "McNemar p (pooled) | disagreement | MDE (examples) |\n|---|---|---|---|---|---|---|---|\n")
            for name, c in s["comparisons"].items():
                d, e = c["seeds"], c["examples"]
                handle.write(f"| {name} | {d['mean']:+.4f} [{d['ci_low']:+.4f}, {d['ci_high']:+.4f}] | "
                             f"{d['t_p']:.3f} | {d['sign_p']:.3f} ({d['wins']}/{d['losses']}/{d['ties']}) | "
                             f"{d['mde']:.4f} | {e['mcnemar_p']:.3f} | {e['disagreement']:.3f} | {e['mde']:.4f} |\n")
            handle.write("\n| seed | grid | control | agora | generated | rounds | replays |\n"
                         "|---|---|---|---|---|---|---|\n")
            for r in records:
                if str(r["train_rows"]) == size:
                    handle.write(f"| {r['seed']} | {r['grid']['heldout']:.4f} | {r['control']['heldout']:.4f} | "
                                 f"{r['agora']['heldout']:.4f} | {r['generated']} | {r['rounds']} | "
                                 f"{r['replays']} |\n")
            handle.write("\n")
        handle.write(f"Command: `{command}`\n")


def main(argv=None):
    args = parse_args(argv)
    task = get_task(args.task_name)
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
    if not args.grid or flag_value(args.finetune_args, "--epochs") is None:
        raise BortError("--grid before `--` and --epochs after it: required (the budgets are matched in epochs)")
    finetune_options(args.finetune_args)  # the flags the driver reads parse before any run
    if len(args.seeds) < 8:
        print(f"note: {len(args.seeds)} seeds; the issue's table needs 8 or more", file=sys.stderr)
    records = [run_seed(args, size, seed, task) for size in args.train_rows for seed in args.seeds]
    summary = summarize(args, records)
    command = " ".join(["python -m experiments.agora_experiment"] + list(sys.argv[1:] if argv is None else argv))
    write_json(os.path.join(args.output_dir, "experiment.json"), {"task": task.name, "records": records,
                                                                  "summary": summary, "command": command})
    write_report(os.path.join(args.output_dir, "experiment.md"), task.name, records, summary, command)
    with open(os.path.join(args.output_dir, "experiment.md"), encoding="utf-8") as handle:
        print(handle.read())


if __name__ == "__main__":
    run_cli(main)()
