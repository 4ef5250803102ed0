#!/usr/bin/env python
"""Agora-style grid search: every combination of a grid file is one finetune_bort.py trial.

    python scripts/agora.py --task_name RTE --output_dir agora/RTE [--grid my_grid.json] [--gpus 0,1,2,3] \
        -- --data_dir ~/.mxnet/datasets/glue_rte --epochs 3
Flags after `--` go to every trial. Rerunning the same command resumes: finished trials are skipped.
The best trial's checkpoint goes straight to `finetune_bort.py --only_inference --model_parameters CKPT`.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import bort  # noqa: E402,F401
from bort.agora import search  # noqa: E402
from bort.errors import BortError, run_cli  # noqa: E402


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1:]
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task_name", required=True)
    p.add_argument("--output_dir", required=True, help="one folder per trial, results.csv and results.md")
    p.add_argument("--grid", default=None, help="grid JSON (default: scripts/agora_grids/<TASK>.json or default.json)")
    p.add_argument("--gpus", default="", help="comma-separated GPU ids, one trial per GPU at a time (default: CPU, "
                                             "trials in sequence)")
    p.add_argument("--retry_failed", action="store_true", help="rerun trials recorded as failed")
    args = p.parse_args(argv)
    try:
        args.gpus = [int(g) for g in args.gpus.split(",") if g.strip()]
    except ValueError:
        raise BortError(f"--gpus: expected comma-separated integers, found {args.gpus!r}") from None
    args.finetune_args = extra
    rows = search(args)
    done = [r for r in rows if r["status"] == "done"]
    failed = [r for r in rows if r["status"] == "failed"]
    print(f"agora: {len(done)} done, {len(failed)} failed; table: {os.path.join(args.output_dir, 'results.md')}")
    if done and done[0]["checkpoint"]:
        best = done[0]
        print(f"best: {best['trial']} score={best['score']:.4f} checkpoint={best['checkpoint']}")
        print(f"predict: python finetune_bort.py --task_name {args.task_name} --only_inference "
              f"--model_parameters {best['checkpoint']} --output_dir {os.path.join(args.output_dir, 'submission')}")
    return 1 if failed and not done else 0


if __name__ == "__main__":
    sys.exit(run_cli(main)() or 0)
