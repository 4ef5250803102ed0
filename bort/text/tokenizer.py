"""Tokenizers: GPT-2/RoBERTa byte-level BPE from local files, and SentencePiece.

One interface for every vocabulary flavour (see `load_tokenizer`):

* HF style ``vocab.json`` + ``merges.txt`` (ids as listed, e.g. RoBERTa ids with <s>=0 ... <mask>=50264);
* fairseq / gluon-nlp style ``encoder.json`` + ``vocab.bpe`` (plain GPT-2 ids) and optionally ``dict.txt``
  (maps GPT-2 ids to RoBERTa ids: <s>=0, <pad>=1, </s>=2, <unk>=3, line i of dict.txt -> 4 + i, <mask> last);
* gluon-nlp 0.x's own RoBERTa vocabulary ``openwebtext_ccnews_stories_books_cased`` (only when asked for by name;
  read from the gluon-nlp cache under $MXNET_HOME/models, fetched with gluon-nlp when it is not there);
* a SentencePiece ``.model`` file (`train_sentencepiece` makes one for a custom vocabulary);
* a BERT WordPiece vocabulary (``vocab.txt``, or the vocabulary inside an HF ``tokenizer.json``), tokenized by
  gluon-nlp's ``BERTTokenizer`` (`wordpiece`);
* an HF checkpoint directory: the tokenizer files in it, in that order of preference (`checkpoint_tokenizer`).

The flavours live beside this module: `vocab_files` (file readers), `byte_bpe` (GPT-2 byte-level BPE),
`gluonnlp_files` (gluon-nlp's cache), `sentencepiece_model` and `wordpiece`; this module picks one from the arguments.

Every tokenizer has ``encode(text) -> list[int]`` (never adds <s>/</s>), ``decode(ids) -> str``, ``vocab_size``,
``bos_id``, ``eos_id``, ``pad_id``, ``mask_id``, ``unk_id`` (None when the vocabulary has no such token),
``token_to_id``, ``id_to_token`` and ``is_word_start(id)`` / ``word_start_table()`` for whole-word masking.

CLI: ``python -m bort.text.tokenizer --vocab_json V --merges M FILE`` prints one line of space-separated ids per line.
"""
import argparse
import os
import sys

from bort.errors import BortError, run_cli
from bort.text.byte_bpe import load_fairseq_bpe, load_gluonnlp_bpe, load_hf_bpe
from bort.text.gluonnlp_files import GLUONNLP_DATASET, fetch_gluonnlp_files
from bort.text.sentencepiece_model import SentencePieceTokenizer
from bort.text.wordpiece import WordPieceTokenizer


def load_tokenizer(vocab_json=None, merges=None, encoder_json=None, vocab_bpe=None, dict_txt=None,
                   sentencepiece=None, dataset_name=None, wordpiece=None):
    """Load a tokenizer from files (these take precedence) or from gluon-nlp's named vocabulary.

    * vocab_json + merges: HF style; ids as in vocab.json (RoBERTa ids for RoBERTa's files).
    * encoder_json + vocab_bpe [+ dict_txt]: plain GPT-2 ids, or RoBERTa ids when dict_txt is given.
    * sentencepiece: a SentencePiece .model file.
    * wordpiece: a BERT vocab.txt or an HF tokenizer.json with a WordPiece model (lower-casing from the checkpoint).
    * dataset_name='openwebtext_ccnews_stories_books_cased': gluon-nlp 0.x's RoBERTa vocabulary (RoBERTa ids),
      from the gluon-nlp cache, fetched with gluon-nlp when missing.
    """
    flavours = []
    if vocab_json is not None or merges is not None:
        flavours.append("--vocab_json/--merges")
    if encoder_json is not None or vocab_bpe is not None or dict_txt is not None:
        flavours.append("--encoder_json/--vocab_bpe/--dict_txt")
    if sentencepiece is not None:
        flavours.append("--sentencepiece")
    if wordpiece is not None:
        flavours.append("--wordpiece")
    if len(flavours) > 1:
        raise BortError(f"conflicting vocabularies: {' and '.join(flavours)}; pass only one flavour")
    if vocab_json is not None or merges is not None:
        if vocab_json is None or merges is None:
            raise BortError("--vocab_json and --merges must be given together")
        return load_hf_bpe(vocab_json, merges)
    if encoder_json is not None or vocab_bpe is not None or dict_txt is not None:
        if encoder_json is None or vocab_bpe is None:
            raise BortError("--encoder_json and --vocab_bpe must be given together (--dict_txt is optional)")
        return load_fairseq_bpe(encoder_json, vocab_bpe, dict_txt)
    if sentencepiece is not None:
        return SentencePieceTokenizer(sentencepiece)
    if wordpiece is not None:
        return WordPieceTokenizer(wordpiece)
    if dataset_name:
        return load_gluonnlp_bpe(*fetch_gluonnlp_files(dataset_name))
    raise BortError("no vocabulary given: pass --vocab_json and --merges, --encoder_json and --vocab_bpe "
                    "[--dict_txt], --sentencepiece, --wordpiece, or --dataset_name")


