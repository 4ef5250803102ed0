import json
import os

import pytest

from bort.errors import BortError
from bort.finetune.tasks import TASKS, get_task, official_score
from bort.text.encoding import SequenceEncoder, truncate_equal
from bort.text.tokenizer import load_tokenizer

DIRS = {"glue": "test_data/glue/", "superglue": "test_data/superglue/", "race": "test_data/race"}
EXPECTED_FILES = {
    "CoLA": ["CoLA.tsv"], "SST-2": ["SST-2.tsv"], "MRPC": ["MRPC.tsv"], "STS-B": ["STS-B.tsv"], "QQP": ["QQP.tsv"],
    "MNLI": ["MNLI-m.tsv", "MNLI-mm.tsv"], "QNLI": ["QNLI.tsv"], "RTE": ["RTE.tsv"], "WNLI": ["WNLI.tsv"],
    "AX": ["AX.tsv"], "BoolQ": ["BoolQ.jsonl"], "CB": ["CB.jsonl"], "COPA": ["COPA.jsonl"],
    "MultiRC": ["MultiRC.jsonl"], "ReCoRD": ["ReCoRD.jsonl"], "SuperGLUE-RTE": ["RTE.jsonl"], "WiC": ["WiC.jsonl"],
    "WSC": ["WSC.jsonl"], "AX-b": ["AX-b.jsonl"], "AX-g": ["AX-g.jsonl"], "RACE-M": ["RACE-M.json"],
    "RACE-H": ["RACE-H.json"], "RACE": ["RACE.json"]}
LABEL_STRINGS = {"BoolQ": {"true", "false"}, "WiC": {"true", "false"}, "WSC": {"True", "False"},
                 "CB": {"entailment", "contradiction", "neutral"}, "SuperGLUE-RTE": {"entailment", "not_entailment"},
                 "AX-b": {"entailment", "not_entailment"}, "AX-g": {"entailment", "not_entailment"}}


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(vocab_json="test_data/vocab/vocab.json", merges="test_data/vocab/merges.txt")


def data_dir(task):
    return DIRS[task.benchmark] + ("" if task.benchmark == "race" else {"SuperGLUE-RTE": "RTE"}.get(task.name, task.name))


def fake_preds(task, examples, instances):
    """Predictions that equal the gold labels where there are any (else a fixed pattern)."""
    gold = task.gold(examples)
    if gold is not None and task.kind != "entities":
        return gold
    if task.kind == "entities" and gold is not None:
        return [answers[0] for answers in gold]
    if task.kind == "entities":
        return [e["entities"][i % len(e["entities"])] for i, e in enumerate(examples)]
    if task.kind == "answers":
        return [[i % 2 for i, _ in enumerate(e["answers"])] for e in examples]
    if task.kind == "regress":
        return [0.5 * i for i in range(len(examples))]
    return [i % max(task.num_outputs if task.kind == "classify" else task.num_choices, 1) for i in range(len(examples))]


@pytest.mark.parametrize("name", sorted(TASKS))
def test_every_task_reads_encodes_and_writes(name, tok, tmp_path):
    task = get_task(name)
    for segment in ([task.train_segment] if task.dev_segments else []) + list(task.dev_segments):
        examples = task.read(segment, data_dir(task))
        instances = task.encode(examples, tok, 64, train=segment == "train")
        assert instances and all(inst.target is not None for inst in instances)
        preds = fake_preds(task, examples, instances)
        metrics = task.metrics(preds, task.gold(examples))
        assert official_score(task, metrics) == pytest.approx(1.0)  # gold predictions score perfectly
    written = []
    for segment, _ in task.test_segments:
        examples = task.read(segment, data_dir(task))
        instances = task.encode(examples, tok, 64)
        assert all(len(s) <= 64 and s[0] == tok.bos_id and s[-1] == tok.eos_id for i in instances for s in i.seqs)
        preds = fake_preds(task, examples, instances)
        path = task.write_submission(preds, examples, str(tmp_path), segment)
        written.append(os.path.basename(path))
        check_parsed_back(task, path, examples, preds)
    assert sorted(written) == sorted(EXPECTED_FILES[name])


