"""run_pretraining_distillation.sh: the original's two-argument TEST call, TEST in float16 on CPU with flags that
override TEST's own, and missing shards as one line without Horovod's traceback or a stray directory; the
environment and files of the launchers (MXNET_GPU_MEM_POOL_TYPE, train.log under --ckpt_dir, the rank's error as
the last line, every shard validated before the launch)."""
import os
import subprocess
import sys

import bort  # noqa: F401
import mxnet as mx
import numpy as np
import pytest

import run_pretraining_distillation_hvd as cli
from bort.errors import BortError
from bort.weights.checkpoint import load_model
from bort.pretrain.mlm import topk_accuracy
from data.collate import batchify
from data.pretraining_format import load_shard, write_shard
from data.shard_files import list_shards
from helpers import ROOT, TEST_STUDENT_STEPS, bundled_sample_text, launcher_procs, make_shards, run_launcher


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


# A stand-in for Python that records what the launcher passes it: the preflight (--preflight_workers) succeeds, the
# run writes its environment and arguments, and with FAKE_FAIL prints what a failed 2-rank Horovod run prints.
FAKE_PYTHON = r"""#!/bin/bash
[ "$1" = "-c" ] && exit 1  # 'import horovod.mxnet': no Horovod, one process
for arg in "$@"; do
    if [ "$arg" = "--preflight_workers" ]; then env > "$FAKE_OUT/preflight.env"; exit 0; fi
done
env > "$FAKE_OUT/run.env"
printf '%s\n' "$@" > "$FAKE_OUT/run.args"
if [ -n "${FAKE_FAIL:-}" ]; then
    echo "[1,0]<stdout>:2026-12-06 10:00:00 INFO effective batch = 1024 tokens"
    echo "[1,0]<stderr>:error: shards/part-007.npz: input_ids: id 70000 at index 3 is outside the vocabulary"
    echo "[0,0]<stderr>:Traceback (most recent call last):"
    echo "[0,0]<stderr>:horovod.common.exceptions.HorovodInternalError: ncclAllReduce failed"
    echo "[0,0]<stderr>:error: rank 0 lost its peer"
    echo "Process 1 exit with status code 1." >&2
    echo "Process 0 exit with status code 1." >&2
    exit 1
fi
"""


def _fake_python(tmp_path):
    path = tmp_path / "fake_python"
    path.write_text(FAKE_PYTHON)
    path.chmod(0o755)
    (tmp_path / "out").mkdir()
    return dict(PYTHON=str(path), FAKE_OUT=str(tmp_path / "out"))


def _env_file(path):
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)


def test_launcher_sets_the_memory_pool_and_writes_its_log_under_ckpt_dir(tmp_path, monkeypatch):
    monkeypatch.delenv("MXNET_GPU_MEM_POOL_TYPE", raising=False)
    env = _fake_python(tmp_path)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    proc = run_launcher(["1", "train", "eval", "--num_steps", "5", "--ckpt_dir", str(tmp_path / "ck")], cwd, **env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for name in ("preflight.env", "run.env"):
        assert _env_file(tmp_path / "out" / name)["MXNET_GPU_MEM_POOL_TYPE"] == "Round"
    assert os.listdir(cwd) == []  # no ./bort_4_8_768_1024_model/train.log
    assert (tmp_path / "ck" / "train.log").is_file()
    args = (tmp_path / "out" / "run.args").read_text().split()
    assert args[args.index("--keep_last_checkpoints") + 1] == "3"

    # A value the user set wins; --ckpt_dir=DIR is read too.
    proc = run_launcher(["1", "train", "eval", f"--ckpt_dir={tmp_path / 'ck2'}"], cwd,
                        MXNET_GPU_MEM_POOL_TYPE="Unpooled", **env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert _env_file(tmp_path / "out" / "run.env")["MXNET_GPU_MEM_POOL_TYPE"] == "Unpooled"
    assert (tmp_path / "ck2" / "train.log").is_file() and os.listdir(cwd) == []


def test_a_failed_multi_rank_run_ends_with_the_first_rank_error_line(tmp_path):
    env = _fake_python(tmp_path)
    (tmp_path / "ck").mkdir()
    earlier = "[0]<stderr>:error: an earlier run's error\n"
    (tmp_path / "ck" / "train.log").write_text(earlier)  # a run resumed in the same --ckpt_dir
    proc = run_launcher(["1", "train", "eval", "--ckpt_dir", str(tmp_path / "ck")], tmp_path, FAKE_FAIL="1", **env)
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last == "error: shards/part-007.npz: input_ids: id 70000 at index 3 is outside the vocabulary"
    log = (tmp_path / "ck" / "train.log").read_text()
    assert log.startswith(earlier) and "HorovodInternalError" in log  # appended, the earlier run's log kept


def test_preflight_refuses_a_ckpt_dir_another_run_holds(shards, tmp_path):
    """Before the launcher writes its train.log into the other run's directory."""
    hold = "import sys; from bort.locking import hold_directory; hold_directory(sys.argv[1]); print('held', " \
           "flush=True); sys.stdin.read()"
    holder = subprocess.Popen([sys.executable, "-c", hold, str(tmp_path / "ck")], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        argv = ["--data", shards, "--model", "bort_tiny", "--teacher_model", "roberta_tiny", "--random_teacher",
                "--dtype", "float32", "--cpu_only", "--ckpt_dir", str(tmp_path / "ck"), "--preflight_workers", "2"]
        with pytest.raises(BortError, match=rf"--ckpt_dir is in use by another run \(PID {holder.pid} "):
            cli.main(argv)
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
    cli.main(argv[:-4] + ["--ckpt_dir", str(tmp_path / "new"), "--preflight_workers", "2"])
    assert not os.path.exists(tmp_path / "new")  # the check creates nothing


def test_finetune_launcher_sets_the_memory_pool(tmp_path, monkeypatch):
    monkeypatch.delenv("MXNET_GPU_MEM_POOL_TYPE", raising=False)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "python"
    fake.write_text(f"#!/bin/bash\nenv > {tmp_path / 'finetune.env'}\n")
    fake.chmod(0o755)
    proc = subprocess.run(["bash", os.path.join(ROOT, "run_finetune.sh"), "TEST1"], capture_output=True, text=True,
                          env=dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}"), timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert _env_file(tmp_path / "finetune.env")["MXNET_GPU_MEM_POOL_TYPE"] == "Round"


def test_preflight_validates_every_shard_not_only_its_metadata(tmp_path):
    """One bad shard among several: its metadata is fine, an id inside is outside the vocabulary."""
    shards = make_shards(tmp_path / "shards", num_outputs=3, dupe_factor=1)
    bad = os.path.join(shards, "part-001.npz")
    shard = load_shard(bad)
    shard.batch.input_ids[3] = shard.metadata["vocab_size"] + 5
    write_shard(bad, shard.batch, shard.metadata)
    argv = ["--data", shards, "--model", "bort_tiny", "--teacher_model", "roberta_tiny", "--random_teacher",
            "--dtype", "float32", "--cpu_only", "--ckpt_dir", str(tmp_path / "ck"), "--preflight_workers", "2"]
    with pytest.raises(BortError, match=r"part-001\.npz: input_ids: id \d+ at index 3 is outside the vocabulary"):
        cli.main(argv)
    assert not os.path.exists(tmp_path / "ck")
