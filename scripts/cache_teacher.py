"""Run the teacher once over pretraining shards and cache its top-k at every masked position.

    horovodrun -np 8 -H localhost:8 python scripts/cache_teacher.py --data 'shards/*.npz' \
        --teacher_ckpt_dir roberta_large/ --cache_dir teacher_cache/ --topk 16 --distillation_temperature 2.0

then pretrain from the cache: run_pretraining_distillation_hvd.py ... --teacher_cache teacher_cache/.
Each rank caches the shards i with i mod size == rank; a shard whose cache exists and is valid is skipped, so an
interrupted run can simply be started again. `--cache_dir beside` writes `part-NNN.npz.topk` next to each shard.
See docs/teacher_cache.md for the file format and the loss.
"""
import argparse
import json
import logging


import bort  # noqa: E402,F401  (before mxnet)
from bort.errors import run_cli
from bort.pretrain.teacher_cache import BESIDE, DEFAULT_TOPK, build_cache
from bort.train.distributed import Distributed


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", required=True, help="shards: comma-separated files, globs or directories")
    p.add_argument("--cache_dir", default=BESIDE,
                   help=f"directory for the <shard>.topk files ('{BESIDE}': next to each shard)")
    p.add_argument("--teacher_ckpt_dir", default=None,
                   help="teacher: a .params file, a directory with one .params file, or a local HF directory "
                        "(as in the pretrainer); without it a random teacher (tests only)")
    p.add_argument("--teacher_model", default="roberta_24_1024_16", help="teacher config when the checkpoint has "
                                                                         "no JSON config beside it")
    p.add_argument("--topk", type=int, default=DEFAULT_TOPK, help="teacher tokens kept per masked position")
    p.add_argument("--distillation_temperature", type=float, default=2.0,
                   help="the pretraining temperature: the cache stores the log-normalizer and rest mass at it")
    p.add_argument("--batch_size", type=int, default=32, help="sequences per teacher forward")
    p.add_argument("--dtype", default="float16", choices=["float16", "float32"],
                   help="teacher dtype on GPU (CPU runs use float32)")
    p.add_argument("--cpu_only", action="store_true")
    p.add_argument("--overwrite", action="store_true", help="re-cache shards whose cache is already valid")
    p.add_argument("--allow_legacy_pickle", action="store_true",
                   help="read legacy gluon-nlp/Bort shards (pickled object arrays: only for files you trust)")
    p.add_argument("--seed", type=int, default=0, help="initializes a random teacher (tests only)")
    p.add_argument("--no_progress", action="store_true")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(message)s", level=logging.INFO)
    dist = Distributed()
    summary = build_cache(args.data, args.cache_dir, args.teacher_ckpt_dir, args.teacher_model, args.topk,
                          args.distillation_temperature, args.batch_size, args.dtype, args.cpu_only,
                          args.overwrite, args.allow_legacy_pickle, args.seed, dist, not args.no_progress)
    if dist.is_root:
        print(json.dumps(summary))
    dist.shutdown()


if __name__ == "__main__":
    run_cli(main)()
