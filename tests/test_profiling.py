"""--profile: the pretrainer writes an MXNet profiler trace of a few steps (the original's flag)."""
import json
import os

import bort  # noqa: F401
import create_pretraining_data
import run_pretraining_distillation_hvd as cli
from bort.profiling import StepProfiler, trace_path

from helpers import ROOT


def test_window_and_names():
    assert (StepProfiler("p.json", 2000).first, StepProfiler("p.json", 2000).last) == (10, 13)  # the original's
    assert (StepProfiler("p.json", 3).first, StepProfiler("p.json", 3).last) == (1, 3)
    assert trace_path("prof", 1, 2) == "prof1" and trace_path("prof.json", 0, 1) == "prof.json"


def test_pretraining_profile_writes_a_chrome_trace(tmp_path):
    shards = str(tmp_path / "shards")
    create_pretraining_data.main(["--input_file", os.path.join(ROOT, "test_data/sample_text.txt"), "--output_dir",
                                  shards, "--vocab_json", os.path.join(ROOT, "test_data/vocab/vocab.json"),
                                  "--merges", os.path.join(ROOT, "test_data/vocab/merges.txt"),
                                  "--max_seq_length", "32", "--num_workers", "1", "--no_progress"])
    trace = tmp_path / "prof" / "trace.json"
    cli.main(["--data", shards, "--model", "bort_tiny", "--teacher_model", "roberta_tiny",
              "--random_teacher", "--num_steps", "3", "--batch_size", "4", "--dtype", "float32",
              "--ckpt_dir", str(tmp_path / "ck"), "--no_progress", "--profile", str(trace)])
    events = json.loads(trace.read_text())["traceEvents"]
    names = {event.get("name") for event in events}
    assert "FullyConnected" in names and any("backward" in str(n).lower() for n in names)
    assert sorted(os.listdir(trace.parent)) == ["trace.json"]  # no temporary file left
