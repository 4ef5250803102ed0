"""Tokenizers: GPT-2/RoBERTa byte-level BPE from local files, and SentencePiece.

One interface for every vocabulary flavour (see `load_tokenizer`):

* HF style ``vocab.json`` + ``merges.txt`` (ids as listed, e.g. RoBERTa ids with <s>=0 ... <mask>=50264);
* fairseq / gluon-nlp style ``encoder.json`` + ``vocab.bpe`` (plain GPT-2 ids) and optionally ``dict.txt``
  (maps GPT-2 ids to RoBERTa ids: <s>=0, <pad>=1, </s>=2, <unk>=3, line i of dict.txt -> 4 + i, <mask> last);
* gluon-nlp 0.x's own RoBERTa vocabulary ``openwebtext_ccnews_stories_books_cased`` (only when asked for by name;
  read from the gluon-nlp cache under $MXNET_HOME/models, fetched with gluon-nlp when it is not there);
* a SentencePiece ``.model`` file (`train_sentencepiece` makes one for a custom vocabulary).

Every tokenizer has ``encode(text) -> list[int]`` (never adds <s>/</s>), ``decode(ids) -> str``, ``vocab_size``,
``bos_id``, ``eos_id``, ``pad_id``, ``mask_id``, ``unk_id`` (None when the vocabulary has no such token),
``token_to_id``, ``id_to_token`` and ``is_word_start(id)`` / ``word_start_table()`` for whole-word masking.

CLI: ``python -m bort.text.tokenizer --vocab_json V --merges M FILE`` prints one line of space-separated ids per line.
"""
import argparse
import contextlib
import hashlib
import json
import os
import re
import sys

from bort.errors import BortError, run_cli
from bort.io import strip_bom

MAX_ID_GAPS = 1024
# Vocabulary entries that are not BPE products: special tokens (<s>, <|endoftext|>) and fairseq's fillers.
_NOT_BPE_TOKEN = re.compile(r"<[^<>]*>|madeupword\d+")
ROBERTA_SPECIALS = ("<s>", "<pad>", "</s>", "<unk>", "<mask>")
SPECIAL_NAMES = ("bos", "pad", "eos", "unk", "mask")  # in the order of ROBERTA_SPECIALS
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
# The same pattern for pure-ASCII text, for the faster stdlib `re`: in ASCII, \p{L} is [A-Za-z], \p{N} is [0-9] and
# Unicode White_Space is [\t\n\v\f\r ] (not \x1c-\x1f, which stdlib `re` counts as \s).
_WS = r"\t\n\x0b\x0c\r "
GPT2_PATTERN_ASCII = (r"'s|'t|'re|'ve|'m|'ll|'d| ?[A-Za-z]+| ?[0-9]+| ?[^" + _WS + r"A-Za-z0-9]+|[" + _WS + r"]+(?![^"
                      + _WS + r"])|[" + _WS + r"]+")
MERGES_HEADER = "#version"
GLUONNLP_DATASET = "openwebtext_ccnews_stories_books_cased"
# gluon-nlp 0.10 names its cached files <name>-<first 8 hex digits of their sha1>.<ext>
GLUONNLP_FILES = {
    GLUONNLP_DATASET: {
        "vocab": ("openwebtext_ccnews_stories_books_cased-2b804f8f.vocab",
                  "2b804f8f90f9f93c07994b703ce508725061cf43"),
        "merges": ("openai_webtext_bpe_ranks-396d4d8e.json", "396d4d8ec90cb02f4d56e049e0e4add868bcd943"),
    },
}
_CACHE_LIMIT = 1 << 20  # pre-token words kept in the per-tokenizer cache


def bytes_to_unicode():
    """GPT-2's reversible map from the 256 byte values to printable unicode characters (ordered dict)."""
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
                 + list(range(ord("®"), ord("ÿ") + 1)))
    mapping = {b: chr(b) for b in printable}
    shift = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + shift)
            shift += 1
    return mapping


def _regex():
    try:
        import regex
    except ImportError as err:  # pragma: no cover - a requirements problem
        raise BortError("GPT-2 byte-level BPE needs the `regex` package: pip install regex") from err
    return regex


