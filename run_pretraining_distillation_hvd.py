"""Bort pretraining by knowledge distillation from a RoBERTa teacher, with Horovod.

    horovodrun -np 8 -H localhost:8 python run_pretraining_distillation_hvd.py --data 'shards/*.npz' \
        --data_eval 'dev/*.npz' --teacher_ckpt_dir roberta_large/ --teacher_ce_weight 0.5 \
        --distillation_temperature 2.0 --mlm_weight 0.1 --batch_size 1024 --use_avg_len --num_buckets 20

Without horovodrun the same command runs as one process. Flags and defaults follow the original script
(alexa/bort); see docs/distillation.md. The work is done by bort.pretrain.loop.
"""
import argparse
import dataclasses
import json
import logging

import bort  # noqa: F401  (before mxnet: thread settings)
from bort.errors import run_cli
from bort.locking import hold_directory, release_directory
from bort.pretrain.loop import PretrainConfig, preflight, pretrain, write_summary
from bort.train.distributed import Distributed

D = PretrainConfig()


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("data")
    g.add_argument("--data", required=True, help="training shards: comma-separated files, globs or directories")
    g.add_argument("--data_eval", default=None, help="evaluation shards (evaluated every --eval_interval steps "
                                                     "and, with the teacher, at the end)")
    g.add_argument("--batch_size", type=int, default=D.batch_size,
                   help="batch per worker: sequences, or tokens with --use_avg_len")
    g.add_argument("--total_batch_size", type=int, default=None,
                   help="global batch (workers x accumulate x batch_size); overrides --batch_size")
    g.add_argument("--batch_size_eval", type=int, default=D.batch_size_eval)
    g.add_argument("--accumulate", type=int, default=D.accumulate, help="micro-batches per optimizer step")
    g.add_argument("--use_avg_len", action="store_true",
                   help="bucket by average length: --batch_size counts tokens instead of sequences")
    g.add_argument("--num_buckets", type=int, default=D.num_buckets, help="length buckets for batching")
    g.add_argument("--num_eval_steps", type=int, default=D.num_eval_steps,
                   help="evaluate at most this many --batch_size_eval batches per worker (0: all of --data_eval)")
    g.add_argument("--allow_legacy_pickle", action="store_true",
                   help="read legacy gluon-nlp/Bort shards (pickled object arrays: only for files you trust)")
    g.add_argument("--dataset_name", default=None,
                   help="gluon-nlp dataset of the pretrained teacher loaded without --teacher_ckpt_dir (default "
                        "openwebtext_ccnews_stories_books_cased); the vocabulary itself comes from the shards")
    g = p.add_argument_group("models")
    g.add_argument("--model", default=D.model, help="student config name or JSON")
    g.add_argument("--student_params", default=None,
                   help="initialize the student from these parameters (a .params file or the original's "
                        "checkpoint_N/ directory; its pickled .states.NN only with --allow_legacy_pickle)")
    g.add_argument("--pretrained", action="store_true",
                   help="start the student from the released Bort, model/bort.params (unless --student_params)")
    g.add_argument("--teacher_model", default=D.teacher_model,
                   help="teacher config (used when the checkpoint has no JSON config beside it); "
                        "'none': no teacher, plain masked-LM pretraining (needs --teacher_ce_weight 0)")
    g.add_argument("--teacher_ckpt_dir", default=None,
                   help="teacher: a .params file, a directory with one .params file, or a local HF directory; "
                        "without it, gluon-nlp's pretrained --teacher_model from $MXNET_HOME/models (fetched "
                        "when missing)")
    g.add_argument("--random_teacher", action="store_true",
                   help="without --teacher_ckpt_dir: a randomly initialized teacher (tests only)")
    g.add_argument("--dropout", type=float, default=None,
                   help="override the student's dropout (encoder and word embeddings)")
    g.add_argument("--dropout_cudnn_off", action="store_true",
                   help="GPU: dropout masks from MXNet's generator, so that they follow --seed and a resume "
                        "is exact (MXNet's dropout kernel instead of cuDNN's fused one, same memory: docs/gpu.md, "
                        "'Reproducibility on GPU')")
    g.add_argument("--teacher_cache", nargs="?", const="beside", default=None, metavar="DIR",
                   help="train from the teacher's top-k cached by scripts/cache_teacher.py in DIR (alone or "
                        "'beside': the caches next to the shards) instead of running the teacher; with "
                        "--teacher_ckpt_dir the caches are checked against that teacher")
    g.add_argument("--teacher_cache_topk", type=int, default=None,
                   help="require caches of this k (default: any, the same for every shard)")
    g = p.add_argument_group("loss")
    g.add_argument("--teacher_ce_weight", type=float, default=D.teacher_ce_weight,
                   help="weight of T^2 KL(teacher || student) on masked positions")
    g.add_argument("--distillation_temperature", type=float, default=D.distillation_temperature)
    g.add_argument("--mlm_weight", type=float, default=D.mlm_weight, help="weight of the masked-LM cross-entropy")
    g.add_argument("--legacy_kd_loss", action="store_true",
                   help="reproduce the original's KD term (log-softmax of the student's probabilities, "
                        "averaged over the vocabulary); wrong, for reproducing old runs only")
    g = p.add_argument_group("optimization")
    g.add_argument("--num_steps", type=int, default=D.num_steps)
    g.add_argument("--lr", type=float, default=D.lr)
    g.add_argument("--warmup_ratio", type=float, default=D.warmup_ratio)
    g.add_argument("--optimizer", default=D.optimizer, choices=["bertadam", "lamb", "adam"])
    g.add_argument("--weight_decay", type=float, default=D.weight_decay)
    g.add_argument("--max_grad_norm", type=float, default=D.max_grad_norm, help="global-norm clipping (0: off)")
    g.add_argument("--dtype", default=D.dtype, choices=["float16", "float32"],
                   help="float16 (multi-precision optimizer, dynamic loss scaling) needs a GPU; on CPU use "
                        "float32 (or set BORT_CPU_FLOAT16=1 to test the float16 code path on CPU)")
    g.add_argument("--max_consecutive_skips", type=int, default=D.max_consecutive_skips,
                   help="float16: stop with an error after this many consecutive steps with non-finite gradients")
    g.add_argument("--cpu_only", action="store_true")
    g.add_argument("--seed", type=int, default=D.seed)
    g = p.add_argument_group("checkpoints and logging")
    g.add_argument("--ckpt_dir", default=D.ckpt_dir)
    g.add_argument("--ckpt_interval", type=int, default=D.ckpt_interval)
    g.add_argument("--start_step", default=D.start_step, help="resume from this checkpoint step, or 'latest'")
    g.add_argument("--keep_last_checkpoints", type=int, default=D.keep_last_checkpoints, metavar="N",
                   help="after each checkpoint, delete older ones but the newest N (0: keep all, as the original)")
    g.add_argument("--keep_every_checkpoints", type=int, default=D.keep_every_checkpoints, metavar="M",
                   help="with --keep_last_checkpoints: also keep the checkpoints of steps divisible by M")
    g.add_argument("--overwrite_ckpt_dir", action="store_true",
                   help="a fresh run into a --ckpt_dir holding another run's checkpoints deletes them (without it: "
                        "an error)")
    g.add_argument("--eval_interval", type=int, default=None, help="default: --ckpt_interval (as the original)")
    g.add_argument("--log_interval", type=int, default=D.log_interval)
    g.add_argument("--metrics_file", default=None, help="JSON lines (default: <ckpt_dir>/metrics.jsonl)")
    g.add_argument("--no_progress", action="store_true",
                   help="no progress bar (on a terminal) or progress line per --log_interval (in a log)")
    g.add_argument("--preflight_workers", type=int, default=None, help=argparse.SUPPRESS)  # the launcher's check
    g.add_argument("--summary_json", default=None, help="write the final metrics and a parameter checksum here "
                                                   "('{rank}' in the name: one file per rank)")
    g.add_argument("--profile", default=None, metavar="FILE",
                   help="write an MXNet profiler trace (Chrome tracing JSON) of steps 10-13 to FILE (+ rank)")
    g.add_argument("--verbose", action="store_true")
    return p


