"""run_pretraining_distillation.sh: the original's two-argument TEST call, TEST in float16 on CPU with flags that
override TEST's own, and missing shards as one line without Horovod's traceback or a stray directory."""
import os

import bort  # noqa: F401
import mxnet as mx
import numpy as np
import pytest

from bort.weights.checkpoint import load_model
from bort.pretrain.mlm import topk_accuracy
from data.collate import batchify
from data.pretraining_format import load_shard
from data.shard_files import list_shards
from helpers import TEST_STUDENT_STEPS, bundled_sample_text, launcher_procs, run_launcher


def _batches(shards):
    for path in list_shards(str(shards)):
        shard = load_shard(path)
        yield batchify([shard[i] for i in range(len(shard))], shard.metadata["pad_id"])


def _held_out_top1(run_dir, params):
    return topk_accuracy(load_model(str(params)), list(_batches(run_dir / "eval")), mx.cpu(), k=1)


def _frequency_top1(run_dir):
    """Held-out top-1 of always predicting the token masked most often in training."""
    train = np.concatenate([b["masked_ids"][b["masked_weights"] > 0] for b in _batches(run_dir / "train")])
    held_out = np.concatenate([b["masked_ids"][b["masked_weights"] > 0] for b in _batches(run_dir / "eval")])
    return float(np.mean(held_out == np.bincount(train).argmax()))


def test_missing_shards_one_line_no_traceback_no_stray_directory(tmp_path):
    proc = run_launcher([launcher_procs(), str(tmp_path / "nowhere"), str(tmp_path / "nowhere_eval")], tmp_path)
    assert proc.returncode != 0
    err = [line for line in proc.stderr.splitlines() if line.strip()]
    assert err == [f"error: {tmp_path / 'nowhere'}: no such file or directory"], proc.stderr[-2000:]
    assert "Traceback" not in proc.stdout + proc.stderr
    assert os.listdir(tmp_path) == []


@pytest.mark.slow
def test_two_argument_test_call_and_float16_test_fills_masks_like_float32(launcher_test_run, test_teacher, tmp_path):
    """The shared run is the two-argument call (conftest.launcher_test_run); its student is the float32 arm."""
    student32 = launcher_test_run / "bort_tiny_model" / f"step_{TEST_STUDENT_STEPS:07d}.params"
    assert student32.is_file()

    # The same recipe and teacher, in float16 on CPU: flags after the positional arguments override TEST's.
    f16 = tmp_path / "f16"
    proc = run_launcher([launcher_procs(), "TEST", "TEST", str(test_teacher), "--dtype", "float16"], tmp_path,
                        BORT_TEST_DIR=str(f16), BORT_CPU_FLOAT16="1")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "pretraining a tiny teacher" not in proc.stderr  # the given teacher was used
    student16 = f16 / "bort_tiny_model" / f"step_{TEST_STUDENT_STEPS:07d}.params"
    assert all(v.dtype == np.float16 for v in mx.nd.load(str(student16)).values())
    top1_32 = _held_out_top1(launcher_test_run, student32)
    top1_16 = _held_out_top1(f16, student16)
    baseline = _frequency_top1(launcher_test_run)
    print(f"held-out top-1: float32 {top1_32:.3f}, float16 {top1_16:.3f}, frequency baseline {baseline:.3f}")
    if bundled_sample_text():
        assert top1_32 >= 0.6  # the bundled text: measured 0.82-0.87
    else:  # another text, e.g. gluon-nlp's literary sample: measured 0.35 against 0.05
        assert top1_32 > baseline + 0.15
    assert top1_16 >= top1_32 - 0.05
    assert os.listdir(tmp_path) == ["f16"]
