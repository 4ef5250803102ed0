"""Pretraining checkpoints that do not fill the disk: retention (--keep_last_checkpoints, --keep_every_checkpoints),
checksums computed while writing (bort.weights.ndarray_file), a bounded evaluation (--num_eval_steps), and the time
share of checkpoints and evaluation in the metrics."""
import dataclasses
import hashlib
import json
import os

import bort  # noqa: F401
import mxnet as mx
import numpy as np
import pytest

from bort.errors import BortError
from bort.pretrain.batches import eval_batches
from bort.pretrain.loop import PretrainConfig, pretrain
from bort.pretrain.state import complete_checkpoints, prune_checkpoints, resolve_start_step
from bort.train.distributed import Distributed
from bort.weights import checkpoint
from bort.weights.ndarray_file import save_ndarrays
from helpers import tiny_config
from pretrain_faults import killed_after


def _sha256(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def test_save_ndarrays_writes_mx_nd_save_bytes_and_their_sha256(tmp_path):
    arrays = {"encoder.weight": mx.nd.array(np.random.RandomState(0).randn(3, 5)),
              "half": mx.nd.array([1.5, -2, 3], dtype="float16"), "ids": mx.nd.array([[7, 8]], dtype="int32"),
              "scalar_like": mx.nd.array([4.0]), "naïve": mx.nd.zeros((2, 1))}
    mx.nd.save(str(tmp_path / "reference.params"), arrays)
    digest = save_ndarrays(str(tmp_path / "ours.params"), arrays)
    assert open(tmp_path / "ours.params", "rb").read() == open(tmp_path / "reference.params", "rb").read()
    assert digest == _sha256(tmp_path / "ours.params")
    loaded = mx.nd.load(str(tmp_path / "ours.params"))
    assert list(loaded) == list(arrays)
    assert all(loaded[k].dtype == arrays[k].dtype for k in arrays)
    assert sorted(os.listdir(tmp_path)) == ["ours.params", "reference.params"]  # no temporary file left


CHECKPOINT_FILES = (".params", ".json", ".states", ".state.json")


def _fake_checkpoint(ckpt_dir, step, complete=True):
    prefix = os.path.join(ckpt_dir, f"step_{step:07d}")
    for ext in (".params", ".json", ".states") + ((".state.json",) if complete else ()):
        with open(prefix + ext, "w") as handle:
            handle.write("x")


def test_retention_deletes_exactly_the_checkpoints_it_does_not_keep(tmp_path):
    for step in range(10, 110, 10):
        _fake_checkpoint(str(tmp_path), step)
    _fake_checkpoint(str(tmp_path), 55, complete=False)  # a kill between .params and .state.json
    _fake_checkpoint(str(tmp_path), 200)  # a later step: a run resumed from an earlier one, not ours to judge
    (tmp_path / "metrics.jsonl").write_text("")
    (tmp_path / "step_0000040.params.bak").write_text("")  # not a checkpoint file name
    removed = prune_checkpoints(str(tmp_path), 100, keep_last=2, keep_every=40)
    assert removed == [10, 20, 30, 50, 55, 60, 70]
    assert complete_checkpoints(str(tmp_path)) == [40, 80, 90, 100, 200]
    files = {f"step_{s:07d}{ext}" for s in (40, 80, 90, 100, 200) for ext in CHECKPOINT_FILES}
    assert set(os.listdir(tmp_path)) == files | {"metrics.jsonl", "step_0000040.params.bak"}
    # keep_last 0 keeps everything, as the original
    assert prune_checkpoints(str(tmp_path), 100, keep_last=0, keep_every=40) == []
    assert complete_checkpoints(str(tmp_path)) == [40, 80, 90, 100, 200]


def test_a_run_with_retention_keeps_the_right_checkpoints_hashed_while_written_and_resumes(shards, tmp_path,
                                                                                          monkeypatch):
    hashed_by_reading = []
    real_file_sha256 = checkpoint.file_sha256
    monkeypatch.setattr(checkpoint, "file_sha256",
                        lambda path: hashed_by_reading.append(os.path.basename(path)) or real_file_sha256(path))
    ckpt = tmp_path / "ck"
    config = tiny_config(shards, ckpt, num_steps=10, ckpt_interval=2, keep_last_checkpoints=2,
                         keep_every_checkpoints=4, data_eval=shards, num_eval_steps=1, eval_interval=5)
    evaluated = []
    real_eval_batches = eval_batches

    def counting_eval_batches(config, dist):
        batches, split = real_eval_batches(config, dist)
        return (evaluated.append(1) or b for b in batches), split

    monkeypatch.setattr("bort.pretrain.loop.eval_batches", counting_eval_batches)
    with killed_after(9):  # checkpoints at 2, 4, 6, 8; retention leaves 4 (every 4th), 6 and 8 (the last 2)
        pretrain(config)
    assert complete_checkpoints(str(ckpt)) == [4, 6, 8]
    assert resolve_start_step(str(ckpt), "latest") == 8
    assert pretrain(dataclasses.replace(config, start_step="latest"))["step"] == 10
    assert complete_checkpoints(str(ckpt)) == [4, 8, 10]
    assert sorted(f for f in os.listdir(ckpt) if f.startswith("step_")) == sorted(
        f"step_{s:07d}{ext}" for s in (4, 8, 10) for ext in CHECKPOINT_FILES)
    # No second read of the big files when writing: only the small model-config JSON is hashed from disk (and the
    # checkpoint the resume loads, step 8, is verified by reading it, as it must be).
    read_back = [n for n in hashed_by_reading if n.endswith((".params", ".states")) and "0000008" not in n]
    assert not read_back and "step_0000010.json" in hashed_by_reading, hashed_by_reading
    state = json.load(open(ckpt / "step_0000010.state.json"))
    for name in ("step_0000010.params", "step_0000010.states", "step_0000010.json"):
        assert state["checksums"][name] == _sha256(ckpt / name)
    # Evaluation at step 5 and, after the resume, at the end (student and teacher): one batch each.
    assert len(evaluated) == 3
    records = [json.loads(line) for line in open(ckpt / "metrics.jsonl")]
    train = [r for r in records if r["kind"] == "train"]
    assert [r["step"] for r in train] == [2, 4, 6, 8, 10]
    assert all(0 <= r["checkpoint_time_share"] < 1 and 0 <= r["eval_time_share"] < 1 for r in train)
    assert train[3]["checkpoint_time_share"] > 0 and train[3]["eval_time_share"] > 0


def test_evaluation_is_bounded_by_default(shards, tmp_path):
    assert PretrainConfig().num_eval_steps > 0
    config = tiny_config(shards, tmp_path / "ck", data_eval=shards, batch_size_eval=2)
    bounded = list(eval_batches(config, Distributed(False))[0])
    everything = list(eval_batches(dataclasses.replace(config, num_eval_steps=0), Distributed(False))[0])
    assert len(bounded) == config.num_eval_steps < len(everything)
    with pytest.raises(BortError, match="--keep_last_checkpoints must be >= 0"):
        pretrain(dataclasses.replace(config, keep_last_checkpoints=-1))
