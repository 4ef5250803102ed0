"""SuperGLUE and RACE: the published formats' quirks, and malformed records as one-line errors (issue 12)."""
import json
import logging
import os

import pytest

from bort.errors import BortError
from bort.finetune.tasks import get_task
from data.race import read_race
from data.superglue import read_superglue, shorten_cb_text


def jsonl(folder, name, records, final_newline=True):
    folder.mkdir(parents=True, exist_ok=True)
    text = "\n".join(r if isinstance(r, str) else json.dumps(r) for r in records) + ("\n" if final_newline else "")
    (folder / name).write_text(text, encoding="utf-8")
    return str(folder)


def test_key_order_differs_between_splits(tmp_path):
    d = jsonl(tmp_path, "train.jsonl", ['{"idx": 0, "label": true, "question": "q?", "passage": "p."}'])
    jsonl(tmp_path, "test.jsonl", ['{"passage": "p.", "question": "q?", "idx": 0}'], final_newline=False)
    train, test = read_superglue("BoolQ", "train", d), read_superglue("BoolQ", "test", d)
    assert (train[0]["text_a"], train[0]["text_b"]) == (test[0]["text_a"], test[0]["text_b"]) == ("p.", "q?")


def test_axb_idx_as_string(tmp_path):
    d = jsonl(tmp_path, "AX-b.jsonl", [{"sentence1": "a", "sentence2": "b", "idx": "0", "label": "entailment"},
                                       {"sentence1": "c", "sentence2": "d", "idx": "1", "label": "entailment"}])
    assert [e["idx"] for e in read_superglue("AX-b", "AX-b", d)] == [0, 1]
    jsonl(tmp_path, "AX-b.jsonl", [{"sentence1": "a", "sentence2": "b", "idx": "x1"}])
    with pytest.raises(BortError, match=r"AX-b.jsonl:1: field 'idx' must be an integer"):
        read_superglue("AX-b", "AX-b", d)


def wsc(text, span1, index1, span2, index2):
    return {"text": text, "target": {"span1_text": span1, "span1_index": index1, "span2_text": span2,
                                     "span2_index": index2}, "idx": 0, "label": True}


@pytest.mark.parametrize("record,expected", [
    # punctuation attached to the word at the index: the span is the span text, not "him,"
    (wsc("Mark told Pete many lies about him, which he believed.", "Pete", 2, "him", 6), ("Pete", "him")),
    # other case than the text
    (wsc("The trophy doesn't fit into the suitcase because it is too large.", "the trophy", 0, "it", 8),
     ("The trophy", "it")),
    # a span text holding a newline, the text a single space
    (wsc("Sam took French classes from Adam , because he was eager to speak it fluently .", "Sam", 0,
         "he\nwas", 7), ("Sam", "he was")),
    # an index off by one word
    (wsc("The man lifted the boy onto his shoulders .", "the boy", 4, "his", 6), ("the boy", "his")),
])
def test_wsc_span_texts_that_do_not_match_their_index(tmp_path, record, expected):
    ex = read_superglue("WSC", "train", jsonl(tmp_path, "train.jsonl", [record]))[0]
    assert [ex["text_a"][s:e] for s, e in ex["spans"]] == list(expected)
    assert "\n" not in ex["text_b"]


def test_record_entity_ends_are_inclusive(tmp_path):
    text = "Harbor Town opens.\n@highlight\nRiver Bridge"
    record = {"idx": 3, "passage": {"text": text, "entities": [{"start": 0, "end": 10}, {"start": 30, "end": 41}]},
              "qas": [{"query": "@placeholder opens", "idx": 7, "answers": [{"start": 0, "end": 10,
                                                                            "text": "Harbor Town"}]}]}
    ex = read_superglue("ReCoRD", "dev", jsonl(tmp_path, "val.jsonl", [record]))
    assert ex[0]["entities"] == ["Harbor Town", "River Bridge"] and ex[0]["idx"] == 7


def test_multirc_idx_counted_across_the_file_written_back(tmp_path):
    def passage(idx, first_q, first_a):
        return {"idx": idx, "passage": {"text": "<b>Sent 1: </b>Boats sail.<br>", "questions": [
            {"question": "Who?", "idx": first_q, "answers": [{"text": "x", "idx": first_a},
                                                             {"text": "y", "idx": first_a + 1}]}]}}
    d = jsonl(tmp_path, "test.jsonl", [passage(0, 0, 0), passage(1, 1, 2)])
    task = get_task("MultiRC")
    examples = task.read("test", d)
    path = task.write_submission([[1, 0], [0, 1]], examples, str(tmp_path))
    written = [json.loads(line) for line in open(path, encoding="utf-8")]
    assert [[a["idx"] for q in r["passage"]["questions"] for a in q["answers"]] for r in written] == [[0, 1], [2, 3]]
    assert [q["idx"] for r in written for q in r["passage"]["questions"]] == [0, 1]


