"""Single-process encode throughput: bort.text.tokenizer vs gluon-nlp 0.10's GPT2BPETokenizer (+ Vocab lookup).

The baseline is the original pipeline's per-line step, `vocab[GPT2BPETokenizer()(line)]`, with gluon-nlp's own
tokenizer class reading the same merges. HF `tokenizers` is timed too when installed (reference only).

    python -m benchmarks.tokenizer [--repeat 100] [--output bench_tokenizer.json]

By default it uses the bundled test vocabulary; --vocab_json/--merges select another HF-style vocabulary
(e.g. RoBERTa's), which gives numbers closer to real pretraining.
"""
import argparse
import json
import os
import random
import time


import bort  # noqa: E402,F401  (before mxnet)
from bort.io import write_json
from bort.text.byte_bpe import GPT2_PATTERN
from bort.text.tokenizer import load_tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def gluonnlp_baseline(vocab_json, merges):
    """gluon-nlp's GPT2BPETokenizer on local merges (its __init__ only knows the downloadable file) + Vocab."""
    import gluonnlp
    import regex
    from gluonnlp.data.transforms import GPT2BPETokenizer, _GPT2BPE

    class LocalGPT2BPETokenizer(GPT2BPETokenizer):
        def __init__(self, ranks_path):  # pylint: disable=super-init-not-called
            _GPT2BPE.__init__(self)
            self._regex = regex
            self._read_bpe_ranks(ranks_path)
            self._cache = {}
            self._token_pattern = regex.compile(GPT2_PATTERN)

    with open(vocab_json, encoding="utf-8") as handle:
        token_to_idx = json.load(handle)
    vocab = gluonnlp.Vocab.from_json(json.dumps({
        "idx_to_token": sorted(token_to_idx, key=token_to_idx.get), "token_to_idx": token_to_idx,
        "unknown_token": "<unk>", "identifiers_to_tokens": {"bos_token": "<s>", "eos_token": "</s>",
                                                            "padding_token": "<pad>", "mask_token": "<mask>"}}))
    tokenizer = LocalGPT2BPETokenizer(merges)
    return lambda line: vocab[tokenizer(line)]


def hf_reference(vocab_json, merges):
    try:
        import tokenizers
    except ImportError:
        return None
    hf = tokenizers.Tokenizer(tokenizers.models.BPE.from_file(vocab_json, merges))
    hf.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    return lambda line: hf.encode(line).ids


def time_encoder(encode, lines, rounds):
    best = None
    for _ in range(rounds):
        start = time.perf_counter()
        for line in lines:
            encode(line)
        elapsed = time.perf_counter() - start
        best = elapsed if best is None else min(best, elapsed)
    return best


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--input", default=os.path.join(ROOT, "test_data", "sample_text.txt"))
    parser.add_argument("--vocab_json", default=os.path.join(ROOT, "test_data", "vocab", "vocab.json"))
    parser.add_argument("--merges", default=os.path.join(ROOT, "test_data", "vocab", "merges.txt"))
    parser.add_argument("--repeat", type=int, default=100, help="copies of the input lines (shuffled)")
    parser.add_argument("--rounds", type=int, default=3, help="timed passes; the fastest is reported")
    parser.add_argument("--scramble", action="store_true",
                        help="shuffle the letters of every word: mostly unseen words, so the word cache rarely hits")
    parser.add_argument("--output", help="JSON file for the results")
    args = parser.parse_args()

    with open(args.input, encoding="utf-8") as handle:
        base = [line.rstrip("\n") for line in handle if line.strip()]
    lines = base * args.repeat
    rng = random.Random(0)
    rng.shuffle(lines)
    if args.scramble:
        lines = [" ".join("".join(rng.sample(word, len(word))) for word in line.split(" ")) for line in lines]
        base = lines
    ours = load_tokenizer(vocab_json=args.vocab_json, merges=args.merges)
    encoders = {"bort.text.tokenizer": ours.encode, "gluonnlp 0.10 GPT2BPETokenizer+Vocab":
                gluonnlp_baseline(args.vocab_json, args.merges)}
    hf = hf_reference(args.vocab_json, args.merges)
    if hf is not None:
        encoders["HF tokenizers (Rust, reference)"] = hf
    expected = [ours.encode(line) for line in base]
    for name, encode in encoders.items():
        if [encode(line) for line in base] != expected:
            raise SystemExit(f"{name} gives different ids than bort.text.tokenizer")
    num_tokens = sum(len(ids) for ids in expected) * (1 if args.scramble else args.repeat)
    results = {"lines": len(lines), "tokens": num_tokens, "vocab_size": ours.vocab_size, "rounds": args.rounds,
               "scramble": args.scramble, "encoders": {}}
    for name, encode in encoders.items():
        if args.scramble:  # fresh tokenizers: time the first pass, when every new word misses the cache
            encode = {"bort.text.tokenizer": lambda: load_tokenizer(vocab_json=args.vocab_json, merges=args.merges).encode,
                      "gluonnlp 0.10 GPT2BPETokenizer+Vocab": lambda: gluonnlp_baseline(args.vocab_json, args.merges),
                      }.get(name, lambda: encode)()
        seconds = time_encoder(encode, lines, 1 if args.scramble else args.rounds)
        results["encoders"][name] = {"seconds": seconds, "tokens_per_s": num_tokens / seconds}
    base_rate = results["encoders"]["gluonnlp 0.10 GPT2BPETokenizer+Vocab"]["tokens_per_s"]
    passes = "one cold pass" if args.scramble else f"best of {args.rounds} passes"
    print(f"{len(lines)} lines, {num_tokens} tokens, vocabulary {ours.vocab_size}, {passes}"
          f"{', scrambled words' if args.scramble else ''}")
    print(f"{'encoder':40s} {'tokens/s':>12s} {'vs gluon-nlp':>12s}")
    for name, row in results["encoders"].items():
        row["speedup_vs_gluonnlp"] = row["tokens_per_s"] / base_rate
        print(f"{name:40s} {row['tokens_per_s']:12,.0f} {row['speedup_vs_gluonnlp']:11.2f}x")
    if args.output:
        write_json(args.output, results)


if __name__ == "__main__":
    main()