# ---------------------------------------------------------------------------------------------------------------
# File readers (each error names the file and what was expected)


def _read_text(path, what):
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise BortError(f"{path}: file not found (expected {what})")
    try:
        with open(path, encoding="utf-8") as handle:
            return strip_bom(handle.read())  # vocabularies saved by Windows editors start with a BOM
    except UnicodeDecodeError as err:
        raise BortError(f"{path}: not valid UTF-8 at byte {err.start} (expected {what})") from None
    except OSError as err:
        raise BortError(f"{path}: cannot read ({err.strerror}; expected {what})") from None


def read_token_ids_json(path):
    """Read a JSON object {token: id} (HF vocab.json or fairseq encoder.json)."""
    text = _read_text(path, "a JSON object mapping tokens to integer ids")
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as err:
        raise BortError(f"{path}:{err.lineno}: invalid JSON ({err.msg}); expected an object mapping tokens to "
                        "integer ids") from None
    if not isinstance(obj, dict) or not obj:
        raise BortError(f"{path}: expected a non-empty JSON object mapping tokens to integer ids")
    seen = {}
    for token, idx in obj.items():
        if not isinstance(idx, int) or isinstance(idx, bool) or idx < 0:
            raise BortError(f"{path}: token {token!r}: expected a non-negative integer id, got {idx!r}")
        if idx in seen:
            raise BortError(f"{path}: id {idx} is used by both {seen[idx]!r} and {token!r}")
        seen[idx] = token
    return obj


def read_merges(path):
    """Read merges.txt / vocab.bpe: optional '#version' header, then one 'left right' pair per line, by rank."""
    merges = []
    lines = _read_text(path, "BPE merges, one 'left right' pair per line").split("\n")
    for lineno, line in enumerate(lines, 1):
        line = line.rstrip("\r")
        if not line or (lineno == 1 and line.startswith(MERGES_HEADER)):
            continue
        parts = line.split(" ")
        if len(parts) != 2 or not parts[0] or not parts[1]:
            raise BortError(f"{path}:{lineno}: expected two space-separated symbols, got {line[:60]!r}")
        merges.append((parts[0], parts[1]))
    if not merges:
        raise BortError(f"{path}: no merges found (expected one 'left right' pair per line)")
    return merges


def read_fairseq_dict(path):
    """Read fairseq dict.txt: '<symbol> <count>' per line; returns the symbols in order."""
    symbols = []
    lines = _read_text(path, "fairseq dictionary lines '<gpt2_id> <count>'").split("\n")
    for lineno, line in enumerate(lines, 1):
        line = line.rstrip("\r")
        if not line.strip():
            continue
        parts = line.split(" ")
        if parts[-1] == "#fairseq:overwrite":
            parts = parts[:-1]
        if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
            raise BortError(f"{path}:{lineno}: expected '<gpt2_id> <count>', got {line[:60]!r}")
        symbols.append(parts[0])
    if not symbols:
        raise BortError(f"{path}: empty dictionary (expected '<gpt2_id> <count>' lines)")
    return symbols


def read_gluonnlp_vocab(path):
    """Read a gluon-nlp 0.x Vocab JSON; returns ({token: id}, {special name: token})."""
    text = _read_text(path, "a gluon-nlp Vocab JSON")
    try:
        obj = json.loads(text)
        idx_to_token = obj["idx_to_token"]
    except (json.JSONDecodeError, KeyError, TypeError):
        raise BortError(f"{path}: expected a gluon-nlp Vocab JSON with an 'idx_to_token' list") from None
    if not isinstance(idx_to_token, list) or not all(isinstance(t, str) for t in idx_to_token):
        raise BortError(f"{path}: expected 'idx_to_token' to be a list of strings")
    token_to_id = {}
    for idx, token in enumerate(idx_to_token):
        token_to_id.setdefault(token, idx)
    identifiers = dict(obj.get("identifiers_to_tokens") or {})
    for key in ("padding_token", "bos_token", "eos_token"):  # older gluon-nlp wrote these at top level
        if obj.get(key) is not None:
            identifiers.setdefault(key, obj[key])
    names = {"bos_token": "bos", "eos_token": "eos", "padding_token": "pad", "mask_token": "mask"}
    specials = {names[k]: v for k, v in identifiers.items() if k in names and v is not None}
    if obj.get("unknown_token") is not None:
        specials["unk"] = obj["unknown_token"]
    for name, token in specials.items():
        if token not in token_to_id:
            raise BortError(f"{path}: {name} token {token!r} is not in 'idx_to_token'")
    return token_to_id, specials


