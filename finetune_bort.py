#!/usr/bin/env python
"""Fine-tune Bort on a GLUE, SuperGLUE or RACE task, or (--only_inference) write leaderboard files.

    python finetune_bort.py --task_name MRPC --pretrained_parameters model/bort.params --gpu 0
    python finetune_bort.py --task_name MRPC --only_inference --model_parameters output_dir/model_bort_MRPC.params

Flags and defaults are the original's; see the README ('Fine-tuning') and bort/finetune.py.
"""
import argparse
import logging

import bort  # noqa: F401  (before mxnet)
from bort.errors import run_cli
from bort.tasks import task_names
from bort.tokenizer import add_tokenizer_args, tokenizer_from_args


def get_parser():
    p = argparse.ArgumentParser(description="Bort fine-tuning for GLUE, SuperGLUE and RACE tasks.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--task_name", required=True, choices=task_names(), metavar="TASK",
                   help=f"one of {', '.join(task_names())}")
    p.add_argument("--data_dir", default=None,
                   help="the task's data directory (default: $MXNET_HOME/datasets/<task dir>, e.g. "
                        "~/.mxnet/datasets/glue_mrpc, ~/.mxnet/datasets/superglue_multirc, ~/.mxnet/datasets/race)")
    p.add_argument("--diagnostic_data_dir", default=None,
                   help="GLUE diagnostic (AX) directory with diagnostic.tsv, predicted with the MNLI model "
                        "(default: ~/.mxnet/datasets/glue_diagnostic)")
    p.add_argument("--epochs", type=int, default=3, help="number of epochs")
    p.add_argument("--ramp_up_epochs", type=int, default=3,
                   help="epochs over which the warmup/decay schedule runs")
    p.add_argument("--training_steps", type=int, default=None, help="total steps (overrides --epochs)")
    p.add_argument("--batch_size", type=int, default=32, help="examples per device and step")
    p.add_argument("--dev_batch_size", type=int, default=8, help="batch size for dev and test")
    p.add_argument("--init", default="uniform", choices=["gaussian", "uniform", "orthogonal", "xavier"],
                   help="initialization of the task head")
    p.add_argument("--prob", type=float, default=0.5, help="scale of the head's initialization")
    p.add_argument("--lr", type=float, default=3e-5, help="peak learning rate")
    p.add_argument("--epsilon", type=float, default=1e-6, help="Adam epsilon")
    p.add_argument("--warmup_ratio", type=float, default=0.1, help="fraction of the steps spent warming up")
    p.add_argument("--weight_decay", type=float, default=0.01)
    p.add_argument("--dropout", type=float, default=0.1, help="dropout of the task head")
    p.add_argument("--max_len", type=int, default=512, help="maximum sequence length (with special tokens)")
    p.add_argument("--seed", type=int, default=2)
    p.add_argument("--gpu", type=int, default=None, help="GPU to use; 999 or unset: CPU")
    p.add_argument("--accumulate", type=int, default=None, help="batches per update (gradient accumulation)")
    p.add_argument("--log_interval", type=int, default=10, help="steps between training log records")
    p.add_argument("--no_distributed", action="store_true",
                   help="do not use Horovod even when launched by horovodrun")
    p.add_argument("--model_config", default="bort_4_8_768_1024",
                   help="architecture when the parameter file has no JSON beside it (or with "
                        "--pretrained_parameters none)")
    p.add_argument("--pretrained_parameters", default="model/bort.params",
                   help="pretrained Bort parameters ('none': random initialization, for tests)")
    p.add_argument("--model_parameters", default=None, help="a fine-tuned checkpoint (of this task)")
    p.add_argument("--output_dir", default="./output_dir", help="checkpoints, metrics.jsonl, leaderboard files")
    p.add_argument("--only_inference", action="store_true", help="skip training: evaluate dev, predict test")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16"])
    p.add_argument("--early_stop", type=int, default=None, help="epochs without dev improvement before stopping")
    add_tokenizer_args(p, dataset_name="openwebtext_ccnews_stories_books_cased")
    p.add_argument("--dataset", dest="dataset_name", default=argparse.SUPPRESS,
                   help="the original's name for --dataset_name")
    return p


def main(argv=None):
    args = get_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s:%(name)s:%(asctime)s %(message)s",
                        datefmt="%H:%M:%S")
    from bort.finetune import check_model_files, run
    from bort.locking import release_directory

    check_model_files(args)
    try:
        result = run(args, tokenizer_from_args(args))
    except BaseException:  # bort.locking: let go of --output_dir now, and remove it if this run created it empty
        release_directory(args.output_dir, remove_if_unused=True)
        raise
    if result.get("checkpoint"):
        print(f"checkpoint={result['checkpoint']}")
    if result.get("score") is not None:
        print(f"dev_score={result['score']:.4f}")
    for path in result.get("submissions", []):
        print(f"submission={path}")


if __name__ == "__main__":
    run_cli(main)()