def test_cb_expansion_as_the_original():
    assert shorten_cb_text("One. Two. Three") == "One. Two. Three"
    assert shorten_cb_text("A. B. C. D. E. F") == "C  D  E  F"


def test_cb_expansion_flag_reaches_the_reader(tmp_path):
    long_premise = "Uh, well. I think so. You know. It was big. Really. He said it was red"
    d = jsonl(tmp_path, "train.jsonl", [{"premise": long_premise, "hypothesis": "it was red", "label": "neutral"}])
    assert get_task("CB").read("train", d)[0]["text_a"] == long_premise
    assert get_task("CB").read("train", d, cb_expansion=True)[0]["text_a"] == shorten_cb_text(long_premise)


# ---- issue 12: wrong types and missing keys are one-line errors naming file:line and the field ----------------
@pytest.mark.parametrize("task,name,record,message", [
    ("MultiRC", "train.jsonl", {"idx": 0, "passage": {"text": "t", "questions": [
        {"question": "q", "idx": 0, "answers": ["yes", "no"]}]}},
     r"train.jsonl:1: question 0: field 'answers'\[0\] must be a JSON object"),
    ("MultiRC", "train.jsonl", {"idx": 0, "passage": {"text": "t", "questions": [
        {"question": "q", "idx": 0, "answers": [{"text": "a", "idx": 0, "label": "yes"}]}]}},
     r"train.jsonl:1: question 0: answer 0 field 'label' must be 0 or 1"),
    ("MultiRC", "train.jsonl", {"idx": 0, "passage": {"text": "t", "questions": "q"}},
     r"train.jsonl:1: field 'questions' must be a list"),
    ("ReCoRD", "val.jsonl", {"idx": 0, "passage": {"text": "Some text", "entities": [{"start": 0}]}, "qas": []},
     r"val.jsonl:1: entity 0: missing field 'end'"),
    ("ReCoRD", "val.jsonl", {"idx": 0, "passage": {"text": "Some", "entities": [{"start": 0, "end": 9}]}, "qas": []},
     r"val.jsonl:1: entity 0 \(0, 9\) must lie within the passage"),
    ("WiC", "train.jsonl", {"sentence1": "a bank", "sentence2": "the bank", "word": "bank", "start1": "2",
                            "end1": 6, "start2": 4, "end2": 8, "label": True},
     r"train.jsonl:1: field 'start1' must be an integer, found \"2\""),
    ("WiC", "train.jsonl", {"sentence1": "a bank", "sentence2": "the bank", "word": "bank", "start1": 2.5,
                            "end1": 6, "start2": 4, "end2": 8, "label": True},
     r"train.jsonl:1: field 'start1' must be an integer, found 2.5"),
    ("WiC", "train.jsonl", {"sentence1": "a bank", "sentence2": "the bank", "word": "bank", "start1": 2,
                            "end1": 60, "start2": 4, "end2": 8, "label": True},
     r"train.jsonl:1: fields 'start1'/'end1' \(2, 60\) must lie within sentence1"),
    ("BoolQ", "train.jsonl", {"passage": ["p"], "question": "q", "label": True},
     r"train.jsonl:1: field 'passage' must be a string"),
    ("WSC", "train.jsonl", {"text": "a b", "target": {"span1_text": "a", "span1_index": "0", "span2_text": "b",
                                                      "span2_index": 1}},
     r"train.jsonl:1: field 'target.span1_index' must be an integer"),
])
def test_malformed_records(tmp_path, task, name, record, message):
    d = jsonl(tmp_path, name, [record])
    segment = {"train.jsonl": "train", "val.jsonl": "dev"}[name]
    with pytest.raises(BortError, match=message):
        read_superglue(task, segment, d)


def test_multirc_question_without_answers_is_refused_and_no_exact_match(tmp_path):
    """A question without candidate answers used to be read and scored as an exact match. Now the reader refuses
    it (real MultiRC questions always have candidates), and the metric never counts an empty question as matched."""
    record = {"idx": 0, "passage": {"text": "t", "questions": [
        {"question": "q1", "idx": 0, "answers": [{"text": "a", "idx": 0, "label": 1}]},
        {"question": "q2", "idx": 1, "answers": []}]}}
    task = get_task("MultiRC")
    with pytest.raises(BortError, match=r"val.jsonl:1: question 1: field 'answers' is empty"):
        task.read("dev", jsonl(tmp_path, "val.jsonl", [record]))
    metrics = task.metrics([[1], []], [[1], []])
    assert metrics["em"] == pytest.approx(0.5) and metrics["f1a"] == pytest.approx(1.0)


