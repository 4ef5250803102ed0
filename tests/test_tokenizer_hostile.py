"""Bad vocabulary files: each malformed line or missing file a one-line error naming it; files that parse but are
wrong (truncated merges, ids that would allocate gigabytes)."""
import json
import os
import resource

import pytest

from bort.text import tokenizer as tk
from bort.errors import BortError

from helpers import VOCAB_DIR


def _copy(tmp_path, name):
    dest = tmp_path / name
    dest.write_bytes(open(os.path.join(VOCAB_DIR, name), "rb").read())
    return dest


def _truncate_lines(path, drop):
    lines = path.read_text(encoding="utf-8").rstrip("\n").split("\n")
    path.write_text("\n".join(lines[:-drop]) + "\n", encoding="utf-8")


@pytest.mark.parametrize("drop", [1, 50])
def test_merges_truncated_at_a_line_boundary(tmp_path, drop):
    vocab, merges = _copy(tmp_path, "vocab.json"), _copy(tmp_path, "merges.txt")
    tk.load_tokenizer(vocab_json=str(vocab), merges=str(merges))  # the complete files load
    _truncate_lines(merges, drop)
    with pytest.raises(BortError, match=rf"merges.txt: {drop} vocabulary token\(s\) come from no merge") as err:
        tk.load_tokenizer(vocab_json=str(vocab), merges=str(merges))
    assert "\n" not in str(err.value)


def test_fairseq_vocab_bpe_truncated(tmp_path):
    encoder, bpe = _copy(tmp_path, "encoder.json"), _copy(tmp_path, "vocab.bpe")
    _truncate_lines(bpe, 3)
    with pytest.raises(BortError, match=r"vocab.bpe: 3 vocabulary token\(s\) come from no merge"):
        tk.load_tokenizer(encoder_json=str(encoder), vocab_bpe=str(bpe))


def test_an_id_of_ten_billion_is_refused_before_allocating(tmp_path):
    vocab, merges = _copy(tmp_path, "vocab.json"), _copy(tmp_path, "merges.txt")
    tokens = json.loads(vocab.read_text(encoding="utf-8"))
    tokens["<mask>"] = 10 ** 10
    vocab.write_text(json.dumps(tokens), encoding="utf-8")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(BortError, match=r"vocab.json: id 10000000000 is far beyond the 1005 tokens"):
        tk.load_tokenizer(vocab_json=str(vocab), merges=str(merges))
    assert (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024 < 200


def test_a_few_gaps_in_the_ids_are_still_accepted(tmp_path):
    vocab, merges = _copy(tmp_path, "vocab.json"), _copy(tmp_path, "merges.txt")
    tokens = json.loads(vocab.read_text(encoding="utf-8"))
    tokens["<mask>"] = len(tokens) + 10
    vocab.write_text(json.dumps(tokens), encoding="utf-8")
    assert tk.load_tokenizer(vocab_json=str(vocab), merges=str(merges)).vocab_size == len(tokens) + 11


# --- malformed files --------------------------------------------------------------------------------------------------------


def _copy_vocab(tmp_path):
    for name in os.listdir(VOCAB_DIR):
        (tmp_path / name).write_bytes(open(os.path.join(VOCAB_DIR, name), "rb").read())
    return {name: str(tmp_path / name) for name in os.listdir(VOCAB_DIR)}


def _break_line(path, lineno, text):
    with open(path, encoding="utf-8") as handle:
        lines = handle.read().split("\n")
    lines[lineno - 1] = text
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("\n".join(lines))


@pytest.mark.parametrize("case, pattern", [
    ("merges_three", r"merges.txt:7: expected two space-separated symbols"),
    ("merges_one", r"merges.txt:3: expected two space-separated symbols"),
    ("merges_unknown", r"merges.txt: merge 4 \(q z\): merged token is not in"),
    ("vocab_json_syntax", r"vocab.json:1: invalid JSON"),
    ("vocab_json_list", r"vocab.json: expected a non-empty JSON object"),
    ("vocab_json_id", r"vocab.json: token 'Ġthe': expected a non-negative integer id"),
    ("vocab_json_dupe", r"vocab.json: id 0 is used by both"),
    ("dict_count", r"dict.txt:5: expected '<gpt2_id> <count>'"),
    ("dict_id", r"dict.txt:2: GPT-2 id 99999 is not in"),
    ("missing", r"nowhere.json: file not found \(expected a JSON object"),
    ("half_pair", r"--vocab_json and --merges must be given together"),
    ("mixed", r"conflicting vocabularies"),
    ("nothing", r"no vocabulary given"),
])
def test_bad_vocab_files(tmp_path, case, pattern):
    f = _copy_vocab(tmp_path)
    kwargs = dict(vocab_json=f["vocab.json"], merges=f["merges.txt"])
    if case == "merges_three":
        _break_line(f["merges.txt"], 7, "a b c")
    elif case == "merges_one":
        _break_line(f["merges.txt"], 3, "lonely")
    elif case == "merges_unknown":
        _break_line(f["merges.txt"], 5, "q z")
        vocab = json.load(open(f["vocab.json"], encoding="utf-8"))
        del vocab["<unk>"]
        json.dump(vocab, open(f["vocab.json"], "w", encoding="utf-8"))
    elif case == "vocab_json_syntax":
        open(f["vocab.json"], "w").write('{"a": 1,')
    elif case == "vocab_json_list":
        open(f["vocab.json"], "w").write("[1, 2]")
    elif case == "vocab_json_id":
        vocab = json.load(open(f["vocab.json"], encoding="utf-8"))
        vocab["Ġthe"] = "four"
        json.dump(vocab, open(f["vocab.json"], "w", encoding="utf-8"))
    elif case == "vocab_json_dupe":
        vocab = json.load(open(f["vocab.json"], encoding="utf-8"))
        vocab["extra"] = 0
        json.dump(vocab, open(f["vocab.json"], "w", encoding="utf-8"))
    elif case in ("dict_count", "dict_id"):
        _break_line(f["dict.txt"], 5 if case == "dict_count" else 2, "12 many" if case == "dict_count" else "99999 3")
        kwargs = dict(encoder_json=f["encoder.json"], vocab_bpe=f["vocab.bpe"], dict_txt=f["dict.txt"])
    elif case == "missing":
        kwargs["vocab_json"] = str(tmp_path / "nowhere.json")
    elif case == "half_pair":
        kwargs = dict(vocab_json=f["vocab.json"])
    elif case == "mixed":
        kwargs["encoder_json"] = f["encoder.json"]
    elif case == "nothing":
        kwargs = {}
    with pytest.raises(BortError, match=pattern) as err:
        tk.load_tokenizer(**kwargs)
    assert "\n" not in str(err.value)


def test_missing_byte_symbols_without_unk(tmp_path):
    f = _copy_vocab(tmp_path)
    encoder = json.load(open(f["encoder.json"], encoding="utf-8"))
    del encoder["Ā"]
    json.dump(encoder, open(f["encoder.json"], "w", encoding="utf-8"))
    with pytest.raises(BortError, match=r"encoder.json: expected all 256 byte symbols, missing 'Ā' \(byte 0\)"):
        tk.load_tokenizer(encoder_json=f["encoder.json"], vocab_bpe=f["vocab.bpe"])
