"""Tokenizers: parity with HF `tokenizers` and gluon-nlp's GPT-2 BPE, vocabulary flavours, SentencePiece, CLI."""
import json
import os
import pickle
import random
import subprocess
import sys
import unicodedata

import pytest

from bort.text import gluonnlp_files as gf
from bort.text import tokenizer as tk
from bort.text.byte_bpe import load_gluonnlp_bpe
from bort.text.sentencepiece_model import train_sentencepiece
from bort.errors import BortError

from helpers import ROOT, SAMPLE_TEXT, VOCAB_DIR

HF_FILES = dict(vocab_json=os.path.join(VOCAB_DIR, "vocab.json"), merges=os.path.join(VOCAB_DIR, "merges.txt"))
FAIRSEQ_FILES = dict(encoder_json=os.path.join(VOCAB_DIR, "encoder.json"),
                     vocab_bpe=os.path.join(VOCAB_DIR, "vocab.bpe"))
DICT_TXT = os.path.join(VOCAB_DIR, "dict.txt")

TRICKY = [
    "Hello world!",
    "  leading spaces, trailing spaces   ",
    "tabs\tand\t\tmore\t tabs and    runs of     spaces",
    "line one\nline two\n\n\nafter blank lines\r\nwindows\n",
    " \n \t \u00a0 \u3000 ",  # whitespace only, including non-breaking and ideographic spaces
    "Digits 0 12 345 6789 3.14159 1,204 97km/h 2nd 10e-3",
    "Punctuation!!! ...?? (brackets) [x] {y} <z> @#$%^&*_+=|\\/~`",
    "Contractions: don't we're they've I'm she'd you'll it's DON'T WE'RE 's 't ''re",
    "Accents: naïve façade Zürich café crème brûlée São Paulo Ærøskøbing",
    "Curly “quotes” and ‘apostrophes’ — dashes – … ellipsis",
    "Emoji 🙂🌊☕ 👩‍👩‍👧 flags 🇫🇷 skin tone 👍🏽",
    "CJK 欢迎 東京タワー 한국어 and Arabic مرحبا and Hindi नमस्ते",
    "Combining e\u0301 and zero\u200bwidth and control \x00\x07\x1f chars",
    "<s> <mask> </s> are plain text here",
    "ASCII separators a\x1cb\x1d c\x1e \x1f d \x0b\x0c e\x7f",
    "Latin-1 spaces a\x85b \x85 c",
    "",
]


def _fuzz_strings(count=200, seed=7):
    rng = random.Random(seed)
    return _fuzz(rng, count, ascii_only=False) + _fuzz(rng, count, ascii_only=True)


def _fuzz(rng, count, ascii_only):
    pieces = [" ", "  ", "\t", "\n", "'s", "'t", "'re", "'ll", "é", "ü", "🙂", "欢", "…", "“", "0", "42", "3.5", ",",
              "!!", "\u00a0", "\u0301", "x", "the", " the", "Anna", "harbor", "ZÜRICH", "\x7f", "\U0010fffd", "\x1c", "\x1f", "\x0b", "\r\n", "\x85",
              "'S", "'", "a", "B", "9", "-", "  \t "]
    out = []
    for _ in range(count):
        parts = []
        for _ in range(rng.randint(0, 12)):
            if rng.random() < 0.8 or ascii_only:
                parts.append(rng.choice(pieces))
            else:  # any assigned code point (HF's regex engine and `regex` may follow different Unicode
                # versions, which disagree about characters assigned only recently)
                char = chr(rng.randint(0, 0x10FFFF))
                parts.append(char if unicodedata.category(char) not in ("Cn", "Cs") else "?")
        text = "".join(parts)
        out.append(text.encode("ascii", "ignore").decode("ascii") if ascii_only else text)
    return out


@pytest.fixture(scope="module")
def roberta():
    return tk.load_tokenizer(**HF_FILES)


@pytest.fixture(scope="module")
def sample_lines():
    with open(SAMPLE_TEXT, encoding="utf-8") as handle:
        return handle.read().split("\n")


def _hf_bpe(vocab_json, merges):
    tokenizers = pytest.importorskip("tokenizers")
    hf = tokenizers.Tokenizer(tokenizers.models.BPE.from_file(vocab_json, merges))
    hf.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    hf.decoder = tokenizers.decoders.ByteLevel()
    return hf


