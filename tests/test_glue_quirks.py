"""Each quirk of the released GLUE files, reproduced byte for byte in a small file, and the BOM in every reader."""
import json

import pytest

from bort.errors import BortError
from bort.io import read_json, read_jsonl, read_lines, read_text
from bort.finetune.tasks import get_task
from data.glue import read_glue

BOM = b"\xef\xbb\xbf"


def write(folder, name, data):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(data if isinstance(data, bytes) else data.encode("utf-8"))
    return folder


def test_mrpc_with_byte_order_mark(tmp_path):
    # the released train.tsv/dev.tsv start with EF BB BF, so the first column read "\ufeffQuality"
    header = "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
    d = write(tmp_path, "train.tsv", BOM + (header + "1\t702876\t702977\tAmrozi said .\tHe said .\n").encode())
    ex = read_glue("MRPC", "train", str(d))
    assert ex[0]["label"] == "1" and ex[0]["text_b"] == "He said ."


def test_bom_dropped_by_every_text_reader(tmp_path):
    (tmp_path / "a.json").write_bytes(BOM + b'{"x": 1}')
    (tmp_path / "a.jsonl").write_bytes(BOM + b'{"x": 1}\n{"x": 2}')
    (tmp_path / "a.txt").write_bytes(BOM + b"first\nsecond")
    assert read_json(str(tmp_path / "a.json")) == {"x": 1}
    assert [r for _, r in read_jsonl(str(tmp_path / "a.jsonl"))] == [{"x": 1}, {"x": 2}]
    assert read_lines(str(tmp_path / "a.txt")) == [(1, "first"), (2, "second")]
    assert read_text(str(tmp_path / "a.txt")) == "first\nsecond"
    # a BOM in the middle of a file is text, not a marker
    (tmp_path / "b.txt").write_bytes(b"a\n" + BOM + b"b")
    assert read_lines(str(tmp_path / "b.txt"))[1][1] == "\ufeffb"
    (tmp_path / "bad.txt").write_bytes(b"ok\n\xff\n")
    with pytest.raises(BortError, match=r"bad.txt:2: not valid UTF-8"):
        read_lines(str(tmp_path / "bad.txt"))


def test_vocabulary_with_byte_order_mark(tmp_path):
    from bort.text.tokenizer import load_tokenizer
    vocab = json.loads(open("test_data/vocab/vocab.json", encoding="utf-8").read())
    (tmp_path / "vocab.json").write_bytes(BOM + json.dumps(vocab).encode("utf-8"))
    (tmp_path / "merges.txt").write_bytes(BOM + open("test_data/vocab/merges.txt", "rb").read())
    plain = load_tokenizer(vocab_json="test_data/vocab/vocab.json", merges="test_data/vocab/merges.txt")
    with_bom = load_tokenizer(vocab_json=str(tmp_path / "vocab.json"), merges=str(tmp_path / "merges.txt"))
    text = "The boat sails on the river."
    assert with_bom.encode(text) == plain.encode(text) and with_bom.vocab_size == plain.vocab_size


def test_cola_headerless_with_empty_third_column_and_no_final_newline(tmp_path):
    rows = "gj04\t1\t\tOur friends won't buy this analysis.\ngj04\t0\t*\tThe more you eat, the less\t"
    d = write(tmp_path, "dev.tsv", rows.rstrip("\t"))
    ex = read_glue("CoLA", "dev", str(d))
    assert [e["label"] for e in ex] == ["1", "0"] and ex[1]["text_a"] == "The more you eat, the less"


def test_unbalanced_quotes_stay_literal(tmp_path):
    header = "index\tsentence1\tsentence2\tlabel\n"
    rows = '0\t"The cat sat\tThe dog "ran" off\tentailment\n1\tIt said "no\tno"\tnot_entailment\n'
    ex = read_glue("RTE", "train", str(write(tmp_path, "train.tsv", header + rows)))
    assert len(ex) == 2 and ex[0]["text_a"] == '"The cat sat' and ex[1]["text_b"] == 'no"'


def test_sst2_trailing_space_stripped_so_train_and_test_encode_alike(tmp_path):
    write(tmp_path, "train.tsv", "sentence\tlabel\nhide new secretions from the parental units \t0\n")
    write(tmp_path, "test.tsv", "index\tsentence\n0\thide new secretions from the parental units\n")
    train, test = read_glue("SST-2", "train", str(tmp_path)), read_glue("SST-2", "test", str(tmp_path))
    assert train[0]["text_a"] == test[0]["text_a"] == "hide new secretions from the parental units"


def test_stsb_zero_padded_ids_and_three_decimal_scores(tmp_path):
    cols = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2"
    write(tmp_path, "dev.tsv", cols + "\tscore\n0\tmain-captions\tMSRvid\t2012test\t0001\tnone\tnone\tA.\tB.\t5.000\n")
    write(tmp_path, "test.tsv", cols + "\n0\tmain-captions\tMSRvid\t2012test\t0024\tnone\tnone\tA.\tB.\n")
    dev = read_glue("STS-B", "dev", str(tmp_path))
    assert get_task("STS-B").gold(dev) == [5.0]
    assert read_glue("STS-B", "test", str(tmp_path))[0]["idx"] == 0  # the index column, not old_index


def test_mnli_12_16_10_columns(tmp_path):
    base = ["index", "promptID", "pairID", "genre", "sentence1_binary_parse", "sentence2_binary_parse",
            "sentence1_parse", "sentence2_parse", "sentence1", "sentence2"]
    train = base + ["label1", "gold_label"]
    dev = base + [f"label{i}" for i in range(1, 6)] + ["gold_label"]

    def row(names, **values):
        return "\t".join(values.get(n, "x") for n in names) + "\n"

    write(tmp_path, "train.tsv", "\t".join(train) + "\n" + row(train, sentence1="A", sentence2="B",
                                                                 gold_label="neutral"))
    write(tmp_path, "dev_matched.tsv", "\t".join(dev) + "\n" + row(dev, sentence1="C", gold_label="entailment"))
    write(tmp_path, "test_matched.tsv", "\t".join(base) + "\n" + row(base, index="7", sentence1="D"))
    assert len(train) == 12 and len(dev) == 16 and len(base) == 10
    assert read_glue("MNLI", "train", str(tmp_path))[0]["label"] == "neutral"
    assert read_glue("MNLI", "dev_matched", str(tmp_path))[0]["label"] == "entailment"
    test = read_glue("MNLI", "test_matched", str(tmp_path))
    assert test[0]["idx"] == 7 and test[0]["label"] is None and test[0]["text_a"] == "D"


def test_extra_fields_are_an_error(tmp_path):
    # issue 12: a row with more fields than the header was silently cut to the header's width
    write(tmp_path, "train.tsv", "index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\textra\n")
    with pytest.raises(BortError, match=r"train.tsv:2: expected 4 tab-separated fields .* found 5"):
        read_glue("RTE", "train", str(tmp_path))


def test_qqp_malformed_rows_skipped_but_counted(tmp_path, caplog):
    header = "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n"
    rows = "0\t1\t2\tWhy?\tHow?\t0\n1\t3\t4\tA question broken\n over lines?\tB?\t1\n"
    ex = read_glue("QQP", "train", str(write(tmp_path, "train.tsv", header + rows)))
    assert len(ex) == 1 and "skipped 2 malformed rows" in caplog.text