def check_parsed_back(task, path, examples, preds):
    text = open(path, encoding="utf-8").read()
    if task.benchmark == "glue":
        lines = text.splitlines()
        assert lines[0] == "index\tprediction"
        rows = [line.split("\t") for line in lines[1:]]
        assert [int(r[0]) for r in rows] == [e["idx"] for e in examples]
        if task.kind == "regress":
            assert [float(r[1]) for r in rows] == pytest.approx([min(5, max(0, p)) for p in preds], abs=1e-3)
        else:
            assert [r[1] for r in rows] == [task.labels[p] for p in preds]
    elif task.benchmark == "race":
        assert json.loads(text) == {e["idx"]: "ABCD"[p] for e, p in zip(examples, preds)}
    else:
        records = [json.loads(line) for line in text.splitlines()]
        if task.kind == "answers":
            flat = [(q["idx"], [a["label"] for a in q["answers"]]) for r in records for q in r["passage"]["questions"]]
            assert flat == [(e["idx"], p) for e, p in zip(examples, preds)]
            assert [r["idx"] for r in records] == sorted({e["passage_idx"] for e in examples})
        else:
            assert [r["idx"] for r in records] == [e["idx"] for e in examples]
            labels = [r["label"] for r in records]
            if task.kind == "choice":
                assert labels == preds
            elif task.kind == "entities":
                assert labels == preds
            else:
                assert set(labels) <= LABEL_STRINGS.get(task.name, set(task.labels))
                assert labels == [(task.output_labels or task.labels)[p] for p in preds]


def test_pair_encoding_and_equal_truncation(tok):
    enc = SequenceEncoder(tok, 12)
    a, b = tok.encode("The town"), tok.encode("The river")
    ids, _ = enc("The town", "The river")
    assert ids == [tok.bos_id] + a + [tok.eos_id] + b + [tok.eos_id]
    assert truncate_equal([10, 3], 8) == [5, 3]
    assert truncate_equal([10, 10], 7) == [4, 3]
    ids, _ = SequenceEncoder(tok, 9)("the town and the river and the sea", "the morning in winter at the harbor")
    assert len(ids) == 9


def test_span_positions_point_at_the_words(tok):
    task = get_task("WiC")
    ex = task.read("train", "test_data/superglue/WiC")[0]
    inst = task.encode([ex], tok, 64)[0]
    ids = inst.seqs[0]
    for (start, end), text in zip(inst.spans[0], ["bank", "bank"]):
        assert end > start and tok.decode(ids[start:end]).strip() == text
    wsc = get_task("WSC")
    ex = wsc.read("train", "test_data/superglue/WSC")[1]
    inst = wsc.encode([ex], tok, 64)[0]
    (s0, s1), (p0, p1) = inst.spans[0]
    assert tok.decode(inst.seqs[0][p0:p1]).strip() == "it"
    assert tok.decode(inst.seqs[0][s0:s1]).strip() == ex["text_a"][ex["spans"][0][0]:ex["spans"][0][1]]


def test_wrong_label_and_aliases(tok, tmp_path):
    (tmp_path / "train.tsv").write_text("index\tsentence1\tsentence2\tlabel\n0\ta\tb\tyes\n")
    task = get_task("RTE")
    with pytest.raises(BortError, match=r"train.tsv:2: unknown label 'yes'; expected one of"):
        task.encode(task.read("train", str(tmp_path)), tok, 32)
    assert get_task("SST").name == "SST-2" and get_task("AXb").name == "AX-b" and get_task("SuperGLUERTE").name
    with pytest.raises(BortError, match="unknown task"):
        get_task("NOPE")


def test_record_training_set_is_semi_balanced(tok):
    task = get_task("ReCoRD")
    examples = task.read("train", "test_data/superglue/ReCoRD")
    assert [i.target for i in task.encode(examples, tok, 64, train=True)] == [1, 0]
    assert len(task.encode(examples, tok, 64, train=False)) == 3


def test_registry_does_not_depend_on_the_training_loop():
    """bort.finetune.tasks describes tasks; bort.finetune.loop uses it, never the reverse (no import cycle, no MXNet)."""
    import subprocess
    import sys
    code = "import sys, bort.finetune.tasks; print(sorted(m for m in ('bort.finetune.loop', 'mxnet') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    import bort.finetune.tasks
    assert not hasattr(bort.finetune.tasks, "build_task_model") and not hasattr(bort.finetune.tasks, "predict_outputs")


def test_has_data_says_whether_a_segments_files_are_there(tmp_path):
    """What a training run checks before it reads a test segment (a missing test file: no leaderboard file)."""
    wnli = get_task("WNLI")
    assert wnli.has_data("test", "test_data/glue/WNLI") and not wnli.has_data("test", str(tmp_path))
    assert not wnli.has_data("test", str(tmp_path / "absent"))
    cb = get_task("CB")
    (tmp_path / "dev.jsonl").write_text("")  # SuperGLUE's dev segment: val.jsonl or dev.jsonl
    assert cb.has_data("dev", str(tmp_path)) and not cb.has_data("test", str(tmp_path))
    assert get_task("AX").has_data("diagnostic", "test_data/glue/AX")
    race = tmp_path / "race"
    (race / "test" / "middle").mkdir(parents=True)
    assert get_task("RACE-M").has_data("test", str(race)) and not get_task("RACE").has_data("test", str(race))
