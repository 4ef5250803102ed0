"""GPT-2 byte-level BPE (`ByteBPETokenizer`) and its loaders for the HF, fairseq and gluon-nlp vocabulary files."""
import os
import re

from bort.errors import BortError
from bort.text.vocab_files import (ROBERTA_SPECIALS, SPECIAL_NAMES, read_fairseq_dict, read_gluonnlp_vocab,
                                   read_merges, read_token_ids_json)

MAX_ID_GAPS = 1024
# Vocabulary entries that are not BPE products: special tokens (<s>, <|endoftext|>) and fairseq's fillers.
_NOT_BPE_TOKEN = re.compile(r"<[^<>]*>|madeupword\d+")
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
# The same pattern for pure-ASCII text, for the faster stdlib `re`: in ASCII, \p{L} is [A-Za-z], \p{N} is [0-9] and
# Unicode White_Space is [\t\n\v\f\r ] (not \x1c-\x1f, which stdlib `re` counts as \s).
_WS = r"\t\n\x0b\x0c\r "
GPT2_PATTERN_ASCII = (r"'s|'t|'re|'ve|'m|'ll|'d| ?[A-Za-z]+| ?[0-9]+| ?[^" + _WS + r"A-Za-z0-9]+|[" + _WS + r"]+(?![^"
                      + _WS + r"])|[" + _WS + r"]+")
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


def compile_gpt2_pattern():
    """GPT2_PATTERN compiled with the `regex` package (stdlib `re` has no \\p{L} classes)."""
    try:
        import regex
    except ImportError as err:  # pragma: no cover - a requirements problem
        raise BortError("GPT-2 byte-level BPE needs the `regex` package: pip install regex") from err
    return regex.compile(GPT2_PATTERN)


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
        self._pattern = compile_gpt2_pattern()
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


def load_gluonnlp_bpe(vocab_path, merges_path):
    """gluon-nlp 0.x RoBERTa vocabulary: a Vocab JSON over BPE token strings + GPT-2 BPE ranks."""
    token_to_id, specials = read_gluonnlp_vocab(vocab_path)
    return ByteBPETokenizer(token_to_id, read_merges(merges_path), specials, source=os.fspath(vocab_path),
                            merges_source=os.fspath(merges_path))