# ---------------------------------------------------------------------------------------------------------------
# Byte-level BPE


class ByteBPETokenizer:
    """GPT-2 byte-level BPE: GPT-2 pre-tokenization regex, byte-to-unicode symbols, merges applied by rank.

    `token_to_id` maps BPE token strings (byte-unicode form, e.g. 'Ġthe') and special tokens to output ids.
    `specials` maps names among bos/eos/pad/unk/mask to special token strings. Results are cached per pre-token
    word, so repeated words cost one dict lookup.
    """

    def __init__(self, token_to_id, merges, specials=None, source="vocabulary", merges_source="merges"):
        self._token_to_id = dict(token_to_id)
        self._ranks = {pair: rank for rank, pair in reversed(list(enumerate(merges)))}
        self._byte_encoder = bytes_to_unicode()
        self._byte_decoder = {v: k for k, v in self._byte_encoder.items()}
        self._never = len(merges)
        self._pattern = _regex().compile(GPT2_PATTERN)
        self._ascii_pattern = re.compile(GPT2_PATTERN_ASCII)
        self._specials = dict(specials or {})
        for name, token in self._specials.items():
            if token not in self._token_to_id:
                raise BortError(f"{source}: expected the {name} token {token!r} in the vocabulary")
        self._special_ids = {name: self._token_to_id[tok] for name, tok in self._specials.items()}
        special_tokens = set(self._specials.values())
        self.vocab_size = max(self._token_to_id.values()) + 1
        if self.vocab_size > 2 * len(self._token_to_id) + MAX_ID_GAPS:  # before allocating id tables
            raise BortError(f"{source}: id {self.vocab_size - 1} is far beyond the {len(self._token_to_id)} tokens; "
                            "expected ids 0..N-1 with few gaps")
        self._id_to_token = [None] * self.vocab_size
        for token, idx in self._token_to_id.items():
            self._id_to_token[idx] = token
        missing = [b for b, sym in self._byte_encoder.items() if sym not in self._token_to_id]
        if missing and "unk" not in self._special_ids:
            raise BortError(f"{source}: expected all 256 byte symbols, missing {self._byte_encoder[missing[0]]!r} "
                            f"(byte {missing[0]}) and there is no <unk> token")
        for lineno, (left, right) in enumerate(merges, 1):
            if left + right not in self._token_to_id and "unk" not in self._special_ids:
                raise BortError(f"{merges_source}: merge {lineno} ({left} {right}): merged token is not in "
                                f"{source}")
        self._check_merges_complete(merges, special_tokens, merges_source)
        # id -> bytes for decoding; special tokens (and unknown symbols) decode to their literal text
        self._id_bytes = []
        self._word_start = []
        for token in self._id_to_token:
            if token is None:
                self._id_bytes.append(b"")
                self._word_start.append(False)
                continue
            if token in special_tokens or any(ch not in self._byte_decoder for ch in token):
                raw = token.encode("utf-8")
                self._word_start.append(True)
            else:
                raw = bytes(self._byte_decoder[ch] for ch in token)
                self._word_start.append(raw[:1].isspace())
            self._id_bytes.append(raw)
        self._cache = {}

    def _check_merges_complete(self, merges, special_tokens, merges_source):
        """Every multi-symbol BPE token of the vocabulary must come out of some merge: a merges file cut at a
        line boundary parses fine but silently stops producing its last tokens."""
        produced = {left + right for left, right in merges}
        orphans = [token for token in self._token_to_id
                   if len(token) > 1 and token not in produced and token not in special_tokens
                   and all(ch in self._byte_decoder for ch in token) and not _NOT_BPE_TOKEN.fullmatch(token)]
        if orphans:
            raise BortError(f"{merges_source}: {len(orphans)} vocabulary token(s) come from no merge (first "
                            f"{orphans[0]!r}); the merges file ({len(merges)} merges) looks truncated or belongs to "
                            "another vocabulary")

    def __getstate__(self):  # worker processes get the tokenizer without its (possibly large) word cache
        state = dict(self.__dict__)
        state["_cache"] = {}
        return state

    # --- special ids ------------------------------------------------------------------------------------------
    bos_id = property(lambda self: self._special_ids.get("bos"))
    eos_id = property(lambda self: self._special_ids.get("eos"))
    pad_id = property(lambda self: self._special_ids.get("pad"))
    unk_id = property(lambda self: self._special_ids.get("unk"))
    mask_id = property(lambda self: self._special_ids.get("mask"))

    def token_to_id(self, token):
        """Id of a token (BPE form, e.g. 'Ġthe', or a special like '<mask>'); KeyError when absent."""
        return self._token_to_id[token]

    def id_to_token(self, idx):
        token = self._id_to_token[idx] if 0 <= idx < self.vocab_size else None
        if token is None:
            raise KeyError(idx)
        return token

    def is_word_start(self, idx):
        """True when token `idx` begins a word: it starts with a space (GPT-2 'Ġ') or whitespace, or is special.

        This is fairseq's rule for whole-word masking; the first token of a line has no leading space, so
        callers treat the position after <s> as a word start themselves.
        """
        return self._word_start[idx]

    def word_start_table(self):
        """list[bool] of length vocab_size: `is_word_start` for every id (for vectorised lookups)."""
        return list(self._word_start)

    # --- encoding ---------------------------------------------------------------------------------------------
    def _bpe(self, word):
        """Merge the byte symbols of one pre-token by rank; returns the list of BPE token strings.

        Merges the lowest-ranked adjacent pair, leftmost first, one at a time (as HF `tokenizers` does; for
        merges learnt by BPE training this equals GPT-2's merge-all-occurrences loop).
        """
        symbols = list(word.encode("utf-8").decode("latin-1").translate(self._byte_encoder))
        if len(symbols) < 2:
            return symbols
        get = self._ranks.get
        never = self._never
        ranks = [get(pair, never) for pair in zip(symbols, symbols[1:])]
        while ranks:
            best = min(ranks)
            if best == never:
                break
            i = ranks.index(best)
            merged = symbols[i] + symbols[i + 1]
            symbols[i:i + 2] = [merged]
            del ranks[i]
            if i > 0:
                ranks[i - 1] = get((symbols[i - 1], merged), never)
            if i < len(ranks):
                ranks[i] = get((merged, symbols[i + 1]), never)
        return symbols

    def _encode_word(self, word):
        lookup = self._token_to_id
        unk = self._special_ids.get("unk")
        ids = []
        for piece in self._bpe(word):
            idx = lookup.get(piece)
            if idx is None:  # only with vocabularies that lack some bytes or merge results
                ids.extend(lookup.get(self._byte_encoder[b], unk) for b in
                           bytes(self._byte_decoder[ch] for ch in piece))
            else:
                ids.append(idx)
        ids = tuple(ids)
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache.clear()
        self._cache[word] = ids
        return ids

    def encode(self, text):
        """Token ids of `text` (no <s>/</s> added; special-token text is encoded as plain text)."""
        cache = self._cache
        ids = []
        pattern = self._ascii_pattern if text.isascii() else self._pattern
        for word in pattern.findall(text):
            cached = cache.get(word)
            ids.extend(cached if cached is not None else self._encode_word(word))
        return ids

    def tokenize(self, text):
        """BPE token strings of `text` (for inspection)."""
        return [self._id_to_token[i] for i in self.encode(text)]

    def decode(self, ids):
        """Text of `ids`; exact inverse of `encode` (special tokens decode to their literal text)."""
        table = self._id_bytes
        try:
            raw = b"".join([table[i] for i in ids])
        except (IndexError, TypeError):
            bad = next(i for i in ids if not (isinstance(i, int) and 0 <= i < self.vocab_size))
            raise BortError(f"token id {bad!r} is outside the vocabulary (0..{self.vocab_size - 1})") from None
        return raw.decode("utf-8", errors="replace")


