"""Regenerate the small byte-level BPE test vocabulary in test_data/vocab/ from test_data/sample_text.txt.

Development tool only: it trains the merges with HF `tokenizers` (a test-only dependency), then writes the
vocabulary in both flavours that bort.text.tokenizer reads:

* HF / RoBERTa style: ``vocab.json`` (RoBERTa ids: <s>=0, <pad>=1, </s>=2, <unk>=3, BPE tokens, <mask> last)
  and ``merges.txt``;
* fairseq / gluon-nlp style: ``encoder.json`` (plain GPT-2 ids: the 256 byte symbols in GPT-2's order, then one
  token per merge in rank order; no special tokens), ``vocab.bpe`` (the same merges) and ``dict.txt``
  (``<gpt2_id> <count>`` lines sorted by count on the sample text; RoBERTa id = 4 + line index, <mask> = last);
* ``SOURCE_SHA256``: the sha256 of the text, so that runs on another sample text train their own vocabulary
  (bort.text.bpe_train).

Both flavours therefore give the same RoBERTa ids, and the GPT-2 ids differ from the RoBERTa ids, so the
mapping between them is exercised by the tests.

    python scripts/make_test_vocab.py [--input test_data/sample_text.txt] [--output_dir test_data/vocab]
"""
import argparse
import collections
import hashlib
import json
import os


from bort.io import atomic_write
from bort.text.byte_bpe import bytes_to_unicode
from bort.text.vocab_files import ROBERTA_SPECIALS

MERGES_HEADER = "#version: 0.2"


def train_merges(input_file, gpt2_vocab_size):
    from tokenizers import ByteLevelBPETokenizer  # test-only dependency, needed only here

    bpe = ByteLevelBPETokenizer(add_prefix_space=False)
    bpe.train([input_file], vocab_size=gpt2_vocab_size, min_frequency=1, special_tokens=[], show_progress=False)
    model = json.loads(bpe.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    return bpe, merges


def build(input_file, output_dir, gpt2_vocab_size):
    bpe, merges = train_merges(input_file, gpt2_vocab_size)
    byte_symbols = list(bytes_to_unicode().values())  # GPT-2's order: printable bytes first
    encoder = {sym: i for i, sym in enumerate(byte_symbols)}
    for left, right in merges:
        token = left + right
        if token in encoder:
            raise SystemExit(f"merge {left!r} {right!r} produces an existing token")
        encoder[token] = len(encoder)

    counts = collections.Counter()
    with open(input_file, encoding="utf-8") as handle:
        for line in handle:
            line = line.rstrip("\n")
            if line.strip():
                counts.update(bpe.encode(line).tokens)
    # fairseq's dict.txt lists GPT-2 ids by decreasing frequency; unseen tokens follow with count 0
    order = sorted(encoder.items(), key=lambda kv: (-counts[kv[0]], kv[1]))

    vocab = {tok: i for i, tok in enumerate(ROBERTA_SPECIALS[:4])}
    for token, _ in order:
        vocab[token] = len(vocab)
    vocab[ROBERTA_SPECIALS[4]] = len(vocab)

    os.makedirs(output_dir, exist_ok=True)
    merge_lines = "".join(f"{a} {b}\n" for a, b in merges)
    for name, obj in (("vocab.json", vocab), ("encoder.json", encoder)):
        with atomic_write(os.path.join(output_dir, name)) as out:
            json.dump(obj, out, ensure_ascii=False)
            out.write("\n")
    for name in ("merges.txt", "vocab.bpe"):
        with atomic_write(os.path.join(output_dir, name)) as out:
            out.write(MERGES_HEADER + "\n" + merge_lines)
    with atomic_write(os.path.join(output_dir, "dict.txt")) as out:
        for token, gpt2_id in order:
            out.write(f"{gpt2_id} {counts[token]}\n")
    # bort.text.bpe_train.ensure_vocab reuses this vocabulary only for the text it was made from.
    with open(input_file, "rb") as handle, atomic_write(os.path.join(output_dir, "SOURCE_SHA256")) as out:
        out.write(hashlib.sha256(handle.read()).hexdigest() + "\n")
    print(f"wrote {output_dir}: {len(encoder)} GPT-2 tokens ({len(merges)} merges), {len(vocab)} RoBERTa ids")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    parser.add_argument("--input", default=os.path.join(root, "test_data", "sample_text.txt"))
    parser.add_argument("--output_dir", default=os.path.join(root, "test_data", "vocab"))
    parser.add_argument("--gpt2_vocab_size", type=int, default=1000,
                        help="byte symbols + merges (RoBERTa vocabulary adds 5 specials)")
    args = parser.parse_args()
    build(args.input, args.output_dir, args.gpt2_vocab_size)


if __name__ == "__main__":
    main()
