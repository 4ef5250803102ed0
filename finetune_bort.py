#!/usr/bin/env python
"""Fine-tune Bort on a GLUE, SuperGLUE or RACE task, or (--only_inference) write leaderboard files.

    python finetune_bort.py --task_name MRPC --pretrained_parameters model/bort.params --gpu 0
    python finetune_bort.py --task_name MRPC --only_inference --model_parameters output_dir/model_bort_MRPC.params
    python finetune_bort.py --task_name SST --pretrained_parameters path/to/hf_bert_dir   # its own tokenizer

Flags and defaults are the original's; see docs/finetuning.md, docs/differences-finetuning.md and
bort/finetune/config.py. Every flag of the original's finetune_bort.py parses; its data-location flags
(--multirc_test_location, --record_test_location, --record_dev_location, --race_dataset_location) are mapped onto
--data_dir. The flags become a `FinetuneConfig` (bort.finetune.config); `bort.finetune.loop.run` does the rest.
"""
import argparse
import dataclasses
import logging
import os

import bort  # noqa: F401  (before mxnet)
from bort.errors import BortError, run_cli
from bort.finetune.config import FinetuneConfig
from bort.finetune.tasks import get_task, task_names
from bort.text.gluonnlp_files import GLUONNLP_DATASET
from bort.text.tokenizer import add_tokenizer_args, tokenizer_from_args

D = FinetuneConfig()
LOG_FORMAT = "%(levelname)s:%(name)s:%(asctime)s %(message)s"


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
    p.add_argument("--epochs", type=int, default=D.epochs, help="number of epochs")
    p.add_argument("--ramp_up_epochs", type=int, default=D.ramp_up_epochs,
                   help="epochs over which the warmup/decay schedule runs")
    p.add_argument("--training_steps", type=int, default=None, help="total steps (overrides --epochs)")
    p.add_argument("--batch_size", type=int, default=D.batch_size, help="examples per device and step")
    p.add_argument("--dev_batch_size", type=int, default=D.dev_batch_size, help="batch size for dev and test")
    p.add_argument("--bucket_batches", type=int, default=D.bucket_batches,
                   help="training batches whose examples are sorted by length together, for less padding (1: random "
                        "batches); default 100, and 1 for regression tasks (STS-B's rows are ordered by source, "
                        "whose lengths and scores differ: length-sorted batches each held one slice of the scores "
                        "and the regression did not learn)")
    p.add_argument("--init", default=D.init, choices=["gaussian", "uniform", "orthogonal", "xavier"],
                   help="initialization of the task head")
    p.add_argument("--prob", type=float, default=D.prob, help="scale of the head's initialization")
    p.add_argument("--lr", type=float, default=D.lr, help="peak learning rate")
    p.add_argument("--epsilon", type=float, default=D.epsilon, help="Adam epsilon")
    p.add_argument("--warmup_ratio", type=float, default=D.warmup_ratio, help="fraction of the steps spent warming up")
    p.add_argument("--weight_decay", type=float, default=D.weight_decay)
    p.add_argument("--dropout", type=float, default=D.dropout, help="dropout of the task head")
    p.add_argument("--max_len", type=int, default=None,
                   help="maximum sequence length with special tokens (default 512, or the model's positions if fewer)")
    p.add_argument("--seed", type=int, default=D.seed)
    p.add_argument("--gpu", type=int, default=None, help="GPU to use; 999 or unset: CPU")
    p.add_argument("--accumulate", type=int, default=None, help="batches per update (gradient accumulation)")
    p.add_argument("--log_interval", type=int, default=D.log_interval, help="steps between training log records")
    p.add_argument("--no_distributed", nargs="?", const=True, default=False, type=parse_bool,
                   help="do not use Horovod even when launched by horovodrun (the original's form "
                        "'--no_distributed True' works too)")
    p.add_argument("--model_config", default=D.model_config,
                   help="architecture when the parameter file has no JSON beside it (or with "
                        "--pretrained_parameters none)")
    p.add_argument("--pretrained_parameters", default=D.pretrained_parameters,
                   help="pretrained encoder: Bort's .params (with its JSON), a converted HF checkpoint's .params "
                        "with its JSON, or a local HF directory (BERT or RoBERTa; without vocabulary flags its own "
                        "tokenizer is used); 'none': random initialization, for tests")
    p.add_argument("--model_parameters", default=None, help="a fine-tuned checkpoint (of this task)")
    p.add_argument("--output_dir", default=D.output_dir, help="checkpoints, metrics.jsonl, leaderboard files")
    p.add_argument("--only_inference", action="store_true", help="skip training: evaluate dev, predict test")
    p.add_argument("--dtype", default=D.dtype, choices=["float32", "float16"])
    p.add_argument("--early_stop", type=int, default=None, help="epochs without dev improvement before stopping")
    p.add_argument("--cb_expansion", action="store_true",
                   help="CB: shorten texts of more than three sentences to their last four pieces, as the original "
                        "always did (its CBExpansion); default: keep them whole (see docs/differences-finetuning.md)")
    p.add_argument("--race_submission_format", default=D.race_submission_format, choices=["json", "original"],
                   help="RACE test predictions: 'json' writes <TASK>.json {question id: letter}; 'original' writes "
                        "the original's RACE-M.txt / RACE-H.txt (each test article as one JSON line with 'answers' "
                        "replaced by the predicted letters)")
    original = p.add_argument_group("flags of the original kept so that its command lines run")
    original.add_argument("--momentum", type=float, default=0.9,
                          help="accepted and unused, as in the original (BERTAdam has no momentum term)")
    original.add_argument("--use_scheduler", default=True, type=parse_bool,
                          help="accepted; the warmup/decay schedule is always used, as in the original (whose "
                               "type=bool read every value, 'False' included, as true)")
    for flag, what in (("multirc_test_location", "MultiRC's test.jsonl"),
                       ("record_test_location", "ReCoRD's test.jsonl"),
                       ("record_dev_location", "ReCoRD's val.jsonl"),
                       ("race_dataset_location", "the RACE directory (train/, dev/, test/)")):
        original.add_argument(f"--{flag}", default=None,
                              help=f"{what}; mapped onto --data_dir (the file's directory; it must agree with "
                                   f"--data_dir when both are given); ignored for other tasks")
    add_tokenizer_args(p, dataset_name=GLUONNLP_DATASET)
    p.add_argument("--dataset", dest="dataset_name", default=argparse.SUPPRESS,
                   help="the original's name for --dataset_name")
    return p


