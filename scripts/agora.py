#!/usr/bin/env python
"""Agora: the fine-tuning algorithm (--algorithm agora) or the plain grid search (default).

    # grid: every combination of a grid file is one finetune_bort.py trial; the best dev score wins
    python scripts/agora.py --task_name RTE --output_dir agora/RTE [--grid my_grid.json] [--gpus 0,1,2,3] \
        -- --data_dir ~/.mxnet/datasets/glue_rte --epochs 3
    # Agora: rounds of the grid on a growing training set, pruned, labelled by a trained model (docs/agora.md)
    python scripts/agora.py --algorithm agora --task_name RTE --output_dir agora/RTE \
        --teacher_parameters strong/model_bort_RTE.params --grid small_grid.json -- --data_dir ... --epochs 3
Flags after `--` go to every trial. Rerunning the same command resumes: finished trials (and Agora rounds) are kept.
With --in_process each trial runs inside this process (no Python start-up per trial; for small CPU trials).
The last line printed is a finetune_bort.py --only_inference command for the best model; it runs as printed.
"""
import argparse
import os
import sys

import bort  # noqa: F401
from bort.agora.grid import inference_command, search
from bort.agora.options import (AgoraConfig, GridConfig, add_agora_flags, add_trial_flags, config_of,
                                parse_flags)
from bort.errors import run_cli


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task_name", required=True)
    p.add_argument("--output_dir", required=True, help="one folder per trial (per round with agora), tables")
    add_trial_flags(p)
    p.add_argument("--retry_failed", action="store_true", help="rerun trials recorded as failed (grid)")
    p.add_argument("--algorithm", choices=["grid", "agora"], default="grid")
    a = p.add_argument_group("agora")
    add_agora_flags(a)
    a.add_argument("--seed", type=int, default=AgoraConfig.seed, help="seed of the generating functions")
    return p


def main(argv=None):
    flags = parse_flags(build_parser(), argv)
    if flags.algorithm == "agora":
        from bort.agora.rounds import run_agora

        config = config_of(AgoraConfig, flags)
        result = run_agora(config)
        held = "n/a" if result["heldout_score"] is None else f"{result['heldout_score']:.4f}"
        print(f"agora: {result['rounds']} rounds, {result['runs']} fine-tuning runs; table: "
              f"{os.path.join(config.output_dir, 'rounds.md')}")
        print(f"best: round {result['best']['round']} {result['best']['trial']} E_score={result['E_score']:.4f} "
              f"heldout_score={held} checkpoint={result['best']['checkpoint']}")
        print(f"predict: {result['predict']}")
        return 0
    config = config_of(GridConfig, flags)
    rows = search(config)
    done = [r for r in rows if r["status"] == "done"]
    failed = [r for r in rows if r["status"] == "failed"]
    print(f"agora: {len(done)} done, {len(failed)} failed; table: {os.path.join(config.output_dir, 'results.md')}")
    if done and done[0]["checkpoint"]:
        best = done[0]
        print(f"best: {best['trial']} score={best['score']:.4f} checkpoint={best['checkpoint']}")
        print("predict: " + inference_command(config.task_name, best["checkpoint"],
                                              os.path.join(config.output_dir, "submission"), config.finetune_args))
    return 1 if failed and not done else 0


if __name__ == "__main__":
    sys.exit(run_cli(main)() or 0)