# Tokenizer files of an HF checkpoint directory, in order of preference: {load_tokenizer argument: file name}.
CHECKPOINT_TOKENIZER_FILES = [{"wordpiece": "vocab.txt"}, {"vocab_json": "vocab.json", "merges": "merges.txt"},
                              {"sentencepiece": "spiece.model"}, {"sentencepiece": "sentencepiece.bpe.model"},
                              {"wordpiece": "tokenizer.json"}]


def checkpoint_tokenizer(hf_dir):
    """The tokenizer that belongs to an HF checkpoint directory, from the files in it (CHECKPOINT_TOKENIZER_FILES;
    a tokenizer.json counts only when its model is WordPiece)."""
    for files in CHECKPOINT_TOKENIZER_FILES:
        paths = {arg: os.path.join(hf_dir, name) for arg, name in files.items()}
        if all(os.path.isfile(p) for p in paths.values()):
            return load_tokenizer(**paths)
    raise BortError(f"{hf_dir}: no tokenizer files found (expected vocab.txt, vocab.json + merges.txt, a "
                    "SentencePiece model, or a WordPiece tokenizer.json); pass the vocabulary flags")


def has_vocabulary_flags(args):
    """Whether any vocabulary file flag was given (--dataset_name, which has a default, does not count)."""
    return any(getattr(args, name) is not None
               for name in ("vocab_json", "merges", "encoder_json", "vocab_bpe", "dict_txt", "sentencepiece",
                            "wordpiece"))


def add_tokenizer_args(parser, dataset_name=None):
    """Add the vocabulary flags shared by every CLI. `dataset_name` is the default for --dataset_name."""
    group = parser.add_argument_group("vocabulary (one flavour; files take precedence over --dataset_name)")
    group.add_argument("--vocab_json", help="HF-style vocab.json (with --merges)")
    group.add_argument("--merges", help="HF-style merges.txt (with --vocab_json)")
    group.add_argument("--encoder_json", help="fairseq/GPT-2 encoder.json (with --vocab_bpe)")
    group.add_argument("--vocab_bpe", help="fairseq/GPT-2 vocab.bpe (with --encoder_json)")
    group.add_argument("--dict_txt", help="fairseq dict.txt mapping GPT-2 ids to RoBERTa ids")
    group.add_argument("--sentencepiece", help="SentencePiece .model file")
    group.add_argument("--wordpiece", help="BERT WordPiece vocabulary: vocab.txt, or an HF tokenizer.json")
    group.add_argument("--dataset_name", default=dataset_name,
                       help=f"gluon-nlp vocabulary name ({GLUONNLP_DATASET}); default: {dataset_name}")
    return parser


def tokenizer_from_args(args, checkpoint=None):
    """The tokenizer of parsed vocabulary flags; without vocabulary file flags and with `checkpoint` an HF
    directory (--pretrained_parameters), the tokenizer that belongs to that checkpoint."""
    if checkpoint and os.path.isdir(checkpoint) and not has_vocabulary_flags(args):
        return checkpoint_tokenizer(checkpoint)
    return load_tokenizer(vocab_json=args.vocab_json, merges=args.merges, encoder_json=args.encoder_json,
                          vocab_bpe=args.vocab_bpe, dict_txt=args.dict_txt, sentencepiece=args.sentencepiece,
                          dataset_name=args.dataset_name, wordpiece=args.wordpiece)


def _iter_lines(path):
    handle = sys.stdin.buffer if path == "-" else None
    if handle is None:
        if not os.path.isfile(path):
            raise BortError(f"{path}: file not found (expected a text file to tokenize)")
        handle = open(path, "rb")
    try:
        for lineno, raw in enumerate(handle, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise BortError(f"{path}:{lineno}: expected UTF-8 text") from None
            yield line.rstrip("\n").rstrip("\r")
    finally:
        if path != "-":
            handle.close()


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m bort.text.tokenizer",
        description="Tokenize a text file: one line of space-separated token ids per input line (no <s>/</s>). "
                    "Ids are plain GPT-2 ids for encoder.json/vocab.bpe without --dict_txt.")
    parser.add_argument("input", help="text file ('-' for stdin)")
    parser.add_argument("--tokens", action="store_true", help="print token strings instead of ids")
    add_tokenizer_args(parser)
    args = parser.parse_args(argv)
    tokenizer = tokenizer_from_args(args)
    out = sys.stdout
    for line in _iter_lines(args.input):
        if args.tokens:
            out.write(" ".join(tokenizer.tokenize(line)) + "\n")
        else:
            out.write(" ".join(map(str, tokenizer.encode(line))) + "\n")
    out.flush()


if __name__ == "__main__":
    run_cli(main)()
