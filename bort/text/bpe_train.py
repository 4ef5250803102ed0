"""A small byte-level BPE vocabulary trained on a text: what the TEST modes and tests use for whatever sample text
is in test_data/.

The bundled `test_data/vocab/` was trained on the bundled `test_data/sample_text.txt` (scripts/make_test_vocab.py,
which records the text's sha256 in `test_data/vocab/SOURCE_SHA256`). When `test_data/sample_text.txt` is another
text (the original README has users download gluon-nlp's), that vocabulary cuts its words into short pieces (2.9
per word on gluon-nlp's text, against 2.2 with a vocabulary of its own). `ensure_vocab` then trains a vocabulary on
the text itself, in the same format (HF `vocab.json` + `merges.txt`, RoBERTa special ids), deterministically and
without extra packages; `sentence_seq_length` picks a TEST sequence length that holds the text's lines whole.

    python -m bort.text.bpe_train --input test_data/sample_text.txt --output_dir run/vocab [--bundled test_data/vocab]
"""
import argparse
import collections
import json
import logging
import os
import shutil

from bort.errors import BortError, run_cli
from bort.io import atomic_write, file_sha256
from bort.text.byte_bpe import bytes_to_unicode, compile_gpt2_pattern
from bort.text.vocab_files import ROBERTA_SPECIALS

log = logging.getLogger(__name__)

SOURCE_FILE = "SOURCE_SHA256"
MERGES_HEADER = "#version: 0.2"


def _words(lines):
    """Pre-token counts (GPT-2's regex, bytes shown as GPT-2's printable symbols)."""
    pattern, byte_symbol = compile_gpt2_pattern(), bytes_to_unicode()
    counts = collections.Counter()
    for line in lines:
        line = line.rstrip("\n")
        if line.strip():
            counts.update("".join(byte_symbol[b] for b in piece.encode("utf-8")) for piece in pattern.findall(line))
    return counts


def train_bpe(lines, num_merges):
    """Merges learned from `lines`: repeatedly the most frequent adjacent pair (ties: the smallest pair)."""
    words = {tuple(word): count for word, count in _words(lines).items()}
    merges = []
    while len(merges) < num_merges:
        pairs = collections.Counter()
        for symbols, count in words.items():
            for pair in zip(symbols, symbols[1:]):
                pairs[pair] += count
        if not pairs:
            break
        best_count = max(pairs.values())
        if best_count < 2 and merges:
            break  # every remaining pair occurs once: merging further only memorizes
        best = min(pair for pair, count in pairs.items() if count == best_count)
        merges.append(best)
        joined = best[0] + best[1]
        updated = {}
        for symbols, count in words.items():
            if best[0] in symbols:
                out, i = [], 0
                while i < len(symbols):
                    if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                        out.append(joined)
                        i += 2
                    else:
                        out.append(symbols[i])
                        i += 1
                symbols = tuple(out)
            updated[symbols] = updated.get(symbols, 0) + count
        words = updated
    return merges


def write_vocab(output_dir, merges, source_sha256=None):
    """`vocab.json` (RoBERTa ids: <s> <pad> </s> <unk>, the 256 byte symbols, one token per merge, <mask> last) and
    `merges.txt`, written atomically."""
    vocab = {token: i for i, token in enumerate(ROBERTA_SPECIALS[:4])}
    for symbol in bytes_to_unicode().values():
        vocab[symbol] = len(vocab)
    for left, right in merges:
        vocab.setdefault(left + right, len(vocab))
    vocab[ROBERTA_SPECIALS[4]] = len(vocab)
    os.makedirs(output_dir, exist_ok=True)
    with atomic_write(os.path.join(output_dir, "vocab.json")) as out:
        json.dump(vocab, out, ensure_ascii=False)
        out.write("\n")
    with atomic_write(os.path.join(output_dir, "merges.txt")) as out:
        out.write(MERGES_HEADER + "\n" + "".join(f"{a} {b}\n" for a, b in merges))
    if source_sha256:
        with atomic_write(os.path.join(output_dir, SOURCE_FILE)) as out:
            out.write(source_sha256 + "\n")
    return len(vocab)


def made_from(vocab_dir, text_path):
    """Whether the vocabulary in `vocab_dir` was trained on this very text (its SOURCE_SHA256 file)."""
    source = os.path.join(vocab_dir, SOURCE_FILE)
    if not os.path.isfile(source):
        return False
    with open(source, encoding="utf-8") as handle:
        return handle.read().strip() == file_sha256(text_path)


def ensure_vocab(text_path, output_dir, bundled=None, vocab_size=1005):
    """A vocabulary for `text_path` in `output_dir`: a copy of `bundled` when it was made from this very text (its
    SOURCE_SHA256), else one trained on the text. Returns "bundled" or "trained"."""
    if not os.path.isfile(text_path):
        raise BortError(f"{text_path}: sample text not found")
    digest = file_sha256(text_path)
    os.makedirs(output_dir, exist_ok=True)
    if bundled and made_from(bundled, text_path):
        for name in ("vocab.json", "merges.txt", SOURCE_FILE):
            shutil.copyfile(os.path.join(bundled, name), os.path.join(output_dir, name))
        return "bundled"
    with open(text_path, encoding="utf-8-sig") as handle:
        lines = handle.readlines()
    size = write_vocab(output_dir, train_bpe(lines, vocab_size - 256 - len(ROBERTA_SPECIALS)), digest)
    log.info("%s: trained a %d-token vocabulary on %s (the bundled one was made from another text)",
             output_dir, size, text_path)
    return "trained"


def sentence_seq_length(text_path, vocab_dir, choices=(32, 64, 128), quantile=0.9):
    """The smallest of `choices` that holds `quantile` of the text's lines whole (with <s> and </s>): the TEST modes'
    --max_seq_length, so that a model sees most sentences whole rather than in random truncated windows (32 for the
    bundled text, whose lines are short; 128 for gluon-nlp's, whose lines run to 175 tokens)."""
    from bort.text.tokenizer import load_tokenizer  # noqa: PLC0415

    tokenizer = load_tokenizer(vocab_json=os.path.join(vocab_dir, "vocab.json"),
                               merges=os.path.join(vocab_dir, "merges.txt"))
    with open(text_path, encoding="utf-8-sig") as handle:
        lengths = sorted(len(tokenizer.encode(line.rstrip("\n"))) + 2 for line in handle if line.strip())
    if not lengths:
        raise BortError(f"{text_path}: the sample text has no sentences")
    needed = lengths[min(len(lengths) - 1, int(quantile * len(lengths)))]
    return next((c for c in choices if c >= needed), choices[-1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", required=True, help="the text (one sentence per line)")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--bundled", default=None, help="a vocabulary to reuse when it was made from --input")
    parser.add_argument("--vocab_size", type=int, default=1005, help="at most this many ids (5 specials included)")
    parser.add_argument("--print_seq_length", action="store_true",
                        help="print the --max_seq_length that holds 90 %% of the lines whole (32, 64 or 128) instead")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    kind = ensure_vocab(args.input, args.output_dir, args.bundled, args.vocab_size)
    print(sentence_seq_length(args.input, args.output_dir) if args.print_seq_length else kind)


if __name__ == "__main__":
    run_cli(main)()
