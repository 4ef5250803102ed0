"""The sample-text vocabulary: the bundled one for the bundled sample text, one trained on any other text."""
import os
import subprocess
import sys

import pytest

from bort.io import file_sha256
from bort.text.bpe_train import SOURCE_FILE, ensure_vocab, train_bpe
from bort.text.tokenizer import load_tokenizer

from helpers import ROOT, SAMPLE_TEXT, VOCAB_DIR

OTHER = ("The lighthouse keeper climbed the stairs every evening.\nHe lit the lamp and watched the ships.\n\n"
         "Ships passed the lighthouse at night, and the keeper counted them.\nThe keeper wrote the ships' names "
         "in a book: Ünïcødé names too, and 2024 numbers.\n") * 3


@pytest.mark.sample_text
def test_bundled_vocabulary_is_reused_only_for_its_own_text(tmp_path):
    # The bundled vocabulary records which text it was made from (scripts/make_test_vocab.py writes it).
    with open(os.path.join(VOCAB_DIR, SOURCE_FILE), encoding="utf-8") as handle:
        recorded = handle.read().strip()
    same = ensure_vocab(SAMPLE_TEXT, str(tmp_path / "same"), bundled=VOCAB_DIR)
    if file_sha256(SAMPLE_TEXT) == recorded:
        assert same == "bundled"
        for name in ("vocab.json", "merges.txt"):
            assert (tmp_path / "same" / name).read_bytes() == open(os.path.join(VOCAB_DIR, name), "rb").read()
    else:  # another sample text is in test_data/ (e.g. gluon-nlp's): a vocabulary of its own
        assert same == "trained"
    other = tmp_path / "other.txt"
    other.write_text(OTHER, encoding="utf-8")
    assert ensure_vocab(str(other), str(tmp_path / "other"), bundled=VOCAB_DIR) == "trained"
    assert (tmp_path / "other" / SOURCE_FILE).read_text().strip() == file_sha256(str(other))


def test_trained_vocabulary_round_trips_and_learns_the_words(tmp_path):
    other = tmp_path / "other.txt"
    other.write_text(OTHER, encoding="utf-8")
    ensure_vocab(str(other), str(tmp_path / "v"), vocab_size=400)
    tok = load_tokenizer(vocab_json=str(tmp_path / "v" / "vocab.json"), merges=str(tmp_path / "v" / "merges.txt"))
    assert tok.vocab_size <= 400 and (tok.bos_id, tok.pad_id, tok.eos_id, tok.unk_id) == (0, 1, 2, 3)
    assert tok.mask_id == tok.vocab_size - 1
    for line in OTHER.splitlines() + ["words it never saw: zebra ✓"]:
        assert tok.decode(tok.encode(line)) == line
    # Words repeated in the text became single tokens; byte-level pieces would be 9 and 7.
    assert len(tok.encode(" lighthouse")) == 1 and len(tok.encode(" keeper")) == 1
    assert len(tok.encode(OTHER)) < len(OTHER.encode("utf-8")) / 3
    # Deterministic, and the same through the CLI.
    assert train_bpe(OTHER.splitlines(), 50) == train_bpe(OTHER.splitlines(), 50)
    proc = subprocess.run([sys.executable, "-m", "bort.text.bpe_train", "--input", str(other), "--output_dir",
                           str(tmp_path / "cli"), "--vocab_size", "400"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == "trained", proc.stderr
    assert (tmp_path / "cli" / "vocab.json").read_bytes() == (tmp_path / "v" / "vocab.json").read_bytes()
    proc = subprocess.run([sys.executable, "-m", "bort.text.bpe_train", "--input", str(tmp_path / "missing.txt"),
                           "--output_dir", str(tmp_path / "x")], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.strip() == f"error: {tmp_path / 'missing.txt'}: sample text not found"
