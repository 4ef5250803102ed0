"""Multi-process runs under `horovodrun -np 2` (Gloo, CPU), each rank in its own working directory, so that a
relative --ckpt_dir / --output_dir is what a separate node without a shared file system would see.

- float16 (BORT_CPU_FLOAT16=1) pretraining with an inf injected into rank 1's gradient at one step: both ranks
  skip that step, halve the loss scale and end with identical parameters;
- resume in which only rank 0 sees the checkpoint directory: both ranks resume at the same step and end exactly
  where the uninterrupted run ends;
- fine-tuning (TEST1 = WNLI fixture): identical parameters on both ranks, only rank 0 writes files.
"""
import json
import os
import shutil
import subprocess
import sys
import warnings

import numpy as np
import pytest

import bort  # noqa: F401
import mxnet as mx

from helpers import ROOT

pytestmark = [pytest.mark.slow, pytest.mark.horovod]


def horovodrun(base, argv, env=None, timeout=420):
    """`horovodrun -np 2` with rank r running in base/rank<r>; one retry when Horovod aborts without any
    error of ours (a rare start-up/shutdown race of Gloo on CPU, see tests/test_pretraining.py)."""
    for r in (0, 1):
        os.makedirs(os.path.join(base, f"rank{r}"), exist_ok=True)
    command = " ".join(_quote(a) for a in argv)
    cmd = ["horovodrun", "-np", "2", "-H", "localhost:2", "sh", "-c",
           f'cd {_quote(str(base))}/rank$HOROVOD_RANK && exec {command}']
    run_env = dict(os.environ, OMP_NUM_THREADS="1", **(env or {}))
    proc = subprocess.run(cmd, cwd=ROOT, env=run_env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0 and "error:" not in proc.stdout + proc.stderr:
        warnings.warn("horovodrun -np 2 failed without an error of ours; retrying once:\n" + proc.stderr[-1500:])
        proc = subprocess.run(cmd, cwd=ROOT, env=run_env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def _quote(text):
    return "'" + str(text).replace("'", "'\\''") + "'"


# `shards` (conftest.py): two shards of the sample text, dupe factor 2, 32 tokens, seed 12345.


# The CLI with tests/pretrain_faults.py's faults (INF_GRAD_AT="STEP:RANK", KILL_AFTER_STEP=N), in each rank.
FAULTY_PRETRAIN = os.path.join(ROOT, "tests", "pretrain_faults.py")


def pretrain_argv(shards, *extra):
    return [sys.executable, FAULTY_PRETRAIN, "--data", shards, "--model", "bort_tiny", "--teacher_model", "roberta_tiny", "--random_teacher",
            "--num_steps", "6", "--batch_size", "4", "--num_buckets", "2", "--dtype", "float16", "--cpu_only",
            "--optimizer", "adam", "--log_interval", "1", "--ckpt_interval", "4", "--eval_interval", "0",
            "--lr", "1e-3", "--ckpt_dir", "ck", "--summary_json", "summary{rank}.json", "--no_progress", *extra]


FLOAT16 = {"BORT_CPU_FLOAT16": "1", "INF_GRAD_AT": "3:1"}


@pytest.fixture(scope="module")
def uninterrupted(shards, tmp_path_factory):
    base = tmp_path_factory.mktemp("full")
    horovodrun(base, pretrain_argv(shards), FLOAT16)
    return base


def _summary(base, rank):
    return json.load(open(os.path.join(base, f"rank{rank}", f"summary{rank}.json")))


def test_float16_overflow_on_one_rank_skips_the_step_on_both(uninterrupted):
    records = [json.loads(line) for line in open(uninterrupted / "rank0" / "ck" / "metrics.jsonl")]
    train = {r["step"]: r for r in records if r["kind"] == "train"}
    assert [s for s, r in train.items() if r["skipped"]] == [3]
    assert train[2]["loss_scale"] == 2.0 ** 15 and train[3]["loss_scale"] == 2.0 ** 14
    assert train[6]["loss_scale"] == 2.0 ** 14
    assert _summary(uninterrupted, 0)["parameters_sha256"] == _summary(uninterrupted, 1)["parameters_sha256"]
    state = json.load(open(uninterrupted / "rank0" / "ck" / "step_0000006.state.json"))
    # The growth window counts steps, whatever the number of ranks; its counter is in the checkpoint.
    assert state["loss_scaler"] == {"scale": 2.0 ** 14, "clean_steps": 3, "skips": 0, "window": 2000}
    assert os.listdir(uninterrupted / "rank1") == ["summary1.json"]  # rank 1 wrote no checkpoint, no metrics


def test_resume_when_only_rank0_sees_the_checkpoints(shards, uninterrupted, tmp_path):
    horovodrun(tmp_path, pretrain_argv(shards), dict(FLOAT16, KILL_AFTER_STEP="4"))
    assert "step_0000004.state.json" in os.listdir(tmp_path / "rank0" / "ck")
    assert "step_0000006.state.json" not in os.listdir(tmp_path / "rank0" / "ck")  # killed after step 4
    assert not os.path.exists(tmp_path / "rank1" / "ck")
    proc = horovodrun(tmp_path, pretrain_argv(shards, "--start_step", "latest"), FLOAT16)
    assert "resumed from" in proc.stdout + proc.stderr
    resumed = [_summary(tmp_path, r) for r in (0, 1)]
    assert resumed[0]["step"] == resumed[1]["step"] == 6
    full = _summary(uninterrupted, 0)["parameters_sha256"]
    assert resumed[0]["parameters_sha256"] == resumed[1]["parameters_sha256"] == full
    a = mx.nd.load(str(uninterrupted / "rank0" / "ck" / "step_0000006.states"))
    b = mx.nd.load(str(tmp_path / "rank0" / "ck" / "step_0000006.states"))
    assert sorted(a) == sorted(b)
    for key in a:  # moments and float32 master weights
        np.testing.assert_array_equal(a[key].asnumpy(), b[key].asnumpy(), err_msg=key)
    # A resume step that rank 0 does not have stops both ranks with the same one-line error.
    cmd = ["horovodrun", "-np", "2", "-H", "localhost:2", "sh", "-c",
           f"cd {_quote(str(tmp_path))}/rank$HOROVOD_RANK && exec "
           + " ".join(_quote(a) for a in pretrain_argv(shards, "--start_step", "5"))]
    bad = subprocess.run(cmd, cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS="1", **FLOAT16), capture_output=True,
                         text=True, timeout=300)
    assert bad.returncode != 0
    assert (bad.stdout + bad.stderr).count("no complete checkpoint for step 5") >= 2


FINETUNE_WRAPPER = r"""
import hashlib, os, sys
import bort
import bort.finetune.loop as F
real_train = F.train
def train(task, model, *args, **kwargs):
    out = real_train(task, model, *args, **kwargs)
    digest = hashlib.sha256()
    for name, param in sorted(model._collect_params_with_prefix().items()):
        digest.update(name.encode() + param.data().asnumpy().tobytes())
    with open(os.path.join(os.environ["DIGESTS"], "rank%s.sha" % os.environ["HOROVOD_RANK"]), "w") as handle:
        handle.write(digest.hexdigest())
    return out
F.train = train
import finetune_bort
from bort.errors import run_cli
run_cli(finetune_bort.main)(sys.argv[1:])
"""


def test_finetuning_two_ranks_identical_parameters_only_rank0_writes(tmp_path):
    digests = tmp_path / "digests"
    digests.mkdir()
    argv = [sys.executable, "-c", FINETUNE_WRAPPER, "--task_name", "WNLI",
            "--data_dir", os.path.join(ROOT, "test_data/glue/WNLI"), "--pretrained_parameters", "none",
            "--model_config", "bort_tiny", "--gpu", "999", "--max_len", "64", "--batch_size", "4", "--epochs", "2",
            "--lr", "1e-3", "--output_dir", "out",
            "--vocab_json", os.path.join(ROOT, "test_data/vocab/vocab.json"),
            "--merges", os.path.join(ROOT, "test_data/vocab/merges.txt")]
    base = tmp_path / "run"
    horovodrun(base, argv, {"BORT_ROOT": ROOT, "DIGESTS": str(digests)})
    assert (digests / "rank0.sha").read_text() == (digests / "rank1.sha").read_text()
    assert os.listdir(base / "rank1") == []  # rank 1 wrote nothing
    written = sorted(os.listdir(base / "rank0" / "out"))
    assert {"result.json", "model_bort_WNLI.params", "metrics.jsonl"} <= set(written), written
    shutil.rmtree(base)
