import pytest

from bort.errors import BortError
from data.superglue import read_superglue

D = "test_data/superglue/"


def test_wic_and_wsc_spans():
    wic = read_superglue("WiC", "train", D + "WiC")[0]
    (a0, a1), (b0, b1) = wic["spans"]
    assert wic["text_a"][a0:a1] == "bank" and wic["text_b"][b0:b1] == "bank" and wic["label"] is False
    wsc = read_superglue("WSC", "train", D + "WSC")[1]
    (s0, s1), (p0, p1) = wsc["spans"]
    assert wsc["text_a"][p0:p1] == "it" and wsc["text_a"][s0:s1].startswith("The ")
    assert wsc["text_b"].endswith(" means " + wsc["text_a"][s0:s1])


def test_multirc_record_copa():
    mrc = read_superglue("MultiRC", "train", D + "MultiRC")
    assert len(mrc) == 2 and "<b>" not in mrc[0]["text_a"] and mrc[1]["label"] == [1, 0, 1]
    assert read_superglue("MultiRC", "test", D + "MultiRC")[0]["label"] is None
    rec = read_superglue("ReCoRD", "dev", D + "ReCoRD")
    assert rec[0]["entities"] == ["Harbor Town", "River Bridge", "Summer"] and rec[1]["answers"] == ["Summer"]
    assert "\n" not in rec[0]["text_a"]
    copa = read_superglue("COPA", "train", D + "COPA")[2]
    assert copa["choices"] == ["It was summer.", "It was winter."] and copa["label"] == 1
    assert read_superglue("AX-g", "AX-g", D + "AX-g")[0]["label"] == "entailment"


def test_bad_jsonl(tmp_path):
    (tmp_path / "train.jsonl").write_text('{"premise": "a", "hypothesis": "b", "label": "entailment"}\n{"premise": \n')
    with pytest.raises(BortError, match=r"train.jsonl:2: invalid JSON"):
        read_superglue("CB", "train", str(tmp_path))
    (tmp_path / "train.jsonl").write_text('{"premise": "a", "label": "entailment"}\n')
    with pytest.raises(BortError, match=r"train.jsonl:1: missing field 'hypothesis'"):
        read_superglue("CB", "train", str(tmp_path))
    (tmp_path / "val.jsonl").write_text("\n")
    with pytest.raises(BortError, match="val.jsonl: empty file"):
        read_superglue("CB", "dev", str(tmp_path))