# --- sample text and shipped vocabulary -------------------------------------------------------------------------


@pytest.mark.sample_text
def test_sample_text_format(sample_lines):
    """One sentence per line, blank lines between documents, some non-ASCII: the bundled text or gluon-nlp's."""
    text = "\n".join(sample_lines)
    documents = [d for d in text.split("\n\n") if d.strip()]
    assert len(documents) >= 2
    sentences = [line for line in sample_lines if line.strip()]
    assert 20 <= len(sentences) <= 150
    assert any(any(ord(ch) > 127 for ch in line) for line in sentences)
    from bort.io import file_sha256  # noqa: PLC0415
    from bort.text.bpe_train import SOURCE_FILE  # noqa: PLC0415
    if file_sha256(SAMPLE_TEXT) == open(os.path.join(ROOT, "test_data", "vocab", SOURCE_FILE)).read().strip():
        assert len(documents) >= 4 and 80 <= len(sentences)  # the bundled text also has whitespace runs and tabs
        assert any("\t" in line or "  " in line for line in sentences)


def test_shipped_vocab_layout(roberta):
    with open(HF_FILES["vocab_json"], encoding="utf-8") as handle:
        vocab = json.load(handle)
    assert sorted(vocab.values()) == list(range(len(vocab)))
    assert 1000 <= len(vocab) <= 2000
    assert [vocab[t] for t in ("<s>", "<pad>", "</s>", "<unk>")] == [0, 1, 2, 3]
    assert vocab["<mask>"] == len(vocab) - 1
    assert (roberta.bos_id, roberta.pad_id, roberta.eos_id, roberta.unk_id, roberta.mask_id) == \
        (0, 1, 2, 3, len(vocab) - 1)
    assert roberta.vocab_size == len(vocab)
    assert roberta.token_to_id("<mask>") == roberta.mask_id
    assert roberta.id_to_token(roberta.bos_id) == "<s>"
    with pytest.raises(KeyError):
        roberta.token_to_id("not-a-token")


# --- parity with independent implementations --------------------------------------------------------------------


@pytest.mark.sample_text
def test_ids_match_hf_tokenizers(roberta, sample_lines):
    hf = _hf_bpe(HF_FILES["vocab_json"], HF_FILES["merges"])
    full_text = "\n".join(sample_lines)
    texts = TRICKY + sample_lines + [full_text] + _fuzz_strings()
    mismatches = [t for t in texts if roberta.encode(t) != hf.encode(t).ids]
    assert not mismatches, f"{len(mismatches)} texts differ, first: {mismatches[0]!r}"
    ids = roberta.encode(full_text)
    assert roberta.decode(ids) == hf.decode(ids, skip_special_tokens=False) == full_text


def test_plain_gpt2_ids_match_hf_tokenizers(sample_lines):
    hf = _hf_bpe(FAIRSEQ_FILES["encoder_json"], FAIRSEQ_FILES["vocab_bpe"])
    gpt2 = tk.load_tokenizer(**FAIRSEQ_FILES)
    assert gpt2.vocab_size == 1000 and gpt2.mask_id is None and gpt2.bos_id is None
    for text in TRICKY + sample_lines:
        assert gpt2.encode(text) == hf.encode(text).ids, text


def _gluonnlp_gpt2bpe(monkeypatch, tmp_path, merges):
    """gluon-nlp 0.10's own GPT2BPETokenizer reading our merges from its cache (no download: checksum patched)."""
    transforms = pytest.importorskip("gluonnlp.data.transforms")
    pytest.importorskip("regex")
    name = transforms.GPT2BPETokenizer.bpe_ranks_file_hash[0]
    (tmp_path / name).write_bytes(open(merges, "rb").read())
    monkeypatch.setattr(transforms, "check_sha1", lambda *args, **kwargs: True)
    monkeypatch.setattr(transforms, "download", None)  # a download attempt would fail loudly
    return transforms.GPT2BPETokenizer(root=str(tmp_path))


