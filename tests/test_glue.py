import pytest

from bort.errors import BortError
from data.glue import read_glue

D = "test_data/glue/"


def test_cola_headerless_train_and_test_index():
    train = read_glue("CoLA", "train", D + "CoLA")
    assert len(train) == 4 and train[0]["text_a"] == "The boat sails on the river." and train[1]["label"] == "0"
    test = read_glue("CoLA", "test", D + "CoLA")
    assert [e["idx"] for e in test] == [0, 1] and test[0]["label"] is None


def test_mnli_extra_columns_and_segments():
    dev = read_glue("MNLI", "dev_mismatched", D + "MNLI")
    assert dev[1]["label"] == "neutral" and dev[1]["text_b"] == "The cafe sells fish."
    assert len(read_glue("MNLI", "train", D + "MNLI")) == 3
    assert len(read_glue("MNLI", "test_matched", D + "MNLI")) == 3


def test_qqp_malformed_rows_skipped():
    train = read_glue("QQP", "train", D + "QQP")
    assert [e["label"] for e in train] == ["1", "0"]


def test_mrpc_stsb_columns():
    assert read_glue("MRPC", "dev", D + "MRPC")[0]["label"] == "1"
    assert read_glue("STS-B", "train", D + "STS-B")[1]["label"] == "0.500"
    assert read_glue("AX", "diagnostic", D + "AX")[1]["text_a"] == "No boats sail."


def test_bad_files(tmp_path):
    (tmp_path / "train.tsv").write_text("index\tsentence1\tlabel\n0\ta\t1\n")
    with pytest.raises(BortError, match=r"train.tsv:1: missing column 'sentence2'"):
        read_glue("RTE", "train", str(tmp_path))
    (tmp_path / "dev.tsv").write_text("")
    with pytest.raises(BortError, match="dev.tsv: empty file"):
        read_glue("RTE", "dev", str(tmp_path))
    (tmp_path / "train.tsv").write_text("index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n1\tonly\n")
    with pytest.raises(BortError, match=r"train.tsv:3: expected 4 tab-separated fields \(index, sentence1, sentence2, label\), found 2"):
        read_glue("RTE", "train", str(tmp_path))
    with pytest.raises(BortError, match="data directory not found"):
        read_glue("RTE", "train", str(tmp_path / "missing"))
