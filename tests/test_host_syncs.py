"""Blocking host synchronisations per training step (issue #23): at most one outside logging steps, in pretraining
(float32, and float16 through BORT_CPU_FLOAT16=1) and fine-tuning; with BERTAdam the update is queued before it.

A sync is a call from the training thread that waits for MXNet's engine: NDArray.asnumpy (asscalar and bool()
go through it), NDArray.wait_to_read, mx.nd.waitall. A step's syncs are those after the previous step's gradient
step returned, up to the end of its own; the first step (model building, first graph) is not counted."""
import contextlib
import os
import threading

import bort  # noqa: F401
import mxnet as mx
import numpy as np
import pytest

import finetune_bort
from bort.errors import run_cli
from bort.pretrain.loop import pretrain
from bort.train.distributed import to_device
from bort.train.precision import GradientStep
from helpers import ROOT, VOCAB_FLAGS, tiny_config


@contextlib.contextmanager
def step_events():
    """Yields a list with one list per gradient step: the events ('sync', 'update') of the training thread since
    the previous gradient step returned."""
    steps, current, main = [], [], threading.get_ident()
    nd = mx.nd.NDArray
    originals = {(nd, "asnumpy"): nd.asnumpy, (nd, "wait_to_read"): nd.wait_to_read, (mx.nd, "waitall"): mx.nd.waitall,
                 (mx.gluon.Trainer, "update"): mx.gluon.Trainer.update, (GradientStep, "__call__"): GradientStep.__call__}

    def recording(event, original):
        def call(*args, **kwargs):
            if threading.get_ident() == main:
                current.append(event)
            return original(*args, **kwargs)
        return call

    def gradient_step(self, *args, **kwargs):
        result = originals[(GradientStep, "__call__")](self, *args, **kwargs)
        steps.append(list(current))
        current.clear()
        return result

    nd.asnumpy = recording("sync", nd.asnumpy)
    nd.wait_to_read = recording("sync", nd.wait_to_read)
    mx.nd.waitall = recording("sync", mx.nd.waitall)
    mx.gluon.Trainer.update = recording("update", mx.gluon.Trainer.update)
    GradientStep.__call__ = gradient_step
    try:
        yield steps
    finally:
        for (owner, name), original in originals.items():
            setattr(owner, name, original)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_pretraining_step_syncs_once_after_queuing_the_update(shards, tmp_path, monkeypatch, dtype):
    """Before: the float16 global norm was read (blocking) before the update was queued."""
    monkeypatch.setenv("BORT_CPU_FLOAT16", "1")
    config = tiny_config(shards, tmp_path / "ck", dtype=dtype, num_steps=5, accumulate=2, batch_size=4,
                         log_interval=100, ckpt_interval=100)
    with step_events() as steps:
        pretrain(config)
    assert len(steps) == 5
    for events in steps[1:]:  # step 5 logs and checkpoints after its gradient step
        assert events == ["update", "sync"], events


def test_finetuning_step_syncs_once(tmp_path):
    """Before: loss.asscalar() on every micro-batch (here 2 per step) besides the gradient norm."""
    with step_events() as steps:
        run_cli(finetune_bort.main)([
            "--task_name", "SST-2", "--data_dir", os.path.join(ROOT, "test_data/glue/SST-2"),
            "--output_dir", str(tmp_path / "out"), "--epochs", "1", "--batch_size", "8", "--accumulate", "2",
            "--training_steps", "6", "--log_interval", "100", "--pretrained_parameters", "none",
            "--model_config", "bort_tiny", "--gpu", "999", "--max_len", "32", *VOCAB_FLAGS])
    assert len(steps) == 6
    for events in steps[1:]:
        assert events == ["update", "sync"], events


def test_host_arrays_reach_another_device_by_a_queued_copy():
    host = np.arange(6, dtype=np.int32).reshape(2, 3)
    on_device = to_device(host, mx.cpu(1))
    assert on_device.context == mx.cpu(1) and on_device.dtype == np.float32  # mx.nd.array's default dtype
    np.testing.assert_array_equal(on_device.asnumpy(), host)
    assert to_device(host, mx.cpu(1), "int32").dtype == np.int32