def load_hf_bpe(vocab_json, merges):
    """HF-style vocab.json + merges.txt; specials are recognised by RoBERTa's token strings."""
    token_to_id = read_token_ids_json(vocab_json)
    specials = {name: tok for name, tok in zip(SPECIAL_NAMES, ROBERTA_SPECIALS) if tok in token_to_id}
    if "<|endoftext|>" in token_to_id and not specials:  # GPT-2's own vocabulary
        specials = {"bos": "<|endoftext|>", "eos": "<|endoftext|>"}
    return ByteBPETokenizer(token_to_id, read_merges(merges), specials, source=os.fspath(vocab_json),
                            merges_source=os.fspath(merges))


def load_fairseq_bpe(encoder_json, vocab_bpe, dict_txt=None):
    """fairseq/gluon-nlp-style encoder.json + vocab.bpe, optionally mapped to RoBERTa ids through dict.txt."""
    encoder = read_token_ids_json(encoder_json)
    merges = read_merges(vocab_bpe)
    if dict_txt is None:
        specials = {"bos": "<|endoftext|>", "eos": "<|endoftext|>"} if "<|endoftext|>" in encoder else {}
        return ByteBPETokenizer(encoder, merges, specials, source=os.fspath(encoder_json),
                                merges_source=os.fspath(vocab_bpe))
    by_gpt2_id = {idx: tok for tok, idx in encoder.items()}
    token_to_id = {tok: i for i, tok in enumerate(ROBERTA_SPECIALS[:4])}
    for line_index, symbol in enumerate(read_fairseq_dict(dict_txt)):
        roberta_id = len(ROBERTA_SPECIALS) - 1 + line_index
        if symbol.isdigit():
            if int(symbol) not in by_gpt2_id:
                raise BortError(f"{dict_txt}:{line_index + 1}: GPT-2 id {symbol} is not in {encoder_json}")
            token = by_gpt2_id[int(symbol)]
        else:  # fairseq pads its dictionary with filler words such as madeupword0000
            token = symbol
        token_to_id.setdefault(token, roberta_id)
    token_to_id[ROBERTA_SPECIALS[4]] = len(ROBERTA_SPECIALS) - 1 + line_index + 1
    specials = dict(zip(SPECIAL_NAMES, ROBERTA_SPECIALS))
    return ByteBPETokenizer(token_to_id, merges, specials, source=f"{encoder_json} + {dict_txt}",
                            merges_source=os.fspath(vocab_bpe))