def check_pretraining_inputs(config, dist):
    """Shards that fit the student (data.shard_files), and with `dist` one run per --ckpt_dir (bort.locking)."""
    from bort.weights.checkpoint import read_config
    from bort.model import get_config
    from data.shard_files import check_shards_fit, list_shards

    from bort.weights.store import student_params_path

    params_path = student_params_path(config.student_params, config.pretrained)  # a file or the original's layout
    student = read_config(params_path, config.model) if params_path else get_config(config.model)
    shards = list_shards(config.data) + (list_shards(config.data_eval) if config.data_eval else [])
    check_shards_fit(shards, student.max_length, allow_legacy_pickle=config.allow_legacy_pickle,
                     what="--data/--data_eval")
    if dist is not None and dist.is_root:
        hold_directory(config.ckpt_dir, "--ckpt_dir")


def main(argv=None):
    args = build_parser().parse_args(argv, argparse.Namespace(model=None))  # None: --model left out
    named_model, args.model = args.model, args.model or D.model
    logging.basicConfig(format="%(asctime)s %(levelname)s %(message)s",
                        level=logging.DEBUG if args.verbose else logging.INFO)
    fields = {f.name for f in dataclasses.fields(PretrainConfig)}
    config = PretrainConfig(**{k: v for k, v in vars(args).items() if k in fields},
                            progress=not args.no_progress)
    from bort.weights.store import check_student_params, student_params_path

    check_student_params(student_params_path(config.student_params, config.pretrained), named_model,
                         config.teacher_ckpt_dir, config.teacher_model)
    if args.preflight_workers:
        preflight(config, args.preflight_workers)
        check_pretraining_inputs(config, None)  # shards against the student too, before horovodrun starts
        # Another run holding --ckpt_dir: say so now, before the launcher writes its train.log there.
        if hold_directory(config.ckpt_dir, "--ckpt_dir"):
            release_directory(config.ckpt_dir, remove_if_unused=True)
        return
    dist = Distributed()
    check_pretraining_inputs(config, dist)
    result = pretrain(config, dist)
    if args.summary_json and (result["rank"] == 0 or "{rank}" in args.summary_json):
        write_summary(args.summary_json, result, result["rank"])
    if result.get("eval") and result["rank"] == 0:
        print(json.dumps({k: result["eval"][k] for k in ("mlm_loss", "kd_loss", "mlm_acc", "teacher_agreement")}))
    dist.shutdown()


if __name__ == "__main__":
    run_cli(main)()
