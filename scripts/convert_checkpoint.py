"""Convert checkpoints between Hugging Face format and our Gluon parameter files.

    python scripts/convert_checkpoint.py hf2gluon --hf_dir DIR --output FILE.params [--verify]
    python scripts/convert_checkpoint.py gluon2hf --params FILE.params [--config NAME_OR_JSON] --output DIR
        [--arch bert|roberta] [--verify]

The architecture travels as FILE.json beside FILE.params. --verify (needs torch and transformers)
runs both implementations on a padded random batch and ends with `max_abs_diff=<float>`; the exit
status is 1 when it exceeds --tolerance.
"""
import argparse
import logging
import os
import sys


import bort  # noqa: E402,F401  (thread setup before mxnet)
from bort.weights import convert
from bort.weights.checkpoint import load_arrays, load_parameters, read_config, save_parameters
from bort.weights.parity import verify_parity
from bort.errors import run_cli
from bort.io import check_writable
from bort.model import build_model, get_config


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    imp = sub.add_parser("hf2gluon", help="HF BERT/RoBERTa directory -> .params (+ .json config)")
    imp.add_argument("--hf_dir", required=True, help="directory with config.json and model.safetensors "
                                                     "or pytorch_model.bin")
    imp.add_argument("--output", required=True, help="FILE.params to write (FILE.json is written beside it)")
    exp = sub.add_parser("gluon2hf", help=".params -> HF directory (config.json + model.safetensors)")
    exp.add_argument("--params", required=True)
    exp.add_argument("--config", default=None, help="config name or JSON; default: the JSON beside --params")
    exp.add_argument("--output", required=True, help="output directory")
    exp.add_argument("--arch", choices=sorted(convert.ARCHS), default="bert",
                     help="bert: BertForMaskedLM/BertModel (default); roberta: RobertaForMaskedLM/RobertaModel")
    for p in (imp, exp):
        p.add_argument("--verify", action="store_true", help="compare against transformers on a random batch")
        p.add_argument("--tolerance", type=float, default=1e-4)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.command == "hf2gluon":
        for output in (args.output, os.path.splitext(args.output)[0] + ".json"):  # before the conversion
            check_writable(output, "--output", kind="file")
        config, arrays = convert.hf_to_gluon(args.hf_dir)
        model = build_model(config, use_decoder=any(n.startswith("decoder.") for n in arrays))
        load_arrays(model, arrays, args.hf_dir)
        save_parameters(model, args.output, config)
        print(f"wrote {args.output} and {os.path.splitext(args.output)[0]}.json "
              f"({'with' if model.has_decoder else 'without'} MLM head)")
        hf_dir = args.hf_dir
    else:
        check_writable(args.output, "--output")
        config = get_config(args.config) if args.config else read_config(args.params)
        if not args.config:
            print(f"config from {os.path.splitext(args.params)[0]}.json")
        hf = convert.gluon_to_hf(args.params, config, args.output, arch=args.arch)
        print(f"wrote {args.output} ({hf['architectures'][0]})")
        if hf["architectures"][0] == "BertModel":
            print("note: our model has no pooler; transformers initializes BertModel's pooler randomly")
        has_head = hf["architectures"][0].endswith("ForMaskedLM")
        model = None
        if args.verify:
            model = build_model(config, use_decoder=has_head)
            load_parameters(model, args.params, allow_missing=("decoder.3.weight",),  # tied to word_embed
                            ignore_extra=() if has_head else ("decoder.",))
        hf_dir = args.output
    if args.verify:
        diffs = verify_parity(model, hf_dir)
        print(" ".join(f"{k}={v:.3g}" for k, v in diffs.items() if k != "max_abs_diff"))
        print(f"max_abs_diff={diffs['max_abs_diff']:.6g}")
        if diffs["max_abs_diff"] > args.tolerance:
            print(f"error: max_abs_diff {diffs['max_abs_diff']:.3g} exceeds --tolerance {args.tolerance}",
                  file=sys.stderr)
            sys.exit(1)


if __name__ == "__main__":
    run_cli(main)()