def gluonnlp_models_dir():
    """Where gluon-nlp 0.x caches vocabularies: $MXNET_HOME/models (default ~/.mxnet/models)."""
    return os.path.join(os.path.expanduser(os.environ.get("MXNET_HOME", os.path.join("~", ".mxnet"))), "models")


def _sha1(path):
    digest = hashlib.sha1()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _download_with_gluonnlp(dataset_name, root):
    """gluon-nlp's own download and checksum logic (network); only reached when the user named the dataset."""
    import bort  # noqa: F401  (thread settings before mxnet)
    from gluonnlp.data import GPT2BPETokenizer
    from gluonnlp.data.utils import _load_pretrained_vocab

    _load_pretrained_vocab(dataset_name, root)
    GPT2BPETokenizer(root)


def fetch_gluonnlp_files(dataset_name, root=None):
    """Paths of gluon-nlp's cached vocabulary and BPE ranks for `dataset_name`, fetched with gluon-nlp if absent."""
    if dataset_name not in GLUONNLP_FILES:
        raise BortError(f"--dataset_name {dataset_name}: unknown; expected one of {sorted(GLUONNLP_FILES)} "
                        "or vocabulary files")
    root = root or gluonnlp_models_dir()
    files = GLUONNLP_FILES[dataset_name]
    paths = {key: os.path.join(root, name) for key, (name, _) in files.items()}
    if all(os.path.isfile(p) and _sha1(p) == files[k][1] for k, p in paths.items()):
        return paths["vocab"], paths["merges"]
    hint = ("pass local files instead: --vocab_json/--merges (RoBERTa's vocab.json and merges.txt) or "
            "--encoder_json/--vocab_bpe/--dict_txt (fairseq's gpt2_bpe files)")
    try:
        with contextlib.redirect_stdout(sys.stderr):  # gluon-nlp prints its progress; stdout carries results
            _download_with_gluonnlp(dataset_name, root)
    except Exception as err:  # noqa: BLE001 - any failure (offline, no gluonnlp) becomes one line
        reason = " ".join(f"{type(err).__name__}: {err}".split())
        reason = reason if len(reason) <= 160 else reason[:157] + "..."
        raise BortError(f"--dataset_name {dataset_name}: cannot fetch gluon-nlp's vocabulary into {root} "
                        f"({reason}); {hint}") from None
    for key, path in paths.items():
        if not os.path.isfile(path):
            raise BortError(f"--dataset_name {dataset_name}: {path} is missing after fetching; {hint}")
    return paths["vocab"], paths["merges"]


