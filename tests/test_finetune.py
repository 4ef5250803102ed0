import json
import os
import subprocess

import pytest

import finetune_bort
from bort.errors import run_cli
from helpers import VOCAB_FLAGS

TINY = ["--pretrained_parameters", "none", "--model_config", "bort_tiny", "--gpu", "999", "--max_len", "32",
        *VOCAB_FLAGS]


def cli(argv):
    run_cli(finetune_bort.main)(argv)


@pytest.mark.slow
def test_tiny_model_learns_sst2_and_predicts(sst2_finetuned, tmp_path):
    result = json.loads((sst2_finetuned / "result.json").read_text())
    assert result["score"] >= 0.9, result
    records = [json.loads(line) for line in (sst2_finetuned / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records if r["kind"] == "dev"] == [1, 2, 3]
    meta = json.loads((sst2_finetuned / "model_bort_SST-2.task.json").read_text())
    assert meta["task"] == "SST-2" and meta["epoch"] == result["best_epoch"]
    # --only_inference with the best checkpoint: same dev score, leaderboard file with the test labels (i % 2)
    out = tmp_path / "inference"
    cli(["--task_name", "SST-2", "--data_dir", "test_data/glue/SST-2", "--output_dir", str(out), "--only_inference",
         "--model_parameters", str(sst2_finetuned / "model_bort_SST-2.params")] + TINY)
    again = json.loads((out / "result.json").read_text())
    assert again["score"] == pytest.approx(result["score"])
    rows = [line.split("\t") for line in (out / "SST-2.tsv").read_text().splitlines()[1:]]
    assert [r[1] for r in rows] == [str(i % 2) for i in range(6)]


def test_checkpoint_for_another_task(sst2_finetuned, tmp_path, capsys):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        cli(["--task_name", "CoLA", "--data_dir", "test_data/glue/CoLA", "--output_dir", str(out),
             "--only_inference", "--model_parameters", str(sst2_finetuned / "model_bort_SST-2.params")] + TINY)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "fine-tuned for 'SST-2', not for CoLA" in err[0]
    assert not out.exists() or not os.listdir(out)


@pytest.mark.parametrize("content,message", [
    ("index\tsentence1\tlabel\n0\ta\t1\n", "train.tsv:1: missing column 'sentence2'"),
    ("index\tsentence1\tsentence2\tlabel\n0\ta\tb\tmaybe\n", "train.tsv:2: unknown label 'maybe'"),
    ("", "train.tsv: empty file"),
])
def test_bad_training_data(tmp_path, capsys, content, message):
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.tsv").write_text(content)
    (data / "dev.tsv").write_text("index\tsentence1\tsentence2\tlabel\n0\ta\tb\t1\n")
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        cli(["--task_name", "WNLI", "--data_dir", str(data), "--output_dir", str(out)] + TINY)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not out.exists()


def test_invalid_jsonl_line_and_missing_pretrained(tmp_path, capsys):
    data = tmp_path / "cb"
    data.mkdir()
    (data / "train.jsonl").write_text('{"premise": "a", "hypothesis": "b", "label": "neutral"}\nnot json\n')
    (data / "val.jsonl").write_text('{"premise": "a", "hypothesis": "b", "label": "neutral"}\n')
    with pytest.raises(SystemExit):
        cli(["--task_name", "CB", "--data_dir", str(data), "--output_dir", str(tmp_path / "o")] + TINY)
    assert "train.jsonl:2: invalid JSON" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli(["--task_name", "CB", "--data_dir", str(data), "--pretrained_parameters", str(tmp_path / "bort.params"),
             "--output_dir", str(tmp_path / "o")] + VOCAB_FLAGS)
    assert "bort.params: pretrained parameters not found; download bort.params" in capsys.readouterr().err


def test_pretrained_parameters_of_another_architecture_than_model_config_are_refused(tmp_path, capsys):
    from bort.model import build_model, get_config
    from bort.weights.checkpoint import finish_deferred_init, save_parameters

    config = get_config("bort_tiny", vocab_size=1005)
    params = str(tmp_path / "bort.params")
    save_parameters(finish_deferred_init(build_model(config)), params, config)
    flags = ["--task_name", "WNLI", "--data_dir", "test_data/glue/WNLI", "--pretrained_parameters", params, "--gpu",
             "999", "--max_len", "32", "--epochs", "1", "--output_dir", str(tmp_path / "o")] + VOCAB_FLAGS
    with pytest.raises(SystemExit):
        cli(flags + ["--model_config", "bort_4_8_768_1024"])  # the JSON beside the parameters used to win silently
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {tmp_path / 'bort.json'}: the parameters are of another architecture than "
                          "--model_config bort_4_8_768_1024 (num_layers 2 vs 4;") and "\n" not in err, err
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_run_finetune_test2_on_cpu(tmp_path):
    env = dict(os.environ, OUTPUT_DIR=str(tmp_path / "wsc"))
    proc = subprocess.run(["./run_finetune.sh", "TEST2"], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [json.loads(line) for line in (tmp_path / "wsc" / "WSC.jsonl").read_text().splitlines()]
    assert [r["idx"] for r in lines] == [0, 1, 2, 3] and {r["label"] for r in lines} <= {"True", "False"}


def test_multirc_question_without_answers_is_one_line_error(tmp_path, capsys):
    """A dev question with no candidate answers used to train and then raise IndexError while writing
    dev_predictions.jsonl (found by experiments/hostile_sweep.py); the reader now refuses it in one line."""
    import shutil  # noqa: PLC0415

    data = tmp_path / "MultiRC"
    shutil.copytree("test_data/superglue/MultiRC", data)
    lines = (data / "val.jsonl").read_text(encoding="utf-8").splitlines()
    first = json.loads(lines[0])
    first["passage"]["questions"][0]["answers"] = []
    (data / "val.jsonl").write_text("\n".join([json.dumps(first)] + lines[1:]) + "\n", encoding="utf-8")
    with pytest.raises(SystemExit) as exit_info:
        cli(["--task_name", "MultiRC", "--data_dir", str(data), "--output_dir", str(tmp_path / "out"),
             "--epochs", "1", "--batch_size", "8", "--no_distributed"] + TINY)
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1 and "field 'answers' is empty" in err[0], err
    assert not (tmp_path / "out").exists()


def test_training_without_a_test_file_writes_no_leaderboard_file(tmp_path, capsys):
    """A missing test file only means no submission; a test file that is there but broken is an error (before any
    output), and so is a broken diagnostic file beside the data (MNLI's AX)."""
    import shutil  # noqa: PLC0415

    data = tmp_path / "WNLI"
    data.mkdir()
    for name in ("train.tsv", "dev.tsv"):
        shutil.copy(f"test_data/glue/WNLI/{name}", data / name)
    out = tmp_path / "out"
    cli(["--task_name", "WNLI", "--data_dir", str(data), "--output_dir", str(out), "--training_steps", "1",
         "--batch_size", "4"] + TINY)
    result = json.loads((out / "result.json").read_text())
    assert result["submissions"] == [] and not (out / "WNLI.tsv").exists()
    (data / "test.tsv").write_text("index\tsentence1\n0\ta\n")
    with pytest.raises(SystemExit):
        cli(["--task_name", "WNLI", "--data_dir", str(data), "--output_dir", str(tmp_path / "out2")] + TINY)
    assert "test.tsv:1: missing column 'sentence2'" in capsys.readouterr().err
    assert not (tmp_path / "out2").exists()
    mnli = tmp_path / "MNLI"
    shutil.copytree("test_data/glue/MNLI", mnli)
    (tmp_path / "AX").mkdir()
    (tmp_path / "AX" / "diagnostic.tsv").write_text("index\tsentence1\n0\ta\n")
    with pytest.raises(SystemExit):
        cli(["--task_name", "MNLI", "--only_inference", "--model_parameters", str(out / "model_bort_WNLI.params"),
             "--data_dir", str(mnli), "--output_dir", str(tmp_path / "out3")] + TINY)
    assert "diagnostic.tsv:1: missing column 'sentence2'" in capsys.readouterr().err


def test_regression_batches_are_random_and_classification_batches_bucketed_by_length():
    """Length-sorted batches starved STS-B's regression (each batch one slice of the scores): regression tasks get
    random batches unless --bucket_batches says otherwise; classification keeps the padding-saving buckets."""
    import numpy as np

    from bort.finetune.config import FinetuneConfig
    from bort.finetune.loop import training_batches

    lengths = list(np.random.RandomState(0).randint(5, 120, size=2000))

    def mean_spread(batches):  # mean within-batch standard deviation of the lengths
        return float(np.mean([np.std([lengths[i] for i in batch]) for batch in batches]))

    overall = float(np.std(lengths))
    config = FinetuneConfig(batch_size=32)
    regression = training_batches(lengths, config, True, np.random.RandomState(1))
    classification = training_batches(lengths, config, False, np.random.RandomState(1))
    assert sorted(i for b in regression for i in b) == list(range(2000))
    assert mean_spread(regression) > 0.8 * overall  # as mixed as random batches
    assert mean_spread(classification) < 0.1 * overall  # bucketed by length
    explicit = training_batches(lengths, FinetuneConfig(batch_size=32, bucket_batches=100), True,
                                np.random.RandomState(1))
    assert mean_spread(explicit) < 0.1 * overall
