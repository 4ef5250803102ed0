"""float16 runs on CPU through the GPU code path (BORT_CPU_FLOAT16=1): pretraining, checkpoint and resume
bit-identical to an uninterrupted run; fine-tuning as accurate as float32; float16 without the opt-in refused."""
import dataclasses
import json
import os

import numpy as np
import pytest

import bort  # noqa: F401
import mxnet as mx

import finetune_bort
from bort.errors import BortError, run_cli
from bort.pretrain.loop import parameters_digest, pretrain
from bort.pretrain.state import complete_checkpoints
from helpers import ROOT, VOCAB_FLAGS, tiny_config
from pretrain_faults import checkpoint_parameters, inf_gradient_at, killed_after

# `shards` (conftest.py): two shards of the sample text, dupe factor 2, 32 tokens, seed 12345.


def test_float16_without_the_opt_in_is_a_one_line_error(shards, tmp_path, monkeypatch, capsys):
    """Before, the pretrainer silently trained float32 and the fine-tuner ran float16 on CPU unasked."""
    monkeypatch.delenv("BORT_CPU_FLOAT16", raising=False)
    with pytest.raises(BortError, match="--dtype float16 needs a GPU"):
        pretrain(tiny_config(shards, tmp_path / "ck", dtype="float16"))
    with pytest.raises(SystemExit) as exit_info:
        run_cli(finetune_bort.main)(["--task_name", "SST-2", "--data_dir", os.path.join(ROOT, "test_data/glue/SST-2"),
                                     "--output_dir", str(tmp_path / "out"), "--pretrained_parameters", "none",
                                     "--model_config", "bort_tiny", "--dtype", "float16",
                                     *VOCAB_FLAGS])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1 and "BORT_CPU_FLOAT16=1" in err[0]
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_float16_pretraining_resume_is_bit_identical(shards, tmp_path, monkeypatch):
    """24 float16 steps in one go == 12, 'kill', resume, 12 more: parameters, optimizer states with the float32
    master weights, loss scale and its clean-step counter (an inf at step 5 halves the scale)."""
    monkeypatch.setenv("BORT_CPU_FLOAT16", "1")
    config = tiny_config(shards, tmp_path / "a", dtype="float16", num_steps=24, ckpt_interval=12, num_buckets=2,
                         log_interval=1, batch_size=8, lr=2e-3)
    half = dataclasses.replace(config, ckpt_dir=str(tmp_path / "b"))
    with inf_gradient_at(5):
        full = pretrain(config)
        with killed_after(12):
            pretrain(half)
    first = checkpoint_parameters(str(tmp_path / "b"), 12)
    assert complete_checkpoints(str(tmp_path / "b")) == [12]
    resumed = pretrain(dataclasses.replace(half, start_step="latest"))
    assert resumed["step"] == 24
    a, b = parameters_digest(full["student"]), parameters_digest(resumed["student"])
    assert all(v.dtype == np.float16 for v in a.values())
    assert max(np.abs(a[k].astype(np.float32) - first[k].astype(np.float32)).max() for k in a) > 0
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    states_a = mx.nd.load(str(tmp_path / "a" / "step_0000024.states"))
    states_b = mx.nd.load(str(tmp_path / "b" / "step_0000024.states"))
    assert sorted(states_a) == sorted(states_b)
    masters = [k for k, v in states_a.items() if v.dtype == np.float32 and k.endswith(":1") and "word_embed" in k]
    assert masters, sorted(states_a)[:8]  # BERTAdam multi-precision: ((mean, var), weight32)
    for key in states_a:
        np.testing.assert_array_equal(states_a[key].asnumpy(), states_b[key].asnumpy(), err_msg=key)
    state_a = json.load(open(tmp_path / "a" / "step_0000024.state.json"))
    state_b = json.load(open(tmp_path / "b" / "step_0000024.state.json"))
    assert state_a["loss_scaler"] == state_b["loss_scaler"] == {"scale": 2.0 ** 14, "clean_steps": 19, "skips": 0,
                                                                  "window": 2000}
    assert state_a["optimizer"] == state_b["optimizer"]


def _finetune_sst2(out, dtype):
    """conftest.sst2_finetuned's run, with --dtype DTYPE."""
    run_cli(finetune_bort.main)([
        "--task_name", "SST-2", "--data_dir", os.path.join(ROOT, "test_data/glue/SST-2"), "--output_dir", str(out),
        "--epochs", "3", "--ramp_up_epochs", "3", "--batch_size", "16", "--lr", "1e-3", "--seed", "2",
        "--pretrained_parameters", "none", "--model_config", "bort_tiny", "--gpu", "999", "--max_len", "32",
        "--dtype", dtype, *VOCAB_FLAGS])
    return json.load(open(os.path.join(out, "result.json")))


@pytest.mark.slow
def test_float16_finetuning_matches_float32_accuracy(sst2_finetuned, tmp_path, monkeypatch):
    monkeypatch.setenv("BORT_CPU_FLOAT16", "1")
    float32 = json.loads((sst2_finetuned / "result.json").read_text())
    float16 = _finetune_sst2(tmp_path / "f16", "float16")
    assert float32["score"] >= 0.9
    assert abs(float16["score"] - float32["score"]) <= 0.02, (float16["score"], float32["score"])
    saved = mx.nd.load(str(tmp_path / "f16" / "model_bort_SST-2.params"))
    assert {v.dtype for v in saved.values()} == {np.float16}