def test_tokens_match_gluonnlp_gpt2bpe(roberta, sample_lines, monkeypatch, tmp_path):
    """gluon-nlp's GPT2BPETokenizer (its own regex and merge loop) splits text into the same BPE strings."""
    ref = _gluonnlp_gpt2bpe(monkeypatch, tmp_path, HF_FILES["merges"])
    for text in TRICKY + sample_lines + _fuzz_strings(100, seed=5):
        assert roberta.tokenize(text) == ref(text), text


# --- vocabulary flavours ------------------------------------------------------------------------------------------


def test_flavours_give_same_roberta_ids(roberta, sample_lines):
    fairseq = tk.load_tokenizer(**FAIRSEQ_FILES, dict_txt=DICT_TXT)
    gpt2 = tk.load_tokenizer(**FAIRSEQ_FILES)
    assert fairseq.vocab_size == roberta.vocab_size
    assert (fairseq.bos_id, fairseq.pad_id, fairseq.eos_id, fairseq.unk_id, fairseq.mask_id) == \
        (roberta.bos_id, roberta.pad_id, roberta.eos_id, roberta.unk_id, roberta.mask_id)
    with open(DICT_TXT, encoding="utf-8") as handle:
        gpt2_to_roberta = {int(line.split()[0]): 4 + i for i, line in enumerate(handle)}
    differing = 0
    for text in TRICKY + sample_lines:
        ids = roberta.encode(text)
        assert fairseq.encode(text) == ids
        plain = gpt2.encode(text)
        assert [gpt2_to_roberta[i] for i in plain] == ids
        differing += plain != ids
    assert differing > 0  # the two id spaces really differ, so the mapping is exercised
    for idx in range(roberta.vocab_size):
        assert fairseq.id_to_token(idx) == roberta.id_to_token(idx)


def test_gluonnlp_vocab_json_flavour(roberta, tmp_path, sample_lines):
    """gluon-nlp's Vocab JSON format (as gluon-nlp itself reads it) loads to the same ids."""
    with open(HF_FILES["vocab_json"], encoding="utf-8") as handle:
        vocab = json.load(handle)
    idx_to_token = sorted(vocab, key=vocab.get)
    obj = {"idx_to_token": idx_to_token, "token_to_idx": vocab, "reserved_tokens": ["<s>", "<pad>", "</s>", "<mask>"],
           "unknown_token": "<unk>", "identifiers_to_tokens": {"bos_token": "<s>", "eos_token": "</s>",
                                                               "padding_token": "<pad>", "mask_token": "<mask>"}}
    path = tmp_path / "roberta.vocab"
    path.write_text(json.dumps(obj), encoding="utf-8")
    gluon_tok = load_gluonnlp_bpe(path, HF_FILES["merges"])
    nlp = pytest.importorskip("gluonnlp")
    gluon_vocab = nlp.Vocab.from_json(path.read_text(encoding="utf-8"))
    for text in sample_lines[:20]:
        assert gluon_tok.encode(text) == roberta.encode(text) == gluon_vocab[roberta.tokenize(text)]
    assert gluon_tok.mask_id == gluon_vocab[gluon_vocab.mask_token] == roberta.mask_id
    assert gluon_tok.pad_id == gluon_vocab[gluon_vocab.padding_token] == 1


