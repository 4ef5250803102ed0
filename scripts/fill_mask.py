"""Fill '<mask>' tokens with a model's masked-LM head: prints the top-k tokens and probabilities per mask.

    python scripts/fill_mask.py --params ckpt/step_0000060.params --vocab_json vocab.json --merges merges.txt \
        "The quick brown <mask> jumps over the lazy dog."

The params file's JSON config beside it describes the model; otherwise pass --model (e.g. bort_4_8_768_1024).
"""
import argparse
import json


import bort  # noqa: E402,F401  (before mxnet)
from bort.errors import BortError, run_cli
from bort.weights.checkpoint import check_named_architecture, load_model
from bort.pretrain.mlm import fill_mask
from bort.text.tokenizer import add_tokenizer_args, tokenizer_from_args


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("text", nargs="+", help="sentence(s) containing <mask>")
    parser.add_argument("--params", required=True, help="model parameters (with the MLM head)")
    parser.add_argument("--model", default=None, help="config name or JSON when no <params>.json sits beside it")
    parser.add_argument("--top_k", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    add_tokenizer_args(parser)
    args = parser.parse_args(argv)
    if args.top_k < 1:
        raise BortError(f"--top_k must be at least 1, got {args.top_k}")
    for number, text in enumerate(args.text, 1):
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as err:  # bytes that are not UTF-8 reach Python as lone surrogates
            raise BortError(f"sentence {number}: not valid UTF-8 (byte {err.start}); pass UTF-8 text") from None
    check_named_architecture(args.params, args.model, "--model")
    tokenizer = tokenizer_from_args(args)
    model = load_model(args.params, config=args.model, use_decoder=True)
    out = []
    for text in args.text:
        out.append({"text": text, "masks": [[{"token": t, "prob": p} for t, p in preds]
                                            for preds in fill_mask(model, tokenizer, text, args.top_k)]})
    if args.json:
        print(json.dumps(out, ensure_ascii=False))
        return
    for item in out:
        print(item["text"])
        for i, preds in enumerate(item["masks"]):
            print(f"  <mask> {i + 1}: " + "  ".join(f"{p['token']!r} {p['prob']:.3f}" for p in preds))


if __name__ == "__main__":
    run_cli(main)()
