"""Every GLUE task end to end on the real released files in ../shared/real_data/glue_data (byte-exact prefixes of
the official files, see its SOURCES.md): the readers on every row, then a few training steps of a tiny model and
the leaderboard file, whose ids must be the real test file's ids, on the first rows of each file."""
import json
import os

import pytest

import finetune_bort
from bort.errors import run_cli
from bort.finetune.tasks import TASKS, get_task, official_score
from data.glue import SEGMENT_FILES
from helpers import REAL_DATA

GLUE = os.path.join(REAL_DATA, "glue_data")
pytestmark = pytest.mark.real_data
GLUE_TASKS = sorted(name for name, task in TASKS.items() if task.benchmark == "glue")
FOLDER = {"AX": "diagnostic"}
# Training, prediction and the leaderboard writer run on this many lines of each file: every row is read above.
TRUNCATED_LINES = 120
TINY = ["--pretrained_parameters", "none", "--model_config", "bort_tiny", "--gpu", "999", "--max_len", "32",
        "--vocab_json", "test_data/vocab/vocab.json", "--merges", "test_data/vocab/merges.txt"]


def folder(name):
    return os.path.join(GLUE, FOLDER.get(name, name))


def truncated_copy(name, dest, lines=TRUNCATED_LINES):
    """dest/<folder of name> with the first `lines` lines of each of its released files, bytes unchanged."""
    out = dest / FOLDER.get(name, name)
    out.mkdir(parents=True)
    for file_name in os.listdir(folder(name)):
        with open(os.path.join(folder(name), file_name), "rb") as handle:
            (out / file_name).write_bytes(b"".join(handle.readlines()[:lines]))
    return str(out)


def real_rows(path):
    """Data rows of a released file, read independently of data.glue: bytes split on newlines and tabs."""
    with open(path, "rb") as handle:
        lines = [line for line in handle.read().split(b"\n") if line.strip()]
    return lines if "CoLA" in path and not os.path.basename(path).startswith("test") else lines[1:]


@pytest.mark.parametrize("name", GLUE_TASKS)
def test_every_segment_reads_with_every_row(name):
    task = get_task(name)
    segments = ([task.train_segment] if task.dev_segments else []) + list(task.dev_segments)
    segments += [s for s, _ in task.test_segments]
    for segment in segments:
        path = os.path.join(folder(name), SEGMENT_FILES[segment][0])
        examples = task.read(segment, folder(name))
        rows = real_rows(path)
        if name != "QQP":  # QQP's malformed rows are skipped (none in these prefixes)
            assert len(examples) == len(rows), (path, len(examples), len(rows))
        assert all(e["text_a"] and e["text_a"] == e["text_a"].strip() for e in examples)
        if segment.startswith("test") or segment == "diagnostic":
            assert [e["idx"] for e in examples] == [int(r.split(b"\t")[0]) for r in rows]
            assert all(e["label"] is None for e in examples)
        else:
            gold = task.gold(examples)  # every label is a known class (or a number for STS-B)
            assert len(gold) == len(examples)


def test_mrpc_starts_with_a_byte_order_mark_and_reads():
    with open(os.path.join(folder("MRPC"), "train.tsv"), "rb") as handle:
        assert handle.read(3) == b"\xef\xbb\xbf"
    assert {e["label"] for e in get_task("MRPC").read("train", folder("MRPC"))} == {"0", "1"}


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in GLUE_TASKS if n != "AX"])
def test_few_training_steps_and_leaderboard_file(name, tmp_path):
    """On truncated copies: test_every_segment_reads_with_every_row reads every row of the released files."""
    data = {n: truncated_copy(n, tmp_path / "glue") for n in ([name, "AX"] if name == "MNLI" else [name])}
    out = tmp_path / "out"
    run_cli(finetune_bort.main)(["--task_name", name, "--data_dir", data[name], "--output_dir", str(out),
                                 "--training_steps", "2", "--batch_size", "8", "--dev_batch_size", "64",
                                 "--log_interval", "1", "--no_distributed"] + TINY
                                + (["--diagnostic_data_dir", data["AX"]] if name == "MNLI" else []))
    task = get_task(name)
    result = json.loads((out / "result.json").read_text())
    for segment, metrics in result["dev"].items():
        if ":" not in segment:
            assert set(task.metric_names) <= set(metrics)
    assert result["score"] == pytest.approx(
        sum(official_score(task, result["dev"][s]) for s in task.dev_segments) / len(task.dev_segments))
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "train"] == [1, 2]
    written = sorted(os.path.basename(p) for p in result["submissions"])
    expected = [f"{stem or name}.tsv" for _, stem in task.test_segments] + (["AX.tsv"] if name == "MNLI" else [])
    assert written == sorted(expected)
    for segment, stem in task.test_segments + ((("diagnostic", "AX"),) if name == "MNLI" else ()):
        source = os.path.join(data["AX" if stem == "AX" else name], SEGMENT_FILES[segment][0])
        lines = (out / f"{stem or name}.tsv").read_text(encoding="utf-8").splitlines()
        assert lines[0] == "index\tprediction"
        ids = [line.split("\t")[0] for line in lines[1:]]
        assert ids == [r.split(b"\t")[0].decode() for r in real_rows(source)]
        values = [line.split("\t")[1] for line in lines[1:]]
        target = get_task("AX" if stem == "AX" else name)
        if target.kind == "regress":
            assert all(0.0 <= float(v) <= 5.0 for v in values)
        else:
            assert set(values) <= set(target.labels)
