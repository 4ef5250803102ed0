"""bort.progress: a tqdm bar on a terminal, one plain line per log interval anywhere else (a log under horovodrun),
in pretraining and fine-tuning."""
import dataclasses
import io
import os
import re

import finetune_bort
from bort.errors import run_cli
from bort.pretrain.loop import pretrain
from bort.progress import Progress, format_duration
from helpers import ROOT, VOCAB_FLAGS, tiny_config


class FakeTerminal(io.StringIO):
    def isatty(self):
        return True


def test_a_log_gets_plain_lines_and_a_terminal_gets_the_bar():
    log = io.StringIO()
    progress = Progress(total=100, initial=20, desc="distillation", unit="step", stream=log)
    for _ in range(30):
        progress.update(1)
        if progress.n % 10 == 0:
            progress.report(mlm_loss=6.9312, tok_s=5120)
    progress.close()
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue() and len(lines) == 3
    assert re.fullmatch(r"distillation 30/100 \(30\.0%\) \| mlm_loss 6\.931 tok_s 5120 \| [0-9.e+]+ step/s \| "
                        r"elapsed 0:00:00 \| ETA \d+:\d\d:\d\d", lines[0]), lines[0]
    assert lines[-1].startswith("distillation 50/100 (50.0%)")

    terminal = FakeTerminal()
    bar = Progress(total=100, desc="distillation", stream=terminal)
    bar.update(5)
    bar.report(mlm_loss=6.9)
    bar.close()
    assert "\r" in terminal.getvalue() and "mlm_loss=6.9" in terminal.getvalue()  # tqdm, redrawn in place

    quiet = io.StringIO()
    other_rank = Progress(range(3), stream=quiet, enabled=False)
    assert list(other_rank) == [0, 1, 2] and other_rank.n == 3
    other_rank.report(loss=1.0)
    assert quiet.getvalue() == ""


def test_durations_read_like_clocks():
    assert format_duration(352) == "0:05:52"
    assert format_duration(6 * 86400 + 67862) == "6 days, 18:51:02"
    assert format_duration(None) == format_duration(float("inf")) == "?"


def test_pretraining_into_a_log_writes_one_line_per_log_interval(shards, tmp_path, capsys):
    """As under horovodrun, stderr is not a terminal: no '\\r'-joined bar fragments, a line every 2 steps."""
    pretrain(dataclasses.replace(tiny_config(shards, tmp_path / "ck", num_steps=6, ckpt_interval=6),
                                 progress=True))
    err = capsys.readouterr().err
    assert "\r" not in err
    lines = [line for line in err.splitlines() if line.startswith("distillation ")]
    assert [line.split(" | ")[0] for line in lines] == [f"distillation {s}/6 ({100 * s / 6:.1f}%)" for s in (2, 4, 6)]
    assert all("mlm_loss" in line and "kd_loss" in line and "ETA" in line and "step/s" in line for line in lines)


def test_fine_tuning_into_a_log_writes_plain_lines(tmp_path, capsys):
    run_cli(finetune_bort.main)([
        "--task_name", "WNLI", "--data_dir", os.path.join(ROOT, "test_data/glue/WNLI"), "--output_dir",
        str(tmp_path / "out"), "--epochs", "1", "--batch_size", "4", "--log_interval", "2", "--no_distributed",
        "--pretrained_parameters", "none", "--model_config", "bort_tiny", "--gpu", "999", "--max_len", "32",
        "--dtype", "float32", *VOCAB_FLAGS])
    err = capsys.readouterr().err
    assert "\r" not in err
    lines = [line for line in err.splitlines() if line.startswith("WNLI epoch 1 ")]
    assert lines and all(" | loss " in line and "batch/s" in line and "ETA" in line for line in lines), err[-2000:]
