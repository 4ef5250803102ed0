#!/usr/bin/env python
"""Agora: the fine-tuning algorithm (--algorithm agora) or the plain grid search (default).

    # grid: every combination of a grid file is one finetune_bort.py trial; the best dev score wins
    python scripts/agora.py --task_name RTE --output_dir agora/RTE [--grid my_grid.json] [--gpus 0,1,2,3] \
        -- --data_dir ~/.mxnet/datasets/glue_rte --epochs 3
    # Agora: rounds of the grid on a growing training set, pruned, labelled by a trained model (docs/agora.md)
    python scripts/agora.py --algorithm agora --task_name RTE --output_dir agora/RTE \
        --teacher_parameters strong/model_bort_RTE.params --grid small_grid.json -- --data_dir ... --epochs 3
Flags after `--` go to every trial. Rerunning the same command resumes: finished trials (and Agora rounds) are kept.
The last line printed is a finetune_bort.py --only_inference command for the best model; it runs as printed.
"""
import argparse
import os
import sys


import bort  # noqa: E402,F401
from bort.agora.grid import inference_command, search, split_finetune_flags
from bort.agora.generators import GENERATORS
from bort.errors import BortError, run_cli


def parse_args(argv):
    argv, extra = split_finetune_flags(argv)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task_name", required=True)
    p.add_argument("--output_dir", required=True, help="one folder per trial (per round with agora), tables")
    p.add_argument("--grid", default=None, help="grid JSON, Θ for agora (default: scripts/agora_grids/<TASK>.json "
                                               "or default.json)")
    p.add_argument("--gpus", default="", help="comma-separated GPU ids, one trial per GPU at a time (default: CPU, "
                                             "trials in sequence)")
    p.add_argument("--retry_failed", action="store_true", help="rerun trials recorded as failed (grid)")
    p.add_argument("--algorithm", choices=["grid", "agora"], default="grid")
    a = p.add_argument_group("agora")
    a.add_argument("--teacher_parameters", default=None,
                   help="the trained model that labels generated examples: a checkpoint finetune_bort.py wrote for "
                        "this task (dev accuracy >= 2/3, same vocabulary)")
    a.add_argument("--generators", default="dropout,swap",
                   help=f"comma-separated generating functions among {', '.join(GENERATORS)} (mlm needs "
                        "--mlm_parameters)")
    a.add_argument("--mlm_parameters", default=None, help="pretrained Bort with its MLM head (e.g. model/bort.params)")
    a.add_argument("--variants", type=int, default=4, help="new examples per mistake (before duplicates go)")
    a.add_argument("--heldout_fraction", type=float, default=0.5,
                   help="part of the official dev set held out from E (scores only the final model)")
    a.add_argument("--split_seed", type=int, default=0, help="seed of the E / held-out split")
    a.add_argument("--seed", type=int, default=0, help="seed of the generating functions")
    a.add_argument("--max_rounds", type=int, default=10)
    a.add_argument("--max_replays", type=int, default=1, help="replays per round when its best E score falls")
    a.add_argument("--replay_margin", type=float, default=0.0,
                   help="replay a round whose best E score is below the previous round's plus this margin")
    args = p.parse_args(argv)
    try:
        args.gpus = [int(g) for g in args.gpus.split(",") if g.strip()]
    except ValueError:
        raise BortError(f"--gpus: expected comma-separated integers, found {args.gpus!r}") from None
    args.generators = [g.strip() for g in args.generators.split(",") if g.strip()]
    args.finetune_args = extra
    if args.algorithm == "agora":
        if not args.teacher_parameters:
            raise BortError("--teacher_parameters: required with --algorithm agora (a fine-tuned checkpoint of "
                            f"{args.task_name} with dev accuracy >= 2/3)")
        if args.variants <= 0 or args.max_rounds <= 0 or args.max_replays < 0:
            raise BortError("--variants and --max_rounds must be positive, --max_replays non-negative")
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.algorithm == "agora":
        from bort.agora.rounds import run_agora

        result = run_agora(args)
        held = "n/a" if result["heldout_score"] is None else f"{result['heldout_score']:.4f}"
        print(f"agora: {result['rounds']} rounds, {result['runs']} fine-tuning runs; table: "
              f"{os.path.join(args.output_dir, 'rounds.md')}")
        print(f"best: round {result['best']['round']} {result['best']['trial']} E_score={result['E_score']:.4f} "
              f"heldout_score={held} checkpoint={result['best']['checkpoint']}")
        print(f"predict: {result['predict']}")
        return 0
    rows = search(args)
    done = [r for r in rows if r["status"] == "done"]
    failed = [r for r in rows if r["status"] == "failed"]
    print(f"agora: {len(done)} done, {len(failed)} failed; table: {os.path.join(args.output_dir, 'results.md')}")
    if done and done[0]["checkpoint"]:
        best = done[0]
        print(f"best: {best['trial']} score={best['score']:.4f} checkpoint={best['checkpoint']}")
        print("predict: " + inference_command(args.task_name, best["checkpoint"],
                                              os.path.join(args.output_dir, "submission"), args.finetune_args))
    return 1 if failed and not done else 0


if __name__ == "__main__":
    sys.exit(run_cli(main)() or 0)