def load_gluonnlp_bpe(vocab_path, merges_path):
    """gluon-nlp 0.x RoBERTa vocabulary: a Vocab JSON over BPE token strings + GPT-2 BPE ranks."""
    token_to_id, specials = read_gluonnlp_vocab(vocab_path)
    return ByteBPETokenizer(token_to_id, read_merges(merges_path), specials, source=os.fspath(vocab_path),
                            merges_source=os.fspath(merges_path))


# ---------------------------------------------------------------------------------------------------------------
# SentencePiece


class SentencePieceTokenizer:
    """A SentencePiece model with the same interface; special ids come from the model (<mask> if it has one)."""

    def __init__(self, model_file):
        import sentencepiece as spm

        model_file = os.fspath(model_file)
        if not os.path.isfile(model_file):
            raise BortError(f"{model_file}: file not found (expected a SentencePiece .model file)")
        self._sp = spm.SentencePieceProcessor()
        try:
            self._sp.Load(model_file)
        except (OSError, RuntimeError):
            raise BortError(f"{model_file}: expected a SentencePiece .model file (could not parse it)") from None
        self.vocab_size = self._sp.get_piece_size()

        def valid(idx):
            return idx if idx is not None and 0 <= idx < self.vocab_size else None

        self.bos_id = valid(self._sp.bos_id())
        self.eos_id = valid(self._sp.eos_id())
        self.pad_id = valid(self._sp.pad_id())
        self.unk_id = valid(self._sp.unk_id())
        self.mask_id = None
        for piece in ("<mask>", "[MASK]"):
            idx = self._sp.piece_to_id(piece)
            if idx != self._sp.unk_id() and self._sp.id_to_piece(idx) == piece:
                self.mask_id = idx
                break
        self._specials = {i for i in (self.bos_id, self.eos_id, self.pad_id, self.unk_id, self.mask_id)
                          if i is not None}

    def encode(self, text):
        return self._sp.encode(text, out_type=int)

    def tokenize(self, text):
        return self._sp.encode(text, out_type=str)

    def decode(self, ids):
        ids = list(ids)
        for i in ids:
            if not (isinstance(i, int) and 0 <= i < self.vocab_size):
                raise BortError(f"token id {i!r} is outside the vocabulary (0..{self.vocab_size - 1})")
        return self._sp.decode(ids)

    def token_to_id(self, token):
        idx = self._sp.piece_to_id(token)
        if idx == self._sp.unk_id() and token != self._sp.id_to_piece(idx):
            raise KeyError(token)
        return idx

    def id_to_token(self, idx):
        if not 0 <= idx < self.vocab_size:
            raise KeyError(idx)
        return self._sp.id_to_piece(idx)

    def is_word_start(self, idx):
        """True for pieces that start with SentencePiece's word boundary '▁', and for special tokens."""
        return idx in self._specials or self._sp.id_to_piece(idx).startswith("\u2581")

    def word_start_table(self):
        return [self.is_word_start(i) for i in range(self.vocab_size)]


