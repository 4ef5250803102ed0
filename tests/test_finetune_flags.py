"""The original finetune_bort.py's command lines parse here unchanged; its data-location flags map onto --data_dir."""
import json
import os

import pytest

import finetune_bort
from bort.errors import BortError, run_cli
from bort.finetune.tasks import get_task, main_score, official_score

# Every flag of the original's get_parser(), with a value as its users wrote them (run_finetune.sh included).
ORIGINAL_ARGV = [
    "--task_name", "MultiRC", "--epochs", "1", "--ramp_up_epochs", "1", "--training_steps", "5",
    "--batch_size", "8", "--dev_batch_size", "8", "--init", "uniform", "--prob", "0.5", "--lr", "5e-5",
    "--epsilon", "1e-6", "--warmup_ratio", "0.45", "--weight_decay", "110.0", "--dropout", "0.1",
    "--momentum", "0.9", "--max_len", "512", "--seed", "2", "--gpu", "999", "--use_scheduler", "True",
    "--accumulate", "2", "--log_interval", "10", "--no_distributed", "True",
    "--dataset", "openwebtext_ccnews_stories_books_cased", "--pretrained_parameters", "model/0044100.params",
    "--model_parameters", "x.params", "--output_dir", "./output_dir", "--only_inference", "--dtype", "float32",
    "--early_stop", "200",
    "--multirc_test_location", "test_data/superglue/MultiRC/test.jsonl",
    "--record_test_location", "test_data/superglue/ReCoRD/test.jsonl",
    "--record_dev_location", "test_data/superglue/ReCoRD/val.jsonl",
    "--race_dataset_location", "test_data/race",
]


def parse(argv):
    return finetune_bort.apply_location_flags(finetune_bort.get_parser().parse_args(argv))


def test_every_original_flag_parses():
    args = parse(ORIGINAL_ARGV)
    assert args.momentum == 0.9 and args.use_scheduler is True and args.no_distributed is True
    assert args.dataset_name == "openwebtext_ccnews_stories_books_cased" and args.accumulate == 2
    assert args.data_dir == "test_data/superglue/MultiRC"  # from --multirc_test_location
    assert parse(["--task_name", "WNLI", "--no_distributed"]).no_distributed is True
    assert parse(["--task_name", "WNLI", "--no_distributed", "False"]).no_distributed is False
    assert parse(["--task_name", "WNLI"]).no_distributed is False


@pytest.mark.parametrize("name,expected", [("SST", "SST-2"), ("SuperGLUERTE", "SuperGLUE-RTE"), ("AXb", "AX-b"),
                                           ("AXg", "AX-g"), ("superglue_ax_b", "AX-b"), ("superglue_ax_g", "AX-g"),
                                           ("RACE-H", "RACE-H"), ("RACE-M", "RACE-M")])
def test_original_task_names(name, expected):
    assert get_task(parse(["--task_name", name]).task_name).name == expected


def test_location_flags_map_onto_data_dir():
    assert parse(["--task_name", "ReCoRD", "--record_dev_location", "d/val.jsonl",
                  "--record_test_location", "d/test.jsonl"]).data_dir == "d"
    assert parse(["--task_name", "RACE-H", "--race_dataset_location", "~/race"]).data_dir == \
        os.path.expanduser("~/race")
    assert parse(["--task_name", "RACE-M", "--race_dataset_location", "r", "--data_dir", "r/"]).data_dir == "r"
    assert parse(["--task_name", "CoLA", "--race_dataset_location", "r"]).data_dir is None  # other task: ignored
    with pytest.raises(BortError, match=r"--record_test_location a/test.jsonl: its directory a differs from "
                                        r"--data_dir b"):
        parse(["--task_name", "ReCoRD", "--record_test_location", "a/test.jsonl", "--data_dir", "b"])
    with pytest.raises(BortError, match=r"--record_dev_location d/dev.json: expected a file named val.jsonl"):
        parse(["--task_name", "ReCoRD", "--record_dev_location", "d/dev.json"])


def test_original_location_flag_runs_end_to_end(tmp_path):
    """The original's way to point at MultiRC's data: only --multirc_test_location, no --data_dir."""
    out = tmp_path / "out"
    run_cli(finetune_bort.main)([
        "--task_name", "MultiRC", "--multirc_test_location", "test_data/superglue/MultiRC/test.jsonl",
        "--output_dir", str(out), "--training_steps", "1", "--batch_size", "4", "--no_distributed", "True",
        "--momentum", "0.9", "--use_scheduler", "True", "--pretrained_parameters", "none",
        "--model_config", "bort_tiny", "--gpu", "999", "--max_len", "32",
        "--vocab_json", "test_data/vocab/vocab.json", "--merges", "test_data/vocab/merges.txt"])
    result = json.loads((out / "result.json").read_text())
    assert [os.path.basename(p) for p in result["submissions"]] == ["MultiRC.jsonl"]
    assert result["score"] == pytest.approx(official_score("MultiRC", result["dev"]["dev"]))


@pytest.mark.parametrize("name,metrics,expected", [
    ("MRPC", {"accuracy": 0.8, "f1": 0.9}, 0.85), ("QQP", {"accuracy": 0.6, "f1": 0.4}, 0.5),
    ("STS-B", {"pearson": 0.9, "spearman": 0.7}, 0.8), ("CB", {"accuracy": 0.9, "macro_f1": 0.5}, 0.7),
    ("MultiRC", {"f1a": 0.7, "em": 0.3}, 0.5), ("ReCoRD", {"f1": 0.8, "em": 0.6}, 0.7),
    ("CoLA", {"accuracy": 0.9, "mcc": 0.4}, 0.4), ("RTE", {"accuracy": 0.6}, 0.6),
    ("AX-g", {"accuracy": 0.6, "gender_parity": 0.9}, 0.6), ("AX-b", {"accuracy": 0.6, "mcc": 0.2}, 0.2),
])
def test_official_scores(name, metrics, expected):
    assert official_score(name, metrics) == pytest.approx(expected)


def test_model_selection_prefers_the_official_score():
    """Two epochs of MRPC: the first has the better F1, the second the better mean of F1 and accuracy (the
    leaderboard's MRPC score); selection must pick the second."""
    task = get_task("MRPC")
    first, second = {"dev": {"accuracy": 0.60, "f1": 0.80}}, {"dev": {"accuracy": 0.78, "f1": 0.79}}
    assert main_score(task, first) < main_score(task, second)
    mnli = get_task("MNLI")
    assert main_score(mnli, {"dev_matched": {"accuracy": 0.5}, "dev_mismatched": {"accuracy": 0.7}}) == \
        pytest.approx(0.6)
