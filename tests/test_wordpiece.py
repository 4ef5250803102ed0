"""bort.text.wordpiece: a checkpoint's WordPiece vocabulary through gluon-nlp's BERTTokenizer, equal to HF
`tokenizers` on real GLUE sentences; lower-casing from the checkpoint; the tokenizer of an HF directory."""
import csv
import json
import os

import pytest

from bort.errors import BortError
from bort.text.encoding import SequenceEncoder
from bort.text.tokenizer import checkpoint_tokenizer, load_tokenizer
from bort.text.wordpiece import WordPieceTokenizer
from helpers import REAL_DATA

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
# (task, columns of the dev file holding texts) of the four parity tasks.
DEV_TEXTS = [("SST-2", (0,)), ("RTE", (1, 2)), ("MRPC", (3, 4)), ("STS-B", (7, 8))]


def dev_rows(task, columns):
    path = os.path.join(REAL_DATA, "glue_data", task, "dev.tsv")
    with open(path, encoding="utf-8", newline="") as handle:
        rows = list(csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))[1:]
    return [[row[c] for c in columns] for row in rows]


@pytest.mark.real_data
def test_equals_hf_tokenizers_on_real_glue_dev_sentences(minilm_dir):
    """Every dev sentence of SST-2, RTE, MRPC and STS-B: the same ids as HF `tokenizers` with the checkpoint's own
    tokenizer.json, and every pair the same `[CLS] A [SEP] B [SEP]` sequence."""
    from tokenizers import Tokenizer

    spec = os.path.join(minilm_dir, "tokenizer.json")
    reference = Tokenizer.from_file(spec)
    reference.no_truncation()
    reference.no_padding()
    ours = checkpoint_tokenizer(minilm_dir)
    assert isinstance(ours, WordPieceTokenizer) and ours.lower and ours.vocab_size == 30522
    encoder = SequenceEncoder(ours, max_len=512)
    texts = pairs = 0
    for task, columns in DEV_TEXTS:
        for row in dev_rows(task, columns):
            for text in row:
                assert ours.encode(text) == reference.encode(text, add_special_tokens=False).ids, text
                texts += 1
            if len(row) == 2:
                assert encoder(*row)[0] == reference.encode(*row).ids, row
                pairs += 1
    assert texts > 4000 and pairs > 1500


def write_vocab(folder, tokens, lower=None):
    (folder / "vocab.txt").write_text("\n".join(SPECIALS + tokens) + "\n", encoding="utf-8")
    if lower is not None:
        (folder / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": lower}))
    return str(folder / "vocab.txt")


def test_vocab_txt_lowercasing_comes_from_the_checkpoint(tmp_path):
    cased = tmp_path / "cased"
    cased.mkdir()
    tokens = ["hello", "Hello", "world", "##s", ","]
    uncased = load_tokenizer(wordpiece=write_vocab(tmp_path, tokens))  # no tokenizer_config.json: BERT's default
    assert uncased.tokenize("Hello, worlds") == ["hello", ",", "world", "##s"]
    keep_case = load_tokenizer(wordpiece=write_vocab(cased, tokens, lower=False))
    assert keep_case.tokenize("Hello, worlds") == ["Hello", ",", "world", "##s"]
    assert keep_case.encode("Hello xyz") == [6, keep_case.unk_id]
    assert (keep_case.bos_id, keep_case.eos_id, keep_case.pad_id, keep_case.mask_id) == (2, 3, 0, 4)
    assert keep_case.decode(keep_case.encode("worlds")) == "worlds"
    assert keep_case.word_start_table()[keep_case.token_to_id("##s")] is False


def test_checkpoint_tokenizer_prefers_vocab_txt_and_refuses_a_directory_without_one(tmp_path):
    write_vocab(tmp_path, ["a"])
    (tmp_path / "tokenizer.json").write_text(json.dumps({"model": {"type": "BPE", "vocab": {}}}))
    assert isinstance(checkpoint_tokenizer(str(tmp_path)), WordPieceTokenizer)
    os.remove(tmp_path / "vocab.txt")
    with pytest.raises(BortError, match="WordPiece model"):
        checkpoint_tokenizer(str(tmp_path))
    os.remove(tmp_path / "tokenizer.json")
    with pytest.raises(BortError, match="no tokenizer files"):
        checkpoint_tokenizer(str(tmp_path))


@pytest.mark.parametrize("vocab, message", [({"[PAD]": 0, "a": 2}, "integers 0..1"),
                                            ({"a": 0, "b": 1}, "special tokens")])
def test_malformed_tokenizer_json_is_one_line_error(tmp_path, vocab, message):
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps({"model": {"type": "WordPiece", "vocab": vocab}}))
    with pytest.raises(BortError, match=message):
        WordPieceTokenizer(str(path))