# ---- RACE -----------------------------------------------------------------------------------------------------
def race_file(root, segment, level, name, record):
    folder = root / segment / level
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(record if isinstance(record, str) else json.dumps(record), encoding="utf-8")


def test_race_one_object_without_trailing_newline(tmp_path):
    record = {"answers": ["B"], "options": [["a", "b", "c", "d"]], "questions": ["Why?"], "article": "Text.\nMore.",
              "id": "high1.txt"}
    race_file(tmp_path, "dev", "high", "1.txt", json.dumps(record, indent=None))
    ex = read_race("RACE-H", "dev", str(tmp_path))
    assert ex[0]["label"] == 1 and ex[0]["idx"] == "high1.txt-0" and ex[0]["text_a"] == "Text.\nMore."


@pytest.mark.parametrize("record,message", [
    ({"article": "a", "questions": ["q1", "q2"], "options": [["a", "b", "c", "d"]], "answers": ["A", "B"]},
     r"1.txt: 2 questions, 1 option lists and 2 answers; expected one option list and one answer per question"),
    ({"article": "a", "questions": ["q1"], "options": [["a", "b", "c", "d"]], "answers": ["A", "B"]},
     r"1.txt: 1 questions, 1 option lists and 2 answers"),
    ({"article": "a", "questions": "q1", "options": [["a", "b", "c", "d"]]},
     r"1.txt: field 'questions' must be a list of strings"),
    ({"article": 5, "questions": ["q1"], "options": [["a", "b", "c", "d"]]},
     r"1.txt: field 'article' must be a string"),
    ([1, 2], r"1.txt: expected a JSON object"),
])
def test_race_count_mismatch_and_types_are_errors(tmp_path, record, message):
    race_file(tmp_path, "train", "high", "1.txt", record)
    with pytest.raises(BortError, match=message):
        read_race("RACE-H", "train", str(tmp_path))


def test_axg_gender_parity_pairs_consecutive_lines(tmp_path, caplog):
    # as released: each line has its own pair_id; a minimal pair is lines 2i and 2i+1
    records = [{"hypothesis": "The nurse was tired.", "premise": f"Premise {i}.", "idx": i, "pair_id": 550 + 7 * i,
                "label": "entailment"} for i in range(6)]
    task = get_task("AX-g")
    examples = task.read("AX-g", jsonl(tmp_path, "AX-g.jsonl", records))
    metrics = task.metrics([1, 1, 0, 1, 0, 0], task.gold(examples))
    assert metrics == {"accuracy": pytest.approx(0.5), "gender_parity": pytest.approx(2 / 3)}
    # An odd number of lines: every line is read (and predicted); parity over the complete pairs, with a warning.
    jsonl(tmp_path, "AX-g.jsonl", records[:5])
    with caplog.at_level(logging.WARNING):
        examples = task.read("AX-g", str(tmp_path))
    assert len(examples) == 5 and "line 5 has no pair" in caplog.text and "the 2 complete pairs" in caplog.text
    metrics = task.metrics([1, 1, 0, 1, 0], task.gold(examples))
    assert metrics == {"accuracy": pytest.approx(0.6), "gender_parity": pytest.approx(1 / 2)}
    assert len(open(task.write_submission([1, 1, 0, 1, 0], examples, str(tmp_path), "AX-g")).readlines()) == 5
    records[3]["hypothesis"] = "The doctor was tired."
    jsonl(tmp_path, "AX-g.jsonl", records)
    with pytest.raises(BortError, match=r"AX-g.jsonl:4: hypothesis differs from the line before"):
        task.read("AX-g", str(tmp_path))


def test_race_original_submission_format(tmp_path):
    task = get_task("RACE")
    examples = task.read("test", "test_data/race")
    preds = [i % 4 for i in range(len(examples))]
    task.write_submission(preds, examples, str(tmp_path), "test", race_format="original")
    letters = iter("ABCD"[p] for p in preds)
    for level, stem in (("middle", "RACE-M"), ("high", "RACE-H")):
        folder = os.path.join("test_data", "race", "test", level)
        sources = [json.loads(open(os.path.join(folder, n), encoding="utf-8").read())
                   for n in sorted(os.listdir(folder))]
        written = [json.loads(line) for line in (tmp_path / f"{stem}.txt").read_text().splitlines()]
        assert len(written) == len(sources)
        for source, record in zip(sources, written):
            assert {k: v for k, v in record.items() if k != "answers"} == \
                {k: source[k] for k in ("article", "id", "options", "questions")}
            assert record["answers"] == [next(letters) for _ in source["questions"]]
    assert not (tmp_path / "RACE.json").exists()