def parse_bool(value):
    if isinstance(value, bool):
        return value
    if value.lower() in ("true", "1", "yes"):
        return True
    if value.lower() in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected True or False, got {value!r}")


# The original's data-location flags: (flag, tasks it applies to, file name expected; None for a directory).
LOCATION_FLAGS = [("multirc_test_location", ("MultiRC",), "test.jsonl"),
                  ("record_test_location", ("ReCoRD",), "test.jsonl"),
                  ("record_dev_location", ("ReCoRD",), "val.jsonl"),
                  ("race_dataset_location", ("RACE", "RACE-M", "RACE-H"), None)]


def apply_location_flags(args):
    """Map the original's --*_location flags onto --data_dir (all of a task's files live in one directory)."""
    task = get_task(args.task_name).name
    for flag, tasks, filename in LOCATION_FLAGS:
        value = getattr(args, flag)
        if value is None:
            continue
        if task not in tasks:
            logging.warning("--%s applies to %s only; ignored for %s", flag, " and ".join(tasks), task)
            continue
        value = os.path.expanduser(value)
        if filename is None:
            folder = value
        elif os.path.basename(value) != filename:
            raise BortError(f"--{flag} {value}: expected a file named {filename} (all of {task}'s files are read from "
                            f"one directory; pass --data_dir DIR with train.jsonl, val.jsonl, test.jsonl)")
        else:
            folder = os.path.dirname(value) or "."
        if args.data_dir and os.path.realpath(os.path.expanduser(args.data_dir)) != os.path.realpath(folder):
            raise BortError(f"--{flag} {value}: its directory {folder} differs from --data_dir {args.data_dir}; "
                            f"all of {task}'s files are read from one directory")
        args.data_dir = folder
    return args


def finetune_config(args):
    """The FinetuneConfig of parsed flags (after apply_location_flags); the vocabulary flags are the tokenizer's
    (tokenizer_from_args), --momentum and --use_scheduler are accepted and unused, as in the original."""
    return FinetuneConfig(**{field.name: getattr(args, field.name) for field in dataclasses.fields(FinetuneConfig)})


def main(argv=None):
    # model_config None until parsed: tells a --model_config the user gave from the default
    args = apply_location_flags(get_parser().parse_args(argv, argparse.Namespace(model_config=None)))
    named_config, args.model_config = args.model_config, args.model_config or D.model_config
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT, datefmt="%H:%M:%S")
    from bort.finetune.checkpoints import check_model_files
    from bort.finetune.loop import run
    from bort.locking import release_directory
    from bort.weights.checkpoint import check_named_architecture

    config = finetune_config(args)
    check_model_files(config)
    check_named_architecture(config.pretrained_parameters, named_config, "--model_config")
    try:
        result = run(config, tokenizer_from_args(args, config.pretrained_parameters))
    except BaseException:  # bort.locking: let go of --output_dir now, and remove it if this run created it empty
        release_directory(config.output_dir, remove_if_unused=True)
        raise
    if result.get("checkpoint"):
        print(f"checkpoint={result['checkpoint']}")
    if result.get("score") is not None:
        print(f"dev_score={result['score']:.4f}")
    for path in result.get("submissions", []):
        print(f"submission={path}")


if __name__ == "__main__":
    run_cli(main)()
