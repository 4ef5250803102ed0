"""Optimal subarchitecture extraction (de Wynter 2020, the search that found Bort) for any teacher.

    python scripts/extract_subarchitecture.py --space bort_paper --train 'shards/train/*.npz' \
        --heldout shards/heldout --teacher_cache beside --eps 4 --steps 300 --thetas '[{"lr": 1e-4}]' \
        --output_dir extraction_run

Every candidate of the space (JSON: lists per dimension, constraints, the maximum point T; shipped: bort_paper,
cpu_scaled) gets its analytic size and operation count and a CPU timing; the pivots of the ε-intervals (sorted by
size) are distilled s steps from the teacher cache per hyperparameter set and scored on the held-out shards; W
ranks them. Interrupted runs resume (rerun the same command); under horovodrun, or with --gpus 0,1,..., candidates
are spread over ranks/GPUs. Outputs in --output_dir: results.{json,csv,md}, plot.png. Guide: docs/extraction.md.
"""
import argparse
import json
import logging

import bort  # noqa: F401  (before mxnet)
from bort.errors import run_cli
from bort.pretrain.extraction.evaluate import PROXIES
from bort.pretrain.extraction.fptas import PIVOTS
from bort.pretrain.extraction.runner import SPEEDS, SearchSettings, run_search


def build_parser():
    d = SearchSettings()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("search space")
    g.add_argument("--space", default=d.space,
                   help="a search-space JSON file, or a shipped one: bort_paper, cpu_scaled")
    g.add_argument("--maximum_point", default=None, help="T as D<layers>-A<heads>-H<hidden>-I<intermediate> "
                                                         "(default: the space's, e.g. the teacher's shape)")
    g = p.add_argument_group("teacher and data")
    g.add_argument("--train", required=True, help="training shards (files, globs or directories)")
    g.add_argument("--heldout", required=True, help="held-out shards B the error surrogate is measured on")
    g.add_argument("--teacher_cache", default=None,
                   help="directory of <shard>.topk caches of both shard sets, or 'beside' (scripts/cache_teacher.py)")
    g.add_argument("--teacher_ckpt_dir", default=None, help="without --teacher_cache: the teacher, run once to "
                                                            "cache its top-k beside the shards")
    g.add_argument("--teacher_model", default=d.teacher_model, help="teacher config when the checkpoint has no JSON")
    g = p.add_argument_group("FPTAS")
    g.add_argument("--eps", type=int, default=d.eps, help="ε: candidates per interval; one pivot per interval is "
                                                          "trained (1: exhaustive)")
    g.add_argument("--pivot", default=d.pivot, choices=PIVOTS, help="which member of an interval is trained")
    g.add_argument("--refine", action="store_true", help="also train the other members of the winning interval")
    g.add_argument("--steps", type=int, default=d.steps, help="s: distillation steps per candidate and θ")
    g.add_argument("--thetas", default=d.thetas, help="Θ: JSON list of hyperparameter sets (inline or a file) over "
                                                      "lr, warmup_ratio, weight_decay, batch_size, optimizer, "
                                                      "max_grad_norm, dropout, seed; the best set counts")
    g.add_argument("--error_proxy", default=d.error_proxy, choices=PROXIES,
                   help="ê: held-out distillation loss, MLM loss, or 1 - MLM accuracy")
    g.add_argument("--speed", default=d.speed, choices=SPEEDS,
                   help="i in W: measured CPU wall clock, or the analytic operation count (the paper's surrogate)")
    g = p.add_argument_group("training of each candidate")
    g.add_argument("--base_model", default=d.base_model, help="named config or JSON giving dropout, max length")
    g.add_argument("--max_length", type=int, default=None, help="position embeddings (default: the base model's)")
    g.add_argument("--batch_size", type=int, default=d.batch_size)
    g.add_argument("--batch_size_eval", type=int, default=d.batch_size_eval)
    g.add_argument("--mlm_weight", type=float, default=d.mlm_weight)
    g.add_argument("--teacher_ce_weight", type=float, default=d.teacher_ce_weight)
    g.add_argument("--distillation_temperature", type=float, default=d.temperature)
    g.add_argument("--seed", type=int, default=d.seed)
    g.add_argument("--dtype", default=d.dtype, choices=["float32", "float16"])
    g.add_argument("--cpu_only", action="store_true")
    g.add_argument("--gpus", default=None, help="comma-separated GPU ids: one worker per GPU (without horovodrun)")
    g = p.add_argument_group("timing")
    g.add_argument("--timing_batch", type=int, default=d.timing_batch)
    g.add_argument("--timing_seq_len", type=int, default=d.timing_seq_len)
    g.add_argument("--timing_threads", type=int, default=d.timing_threads)
    g.add_argument("--timing_repeats", type=int, default=d.timing_repeats)
    g.add_argument("--timing_rounds", type=int, default=d.timing_rounds)
    g = p.add_argument_group("output")
    g.add_argument("--output_dir", default=d.out_dir)
    g.add_argument("--candidate_dir", default=None, help="per-candidate results (default <output_dir>/candidates); "
                                                         "searches with the same training settings may share it")
    g.add_argument("--keep_checkpoints", action="store_true", help="keep each candidate's trained parameters")
    g.add_argument("--no_progress", action="store_true")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(message)s", level=logging.INFO)
    settings = SearchSettings(
        space=args.space, train=args.train, heldout=args.heldout, out_dir=args.output_dir,
        candidate_dir=args.candidate_dir, teacher_cache=args.teacher_cache, teacher_ckpt_dir=args.teacher_ckpt_dir,
        teacher_model=args.teacher_model, maximum_point=args.maximum_point, eps=args.eps, pivot=args.pivot,
        refine=args.refine, steps=args.steps, thetas=args.thetas, error_proxy=args.error_proxy, speed=args.speed,
        base_model=args.base_model, max_length=args.max_length, batch_size=args.batch_size,
        batch_size_eval=args.batch_size_eval, mlm_weight=args.mlm_weight, teacher_ce_weight=args.teacher_ce_weight,
        temperature=args.distillation_temperature, seed=args.seed, dtype=args.dtype, cpu_only=args.cpu_only,
        timing_batch=args.timing_batch, timing_seq_len=args.timing_seq_len, timing_threads=args.timing_threads,
        timing_repeats=args.timing_repeats, timing_rounds=args.timing_rounds, gpus=args.gpus,
        keep_checkpoints=args.keep_checkpoints, progress=not args.no_progress)
    summary = run_search(settings)
    if summary is not None:
        print(json.dumps({k: summary[k] for k in ("chosen", "candidates", "evaluated", "trained_this_run",
                                                 "train_seconds", "wall_seconds")}))


if __name__ == "__main__":
    run_cli(main)()
