"""Create masked-LM pretraining shards from raw text (one sentence per line, blank lines between documents).

    python create_pretraining_data.py --input_file 'corpus/*.txt' --output_dir shards \
        --dataset_name openwebtext_ccnews_stories_books_cased --dupe_factor 1 --num_outputs 4

Writes part-000.npz, part-001.npz, ... (pickle-free; see data/pretraining_format.py) and summary.json.
"""
import argparse
import logging

import bort  # noqa: F401  (process settings first)
from bort.errors import BortError, run_cli
from bort.text.gluonnlp_files import GLUONNLP_DATASET
from bort.text.tokenizer import add_tokenizer_args, tokenizer_from_args
from data.pretraining import create_pretraining_data
from data.pretraining_format import FORMAT_VERSION
from data.pretraining_instances import InstanceOptions


def build_parser():
    defaults = InstanceOptions()
    parser = argparse.ArgumentParser(description="Pre-training data generator for Bort",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--input_file", required=True,
                        help='input text files, comma-separated paths, globs or directories, e.g. "~/data/*.txt"')
    parser.add_argument("--output_dir", required=True, help="output directory for part-NNN.npz shards")
    add_tokenizer_args(parser, dataset_name=GLUONNLP_DATASET)
    parser.add_argument("--whole_word_mask", action="store_true",
                        help="mask whole words rather than single subword tokens")
    parser.add_argument("--max_seq_length", type=int, default=defaults.max_seq_length,
                        help="maximum sequence length, <s> and </s> included")
    parser.add_argument("--max_predictions_per_seq", type=int, default=defaults.max_predictions_per_seq,
                        help="maximum number of masked LM predictions per sequence")
    parser.add_argument("--random_seed", type=int, default=defaults.random_seed, help="random seed")
    parser.add_argument("--dupe_factor", type=int, default=defaults.dupe_factor,
                        help="number of times to duplicate the input data (with different masks)")
    parser.add_argument("--masked_lm_prob", type=float, default=defaults.masked_lm_prob,
                        help="masked LM probability")
    parser.add_argument("--short_seq_prob", type=float, default=defaults.short_seq_prob,
                        help="probability of creating sequences shorter than the maximum length")
    parser.add_argument("--num_workers", type=int, default=8,
                        help="worker processes (output is identical for any value)")
    parser.add_argument("--num_outputs", type=int, default=1, help="number of output shards")
    parser.add_argument("--format_version", type=int, choices=(1, FORMAT_VERSION), default=FORMAT_VERSION,
                        help="shard format: 2 stores ids in the smallest unsigned type (2 bytes a token for "
                             "RoBERTa's vocabulary), 1 the int32 layout of earlier versions of this code "
                             "(8 bytes a token); both are read")
    parser.add_argument("--skip_invalid_utf8", action="store_true",
                        help="skip (and count) input lines that are not valid UTF-8 instead of stopping")
    parser.add_argument("--no_progress", action="store_true", help="no progress bar")
    parser.add_argument("--verbose", action="store_true", help="print debug information")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(message)s")
    options = InstanceOptions(max_seq_length=args.max_seq_length,
                              max_predictions_per_seq=args.max_predictions_per_seq,
                              masked_lm_prob=args.masked_lm_prob, short_seq_prob=args.short_seq_prob,
                              dupe_factor=args.dupe_factor, whole_word_mask=args.whole_word_mask,
                              random_seed=args.random_seed).validate()
    for flag in ("num_workers", "num_outputs"):
        if getattr(args, flag) < 1:
            raise BortError(f"--{flag} {getattr(args, flag)}: expected an integer >= 1")
    tokenizer = tokenizer_from_args(args)
    return create_pretraining_data(args.input_file, args.output_dir, tokenizer, options,
                                   num_workers=args.num_workers, num_outputs=args.num_outputs,
                                   skip_invalid_utf8=args.skip_invalid_utf8, progress=not args.no_progress,
                                   format_version=args.format_version)


if __name__ == "__main__":
    run_cli(main)()