def test_dataset_name_uses_gluonnlp_cache(monkeypatch, tmp_path, roberta):
    vocab_path = tmp_path / "roberta.vocab"
    with open(HF_FILES["vocab_json"], encoding="utf-8") as handle:
        vocab = json.load(handle)
    vocab_path.write_text(json.dumps({"idx_to_token": sorted(vocab, key=vocab.get), "unknown_token": "<unk>",
                                      "identifiers_to_tokens": {"bos_token": "<s>", "eos_token": "</s>",
                                                                "padding_token": "<pad>", "mask_token": "<mask>"}}))
    merges_path = tmp_path / "ranks.json"
    merges_path.write_bytes(open(HF_FILES["merges"], "rb").read())
    files = {"vocab": (vocab_path.name, gf.file_sha1(vocab_path)), "merges": (merges_path.name, gf.file_sha1(merges_path))}
    monkeypatch.setitem(gf.GLUONNLP_FILES, "tiny_test_vocab", files)
    monkeypatch.setenv("MXNET_HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    os.symlink(tmp_path, tmp_path / "home" / "models")

    def no_download(*args):
        raise AssertionError("cached files must be used without fetching")

    monkeypatch.setattr(gf, "download_with_gluonnlp", no_download)
    tok = tk.load_tokenizer(dataset_name="tiny_test_vocab")
    assert tok.encode("The harbor is quiet.") == roberta.encode("The harbor is quiet.")
    # files given explicitly take precedence over a default --dataset_name
    assert tk.load_tokenizer(**HF_FILES, dataset_name="no_such_dataset").vocab_size == roberta.vocab_size


def test_dataset_name_fetch_failure_is_one_line(monkeypatch, tmp_path):
    monkeypatch.setenv("MXNET_HOME", str(tmp_path))

    def offline(*args):
        raise OSError("network is unreachable")

    monkeypatch.setattr(gf, "download_with_gluonnlp", offline)
    with pytest.raises(BortError) as err:
        tk.load_tokenizer(dataset_name=gf.GLUONNLP_DATASET)
    message = str(err.value)
    assert "\n" not in message and "network is unreachable" in message
    assert "--vocab_json/--merges" in message and "--encoder_json/--vocab_bpe/--dict_txt" in message
    with pytest.raises(BortError, match="unknown"):
        tk.load_tokenizer(dataset_name="wikitext-2")


# --- round trips and word starts -----------------------------------------------------------------------------------


def test_decode_inverts_encode(roberta, sample_lines):
    gpt2 = tk.load_tokenizer(**FAIRSEQ_FILES)
    for text in TRICKY + sample_lines + _fuzz_strings(300, seed=11):
        assert roberta.decode(roberta.encode(text)) == text
        assert gpt2.decode(gpt2.encode(text)) == text
    assert roberta.decode([roberta.bos_id] + roberta.encode("Hi") + [roberta.eos_id]) == "<s>Hi</s>"
    with pytest.raises(BortError, match="outside the vocabulary"):
        roberta.decode([5, roberta.vocab_size])


def test_encode_adds_no_specials_and_caches(roberta):
    ids = roberta.encode("The boats rest in the water.")
    assert roberta.bos_id not in ids and roberta.eos_id not in ids
    assert roberta.encode("<mask>") != [roberta.mask_id]
    assert roberta.encode("The boats rest in the water.") == ids  # served from the word cache
    copy = pickle.loads(pickle.dumps(roberta))  # as sent to worker processes: same ids, empty cache
    assert copy._cache == {} and copy.encode("The boats rest in the water.") == ids


def test_word_starts(roberta):
    ids = roberta.encode("The harbor is quiet, but Zürich isn't.")
    tokens = [roberta.id_to_token(i) for i in ids]
    starts = [roberta.is_word_start(i) for i in ids]
    assert starts == [t.startswith("Ġ") for t in tokens]
    zurich = tokens.index("ĠZÃ")  # "Zürich" is split into pieces, only the first starts a word
    assert starts[zurich] and not starts[zurich + 1]
    table = roberta.word_start_table()
    assert len(table) == roberta.vocab_size and all(table[i] for i in (0, 1, 2, 3, roberta.mask_id))


# --- SentencePiece -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sp_model(tmp_path_factory):
    prefix = tmp_path_factory.mktemp("spm") / "sample"
    return train_sentencepiece([SAMPLE_TEXT], prefix, vocab_size=600)


def test_sentencepiece_train_load_round_trip(sp_model, sample_lines):
    assert os.path.isfile(sp_model) and os.path.isfile(sp_model[:-len(".model")] + ".vocab")
    sp = tk.load_tokenizer(sentencepiece=sp_model)
    assert sp.vocab_size == 600
    assert (sp.bos_id, sp.pad_id, sp.eos_id, sp.unk_id, sp.mask_id) == (0, 1, 2, 3, 4)
    assert sp.id_to_token(sp.mask_id) == "<mask>" and sp.token_to_id("<mask>") == 4
    full = "\n".join(sample_lines)
    for text in TRICKY + sample_lines + [full] + _fuzz_strings(100, seed=3):
        assert sp.decode(sp.encode(text)) == text, text
    probes = [line for line in sample_lines if line.isascii() and len(line) > 30]
    probe = probes[len(probes) // 2]  # a sentence of the sample text, whichever text that is
    ids = sp.encode(probe)
    assert len(ids) < len(probe) / 2  # learned real subwords
    assert sp.unk_id not in sp.encode(full) and sp.is_word_start(ids[0])
    assert len(sp.word_start_table()) == sp.vocab_size


def test_sentencepiece_errors(tmp_path):
    bad = tmp_path / "bad.model"
    bad.write_bytes(b"not a model")
    with pytest.raises(BortError, match="bad.model: expected a SentencePiece"):
        tk.load_tokenizer(sentencepiece=str(bad))
    with pytest.raises(BortError, match="missing.txt: file not found"):
        train_sentencepiece([str(tmp_path / "missing.txt")], tmp_path / "x", 100)
    assert not list(tmp_path.glob("x.*"))


# --- CLI -----------------------------------------------------------------------------------------------------------


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "bort.text.tokenizer", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, encoding="utf-8", timeout=120)


def test_cli_prints_ids_per_line(roberta, tmp_path, sample_lines):
    text_file = tmp_path / "in.txt"
    lines = sample_lines[:6] + ["", "Emoji 🙂 and   spaces\tand tabs"]
    text_file.write_text("\n".join(lines) + "\n", encoding="utf-8")
    gpt2 = tk.load_tokenizer(**FAIRSEQ_FILES)
    result = _cli("--encoder_json", FAIRSEQ_FILES["encoder_json"], "--vocab_bpe", FAIRSEQ_FILES["vocab_bpe"], text_file)
    assert result.returncode == 0, result.stderr
    out = result.stdout.split("\n")
    assert out[-1] == "" and len(out) - 1 == len(lines)
    assert [[int(x) for x in row.split()] for row in out[:-1]] == [gpt2.encode(line) for line in lines]
    result = _cli("--vocab_json", HF_FILES["vocab_json"], "--merges", HF_FILES["merges"], text_file)
    assert result.returncode == 0, result.stderr
    assert [[int(x) for x in row.split()] for row in result.stdout.splitlines()] == \
        [roberta.encode(line) for line in lines]
    assert result.stdout.splitlines()[6] == ""


def test_cli_errors_exit_2(tmp_path):
    bad_merges = tmp_path / "merges.txt"
    lines = open(HF_FILES["merges"], encoding="utf-8").read().split("\n")
    lines[6] = "three part line"
    bad_merges.write_text("\n".join(lines), encoding="utf-8")
    text_file = tmp_path / "in.txt"
    text_file.write_bytes(b"fine line\nbad \xff byte\n")
    cases = [
        (("--vocab_json", HF_FILES["vocab_json"], "--merges", bad_merges, SAMPLE_TEXT),
         f"{bad_merges}:7: expected two space-separated symbols"),
        (("--vocab_json", tmp_path / "none.json", "--merges", HF_FILES["merges"], SAMPLE_TEXT),
         f"{tmp_path / 'none.json'}: file not found"),
        (("--vocab_json", HF_FILES["vocab_json"], "--merges", HF_FILES["merges"], text_file),
         f"{text_file}:2: expected UTF-8 text"),
        (("--vocab_json", HF_FILES["vocab_json"], "--merges", HF_FILES["merges"], tmp_path / "absent.txt"),
         "absent.txt: file not found"),
        ((SAMPLE_TEXT,), "no vocabulary given"),
    ]
    for args, expected in cases:
        result = _cli(*args)
        assert result.returncode == 2, (args, result.stderr)
        assert result.stdout == "" or expected.endswith("UTF-8 text")
        err_lines = result.stderr.strip().split("\n")
        assert len(err_lines) == 1 and err_lines[0].startswith("error: ") and expected in err_lines[0], \
            result.stderr


def test_shared_cli_flags(sp_model):
    import argparse

    parser = tk.add_tokenizer_args(argparse.ArgumentParser(), dataset_name=gf.GLUONNLP_DATASET)
    args = parser.parse_args(["--sentencepiece", sp_model])
    assert args.dataset_name == gf.GLUONNLP_DATASET
    assert tk.tokenizer_from_args(args).mask_id == 4  # files win over the default dataset name
    args = parser.parse_args(["--vocab_json", HF_FILES["vocab_json"], "--merges", HF_FILES["merges"]])
    assert tk.tokenizer_from_args(args).encode("the sea") == tk.load_tokenizer(**HF_FILES).encode("the sea")
