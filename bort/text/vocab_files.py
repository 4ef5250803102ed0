"""Vocabulary files of the byte-level BPE flavours, read with one-line errors naming the file and what was expected.

* HF ``vocab.json`` / fairseq ``encoder.json``: a JSON object {token: id} (`read_token_ids_json`);
* ``merges.txt`` / ``vocab.bpe``: one 'left right' pair per line, by rank (`read_merges`);
* fairseq ``dict.txt``: '<gpt2_id> <count>' per line, mapping GPT-2 ids to RoBERTa ids (`read_fairseq_dict`);
* gluon-nlp 0.x Vocab JSON (`read_gluonnlp_vocab`).
"""
import json

from bort.errors import BortError
from bort.io import read_text

ROBERTA_SPECIALS = ("<s>", "<pad>", "</s>", "<unk>", "<mask>")
SPECIAL_NAMES = ("bos", "pad", "eos", "unk", "mask")  # in the order of ROBERTA_SPECIALS
MERGES_HEADER = "#version"


def read_token_ids_json(path):
    """Read a JSON object {token: id} (HF vocab.json or fairseq encoder.json)."""
    text = read_text(path, "a JSON object mapping tokens to integer ids")
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
    lines = read_text(path, "BPE merges, one 'left right' pair per line").split("\n")
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
    lines = read_text(path, "fairseq dictionary lines '<gpt2_id> <count>'").split("\n")
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
    text = read_text(path, "a gluon-nlp Vocab JSON")
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
