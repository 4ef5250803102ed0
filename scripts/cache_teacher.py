"""Run the teacher once over pretraining shards and cache its top-k at every masked position.

    horovodrun -np 8 -H localhost:8 python scripts/cache_teacher.py --data 'shards/*.npz' \
        --teacher_ckpt_dir roberta_large/ --cache_dir teacher_cache/ --topk 16 --distillation_temperature 2.0

then pretrain from the cache: run_pretraining_distillation_hvd.py ... --teacher_cache teacher_cache/.
Each rank caches the shards i with i mod size == rank; a shard whose cache exists and is valid is skipped, so an
interrupted run can simply be started again. `--cache_dir beside` writes `part-NNN.npz.topk` next to each shard.
One run at a time per cache directory: the run locks --cache_dir (with 'beside', every directory of the shards)
for its lifetime, and a second run into it stops with a one-line error naming the holder (bort.locking).
See docs/teacher_cache.md for the file format and the loss.
"""
import argparse
import json
import logging
import os

import bort  # noqa: E402,F401  (before mxnet)
from bort.errors import BortError, run_cli
from bort.locking import hold_directory, release_directory
from bort.pretrain.teacher_cache import BESIDE, DEFAULT_TOPK, build_cache
from bort.train.distributed import Distributed
from data.shard_files import list_shards


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", required=True, help="shards: comma-separated files, globs or directories")
    p.add_argument("--cache_dir", default=BESIDE,
                   help=f"directory for the <shard>.topk files ('{BESIDE}': next to each shard)")
    p.add_argument("--teacher_ckpt_dir", default=None,
                   help="teacher: a .params file, a directory with one .params file, or a local HF directory; "
                        "without it, gluon-nlp's pretrained --teacher_model from $MXNET_HOME/models (fetched when "
                        "missing), as in the pretrainer")
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
    p.add_argument("--seed", type=int, default=0, help="seed of MXNet's and numpy's random generators")
    p.add_argument("--no_progress", action="store_true")
    return p


def hold_cache_directories(data, cache_dir, dist):
    """Rank 0 locks the directories this run writes caches into and returns them (other ranks: []); an error
    (another run holds one, bad --data) reaches every rank, so that all stop with the same one line."""
    error, directories = None, []
    if dist.is_root:
        try:
            if cache_dir in (None, "", BESIDE):
                directories = sorted({os.path.dirname(os.path.abspath(p)) for p in list_shards(data)})
            else:
                directories = [cache_dir]
            for directory in directories:
                hold_directory(directory, "--cache_dir")
        except BortError as err:
            error = str(err)
    error = dist.broadcast_object(error, "cache_lock")
    if error:
        raise BortError(error)
    return directories


def main(argv=None):
    args = build_parser().parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(message)s", level=logging.INFO)
    dist = Distributed()
    held = hold_cache_directories(args.data, args.cache_dir, dist)
    try:
        summary = build_cache(args.data, args.cache_dir, args.teacher_ckpt_dir, args.teacher_model, args.topk,
                              args.distillation_temperature, args.batch_size, args.dtype, args.cpu_only,
                              args.overwrite, args.allow_legacy_pickle, args.seed, dist, not args.no_progress)
    finally:
        for directory in held:
            release_directory(directory, remove_if_unused=True)
    if dist.is_root:
        print(json.dumps(summary))
    dist.shutdown()


if __name__ == "__main__":
    run_cli(main)()
