"""BERT's WordPiece vocabularies behind the tokenizer interface, tokenized by gluon-nlp's own `BERTTokenizer`.

The vocabulary comes from a `vocab.txt` (one token a line, id = line number) or from the `model.vocab` object of
an HF `tokenizer.json` whose model type is WordPiece. Lower-casing (which in BERT also strips accents) is read from
the checkpoint: `do_lower_case` of a `tokenizer_config.json` beside the file, else the `lowercase` of
`tokenizer.json`'s BertNormalizer, else BERT's default (on). The special tokens are BERT's: `[CLS]` is the
interface's bos_id and `[SEP]` its eos_id, so `SequenceEncoder` writes `[CLS] A [SEP] B [SEP]`.
"""
import json
import os

from bort.errors import BortError
from bort.io import read_json

SPECIALS = {"bos": "[CLS]", "eos": "[SEP]", "pad": "[PAD]", "unk": "[UNK]", "mask": "[MASK]"}


def read_wordpiece_vocab(path):
    """[token] in id order from a vocab.txt or a WordPiece tokenizer.json."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise BortError(f"{path}: file not found (expected a WordPiece vocab.txt or tokenizer.json)")
    if path.endswith(".json"):
        spec = read_json(path, "an HF tokenizer.json")
        model = spec.get("model") if isinstance(spec, dict) else None
        if not isinstance(model, dict) or model.get("type") != "WordPiece" or not isinstance(model.get("vocab"), dict):
            raise BortError(f"{path}: expected an HF tokenizer.json with a WordPiece model and its vocab object, "
                            f"found model type {model.get('type') if isinstance(model, dict) else None!r}")
        vocab = model["vocab"]
        ids = sorted(vocab.values()) if all(isinstance(i, int) for i in vocab.values()) else None
        if ids != list(range(len(vocab))):
            raise BortError(f"{path}: the WordPiece vocab's ids must be the integers 0..{len(vocab) - 1}, each once")
        return sorted(vocab, key=vocab.get)
    with open(path, encoding="utf-8") as handle:
        tokens = [line.rstrip("\n").rstrip("\r") for line in handle]
    while tokens and not tokens[-1]:
        tokens.pop()
    if len(set(tokens)) != len(tokens):
        raise BortError(f"{path}: a token is listed twice; expected one token per line, each once")
    return tokens


def checkpoint_lowercase(path):
    """Whether the checkpoint's tokenizer lower-cases: tokenizer_config.json beside `path`, else tokenizer.json."""
    config = os.path.join(os.path.dirname(os.path.abspath(path)), "tokenizer_config.json")
    if os.path.isfile(config):
        values = read_json(config, "an HF tokenizer_config.json")
        if isinstance(values, dict) and isinstance(values.get("do_lower_case"), bool):
            return values["do_lower_case"]
    if path.endswith(".json"):
        normalizer = read_json(path, "an HF tokenizer.json").get("normalizer") or {}
        if isinstance(normalizer.get("lowercase"), bool):
            return normalizer["lowercase"]
    return True


class WordPieceTokenizer:
    """gluon-nlp's `BERTTokenizer` over a checkpoint's WordPiece vocabulary, with the repository's interface."""

    def __init__(self, path, lower=None):
        import gluonnlp as nlp  # noqa: PLC0415 - keeps `import bort.text.tokenizer` light

        tokens = read_wordpiece_vocab(path)
        missing = [t for t in SPECIALS.values() if t not in tokens]
        if missing:
            raise BortError(f"{path}: the vocabulary lacks BERT's special tokens {missing}")
        self.lower = checkpoint_lowercase(path) if lower is None else lower
        spec = {"token_to_idx": {t: i for i, t in enumerate(tokens)}, "unknown_token": SPECIALS["unk"],
                "identifiers_to_tokens": {"padding_token": SPECIALS["pad"], "mask_token": SPECIALS["mask"],
                                          "sep_token": SPECIALS["eos"], "cls_token": SPECIALS["bos"]}}
        self.vocab = nlp.vocab.BERTVocab.from_json(json.dumps(spec))
        self._tokenizer = nlp.data.BERTTokenizer(self.vocab, lower=self.lower)
        self._tokens = tokens
        self.vocab_size = len(tokens)
        ids = {name: self.vocab.token_to_idx[token] for name, token in SPECIALS.items()}
        self.bos_id, self.eos_id, self.pad_id, self.unk_id, self.mask_id = (
            ids["bos"], ids["eos"], ids["pad"], ids["unk"], ids["mask"])
        self._word_starts = None

    def tokenize(self, text):
        return self._tokenizer(text)

    def encode(self, text):
        return self.vocab[self._tokenizer(text)]

    def decode(self, ids):
        pieces = []
        for i in ids:
            if not (isinstance(i, int) and 0 <= i < self.vocab_size):
                raise BortError(f"token id {i!r} is outside the vocabulary (0..{self.vocab_size - 1})")
            token = self._tokens[i]
            if token.startswith("##") and pieces:
                pieces[-1] += token[2:]
            else:
                pieces.append(token)
        return " ".join(pieces)

    def token_to_id(self, token):
        if token not in self.vocab.token_to_idx:
            raise KeyError(token)
        return self.vocab.token_to_idx[token]

    def id_to_token(self, idx):
        if not 0 <= idx < self.vocab_size:
            raise KeyError(idx)
        return self._tokens[idx]

    def is_word_start(self, idx):
        return not self._tokens[idx].startswith("##")

    def word_start_table(self):
        """[bool] per id: whether the token starts a word (not a '##' continuation)."""
        if self._word_starts is None:
            self._word_starts = [not t.startswith("##") for t in self._tokens]
        return self._word_starts
