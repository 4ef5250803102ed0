"""Vocabulary files that parse but are wrong: truncated merges, ids that would allocate gigabytes."""
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