def train_sentencepiece(input_files, model_prefix, vocab_size, model_type="unigram", character_coverage=1.0,
                        byte_fallback=True, input_sentence_size=0, num_threads=1):
    """Train a SentencePiece model for a custom vocabulary; returns the path of `<model_prefix>.model`.

    Special ids follow RoBERTa: <s>=0, <pad>=1, </s>=2, <unk>=3, and <mask>=4 as a user symbol. Text is not
    normalised and whitespace runs are kept, and unseen characters fall back to bytes, so decode(encode(x)) == x.
    The .model and .vocab files appear only when training succeeded.
    """
    import sentencepiece as spm

    if isinstance(input_files, (str, os.PathLike)):
        input_files = [input_files]
    input_files = [os.fspath(f) for f in input_files]
    for path in input_files:
        if not os.path.isfile(path):
            raise BortError(f"{path}: file not found (expected training text for SentencePiece)")
    if vocab_size < 8:
        raise BortError(f"vocab_size={vocab_size}: expected at least 8")
    model_prefix = os.fspath(model_prefix)
    out_dir = os.path.dirname(os.path.abspath(model_prefix))
    os.makedirs(out_dir, exist_ok=True)
    import tempfile

    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".spm-") as tmp:
        tmp_prefix = os.path.join(tmp, "model")
        try:
            spm.SentencePieceTrainer.train(
                input=",".join(input_files), model_prefix=tmp_prefix, vocab_size=vocab_size,
                model_type=model_type, character_coverage=character_coverage, byte_fallback=byte_fallback,
                bos_id=0, pad_id=1, eos_id=2, unk_id=3, bos_piece="<s>", pad_piece="<pad>", eos_piece="</s>",
                unk_piece="<unk>", user_defined_symbols=["<mask>"], normalization_rule_name="identity",
                remove_extra_whitespaces=False, hard_vocab_limit=False, input_sentence_size=input_sentence_size,
                num_threads=num_threads, minloglevel=2)
        except RuntimeError as err:
            raise BortError(f"{input_files[0]}: SentencePiece training failed: {' '.join(str(err).split())}") \
                from None
        for ext in (".vocab", ".model"):
            os.replace(tmp_prefix + ext, model_prefix + ext)
    return model_prefix + ".model"


# ---------------------------------------------------------------------------------------------------------------
# One entry point for every flavour


def load_tokenizer(vocab_json=None, merges=None, encoder_json=None, vocab_bpe=None, dict_txt=None,
                   sentencepiece=None, dataset_name=None):
    """Load a tokenizer from files (these take precedence) or from gluon-nlp's named vocabulary.

    * vocab_json + merges: HF style; ids as in vocab.json (RoBERTa ids for RoBERTa's files).
    * encoder_json + vocab_bpe [+ dict_txt]: plain GPT-2 ids, or RoBERTa ids when dict_txt is given.
    * sentencepiece: a SentencePiece .model file.
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
    if dataset_name:
        return load_gluonnlp_bpe(*fetch_gluonnlp_files(dataset_name))
    raise BortError("no vocabulary given: pass --vocab_json and --merges, --encoder_json and --vocab_bpe "
                    "[--dict_txt], --sentencepiece, or --dataset_name")


def add_tokenizer_args(parser, dataset_name=None):
    """Add the vocabulary flags shared by every CLI. `dataset_name` is the default for --dataset_name."""
    group = parser.add_argument_group("vocabulary (one flavour; files take precedence over --dataset_name)")
    group.add_argument("--vocab_json", help="HF-style vocab.json (with --merges)")
    group.add_argument("--merges", help="HF-style merges.txt (with --vocab_json)")
    group.add_argument("--encoder_json", help="fairseq/GPT-2 encoder.json (with --vocab_bpe)")
    group.add_argument("--vocab_bpe", help="fairseq/GPT-2 vocab.bpe (with --encoder_json)")
    group.add_argument("--dict_txt", help="fairseq dict.txt mapping GPT-2 ids to RoBERTa ids")
    group.add_argument("--sentencepiece", help="SentencePiece .model file")
    group.add_argument("--dataset_name", default=dataset_name,
                       help=f"gluon-nlp vocabulary name ({GLUONNLP_DATASET}); default: {dataset_name}")
    return parser


def tokenizer_from_args(args):
    return load_tokenizer(vocab_json=args.vocab_json, merges=args.merges, encoder_json=args.encoder_json,
                          vocab_bpe=args.vocab_bpe, dict_txt=args.dict_txt, sentencepiece=args.sentencepiece,
                          dataset_name=args.dataset_name)


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
