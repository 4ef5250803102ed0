"""The distillation pretrainer: learning, exact resume, crash-safe checkpoints, Horovod, bad input, TEST launcher."""
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import warnings

import bort  # noqa: F401
import mxnet as mx
import numpy as np
import pytest

import run_pretraining_distillation_hvd as cli
from bort.weights.checkpoint import load_parameters, save_parameters
from bort.errors import BortError
from bort.model import build_model, get_config
from bort.pretrain.loop import parameters_digest, pretrain
from bort.pretrain.batches import eval_batches, split_shards
from bort.pretrain.state import complete_checkpoints, resolve_start_step
from bort.train.distributed import Distributed
from data.pretraining_format import load_shard
from data.shard_files import list_shards
from helpers import ROOT, tiny_config
from pretrain_faults import checkpoint_parameters, killed_after

# `shards` and `vocab_size` (conftest.py): two shards of the sample text, dupe factor 2, 32 tokens, seed 12345.


def _materialized(config):
    model = build_model(config)
    model(mx.nd.zeros((1, 2)), mx.nd.array([2]), mx.nd.zeros((1, 1)))
    return model


def test_kl_to_a_fixed_teacher_falls_by_half(shards, vocab_size, tmp_path):
    """Distillation alone (mlm_weight 0) pulls a tiny student towards a fixed, confident teacher."""
    mx.random.seed(3)
    teacher_config = get_config("roberta_tiny", vocab_size=vocab_size, dropout=0.0)
    teacher = _materialized(teacher_config)
    # A confident teacher: its output distribution has a strong token preference plus context-dependent logits.
    bias = teacher.decoder[3].bias
    bias.set_data(mx.nd.array(np.random.RandomState(0).randn(vocab_size) * 3.0))
    teacher_path = str(tmp_path / "teacher.params")
    save_parameters(teacher, teacher_path, teacher_config)
    metrics = tmp_path / "m.jsonl"
    config = tiny_config(shards, tmp_path / "ck", teacher_ckpt_dir=teacher_path, mlm_weight=0.0,
                         teacher_ce_weight=1.0, distillation_temperature=1.0, num_steps=40, log_interval=1,
                         ckpt_interval=1000, optimizer="adam", lr=3e-3, warmup_ratio=0.1, metrics_file=str(metrics))
    pretrain(config)
    kd = [json.loads(line)["kd_loss"] for line in open(metrics) if json.loads(line)["kind"] == "train"]
    assert len(kd) == 40
    first, last = np.mean(kd[:3]), np.mean(kd[-3:])
    assert last < 0.5 * first, (first, last)


def test_resume_is_exact(shards, tmp_path):
    """8 steps in one go == 4 steps, 'kill', resume from the latest checkpoint, 4 more (dropout on, accumulate 2)."""
    config = tiny_config(shards, tmp_path / "a", accumulate=2, batch_size=4)
    full = parameters_digest(pretrain(config)["student"])
    half = tiny_config(shards, tmp_path / "b", accumulate=2, batch_size=4)
    with killed_after(4):
        pretrain(half)
    first = checkpoint_parameters(str(tmp_path / "b"), 4)
    assert complete_checkpoints(str(tmp_path / "b")) == [4]
    resumed = pretrain(dataclasses.replace(half, start_step="latest"))
    assert resumed["step"] == 8
    again = parameters_digest(resumed["student"])
    moved = max(np.abs(full[k] - first[k]).max() for k in full)
    assert moved > 1e-4  # the second half really trained
    for name in full:
        np.testing.assert_allclose(again[name], full[name], rtol=1e-6, atol=1e-7, err_msg=name)
    # The optimizer state of the final checkpoints agrees too.
    a = mx.nd.load(str(tmp_path / "a" / "step_0000008.states"))
    b = mx.nd.load(str(tmp_path / "b" / "step_0000008.states"))
    assert sorted(a) == sorted(b)
    for key in a:
        np.testing.assert_allclose(a[key].asnumpy(), b[key].asnumpy(), rtol=1e-5, atol=1e-8)
    state = json.load(open(tmp_path / "b" / "step_0000008.state.json"))
    assert state["step"] == 8 and state["world_size"] == 1 and set(state["rng"]) == {"python", "numpy"}


_CRASH = r"""
import os
import bort, mxnet as mx
import bort.pretrain.loop as P
import bort.pretrain.state as S
import bort.weights.checkpoint as C
real_save, saving_step = C.save_ndarrays, [0]
def dying_save(path, arrays):
    digest = real_save(path, arrays)
    if saving_step[0] == 4 and ".states" in os.path.basename(path):
        # Half of the optimizer state is on disk when the process dies as from SIGKILL (no cleanup at all).
        with open(path, "r+b") as handle:
            handle.truncate(os.path.getsize(path) // 2)
        os._exit(9)
    return digest
real_state = S.save_training_state
def save_training_state(prefix, trainer, state, **kwargs):
    saving_step[0] = state["step"]
    return real_state(prefix, trainer, state, **kwargs)
S.save_training_state = save_training_state
C.save_ndarrays = dying_save
P.pretrain(P.PretrainConfig(**CONFIG))
"""


def test_checkpoint_interrupted_mid_write_leaves_the_previous_one(shards, tmp_path):
    ckpt = tmp_path / "ck"
    config = tiny_config(shards, ckpt, ckpt_interval=2, num_steps=6)
    fields = {k: v for k, v in dataclasses.asdict(config).items()}
    code = _CRASH.replace("**CONFIG", "**" + repr(fields))
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 9, proc.stderr[-2000:]
    # Step 4 died while writing its optimizer state: its params exist, its .state.json does not.
    assert os.path.isfile(ckpt / "step_0000004.params")
    assert not os.path.isfile(ckpt / "step_0000004.state.json")
    assert complete_checkpoints(str(ckpt)) == [2]
    assert resolve_start_step(str(ckpt), "latest") == 2
    with pytest.raises(BortError, match="no complete checkpoint for step 4"):
        resolve_start_step(str(ckpt), "4")
    resumed = pretrain(dataclasses.replace(config, start_step="latest"))
    assert resumed["step"] == 6 and complete_checkpoints(str(ckpt)) == [2, 4, 6]


def run_cli(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.run_cli(cli.main)(argv)
    err = capsys.readouterr().err.strip()
    return exit_info.value.code, err


def base_args(shards, tmp_path):
    return ["--data", shards, "--model", "bort_tiny", "--teacher_model", "roberta_tiny", "--random_teacher",
            "--num_steps", "2",
            "--batch_size", "4", "--dtype", "float32", "--ckpt_dir", str(tmp_path / "ck"), "--no_progress"]


def test_bad_input_gives_one_line_errors(shards, vocab_size, tmp_path, capsys):
    args = base_args(shards, tmp_path)
    # Missing shards.
    code, err = run_cli(args + ["--data", str(tmp_path / "nowhere")], capsys)
    assert code == 2 and err.startswith("error: ") and "nowhere: no such file or directory" in err
    assert "\n" not in err
    # A corrupt shard (truncated), first or later in the list.
    bad_dir = tmp_path / "bad"
    bad_dir.mkdir()
    shutil.copy(os.path.join(shards, "part-000.npz"), bad_dir / "part-000.npz")
    data = open(os.path.join(shards, "part-001.npz"), "rb").read()
    open(bad_dir / "part-001.npz", "wb").write(data[: len(data) // 3])
    code, err = run_cli(args + ["--data", str(bad_dir / "part-001.npz")], capsys)
    assert code == 2 and "part-001.npz: corrupt or truncated shard" in err and "\n" not in err
    code, err = run_cli(args + ["--data", str(bad_dir), "--accumulate", "2"], capsys)
    assert code == 2 and "part-001.npz: corrupt or truncated shard" in err and "\n" not in err
    # A teacher with another vocabulary size.
    other = get_config("roberta_tiny", vocab_size=vocab_size + 7)
    path = str(tmp_path / "other.params")
    save_parameters(_materialized(other), path, other)
    code, err = run_cli(args + ["--teacher_ckpt_dir", path], capsys)
    assert code == 2 and f"teacher vocabulary size {vocab_size + 7} differs from the student's {vocab_size}" in err
    # A teacher checkpoint with missing parameters.
    good = get_config("roberta_tiny", vocab_size=vocab_size)
    arrays = {n: p.data() for n, p in _materialized(good)._collect_params_with_prefix().items()}
    del arrays["decoder.0.weight"]
    path = str(tmp_path / "partial.params")
    mx.nd.save(path, arrays)
    code, err = run_cli(args + ["--teacher_ckpt_dir", path], capsys)
    assert code == 2 and "partial.params: parameters do not match the model; missing 1: decoder.0.weight" in err
    # More workers than shards.
    with pytest.raises(BortError, match="1 shard file\\(s\\) for 2 workers"):
        split_shards(["a.npz"], 2, 0)
    # A resume step without a checkpoint.
    code, err = run_cli(args + ["--start_step", "7"], capsys)
    assert code == 2 and "no complete checkpoint for step 7" in err


def test_student_can_start_from_parameters(shards, vocab_size, tmp_path):
    config = get_config("bort_tiny", vocab_size=vocab_size)
    init = _materialized(config)
    path = str(tmp_path / "init.params")
    save_parameters(init, path, config)
    result = pretrain(tiny_config(shards, tmp_path / "ck", student_params=path, num_steps=1, lr=0.0))
    # lr 0 at step 1 of warmup: the parameters are exactly the ones loaded.
    loaded = parameters_digest(load_parameters(_materialized(config), path))
    trained = parameters_digest(result["student"])
    for name in loaded:
        np.testing.assert_array_equal(loaded[name], trained[name])


def test_a_student_of_another_architecture_or_the_teacher_is_refused(shards, vocab_size, tmp_path, capsys):
    def saved(name, config_name):
        config = get_config(config_name, vocab_size=vocab_size)
        path = str(tmp_path / f"{name}.params")
        save_parameters(_materialized(config), path, config)
        return path

    student, teacher = saved("student", "bort_tiny"), saved("teacher", "roberta_tiny")
    args = ["--data", shards, "--teacher_model", "roberta_tiny", "--num_steps", "1", "--batch_size", "4",
            "--dtype", "float32", "--ckpt_dir", str(tmp_path / "ck"), "--no_progress"]

    def refused(extra, message):
        code, err = run_cli(args + extra, capsys)
        assert code == 2 and err.startswith("error: " + message) and "\n" not in err, err
        assert not (tmp_path / "ck").exists()

    # the JSON beside --student_params used to win silently over --model
    refused(["--model", "bort_4_8_768_1024", "--student_params", student, "--random_teacher"],
            f"{tmp_path / 'student.json'}: the parameters are of another architecture than --model bort_4_8_768_1024")
    # the teacher's checkpoint as the student: its own file, or a file of its architecture
    refused(["--student_params", teacher, "--teacher_ckpt_dir", teacher],
            f"{teacher}: --student_params is the teacher's checkpoint (--teacher_ckpt_dir {teacher})")
    refused(["--student_params", teacher, "--random_teacher"],
            f"{teacher}: --student_params holds a model of the teacher's architecture (--teacher_model roberta_tiny")


@pytest.mark.slow
@pytest.mark.horovod
def test_horovod_two_ranks_match_one_process(shards, tmp_path):
    """horovodrun -np 2 (gloo, CPU): identical parameters on both ranks, equal to one process with the same
    global batch (accumulate 2), and -np 3 with 2 shards fails with a clear error."""
    common = ["--data", shards, "--data_eval", shards, "--model", "bort_tiny", "--teacher_model", "roberta_tiny",
              "--random_teacher",
              "--num_steps", "4", "--batch_size", "4", "--num_buckets", "3", "--dtype", "float32", "--cpu_only",
              "--log_interval", "2", "--ckpt_interval", "4", "--eval_interval", "0", "--lr", "1e-3",
              "--no_progress"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    script = os.path.join(ROOT, "run_pretraining_distillation_hvd.py")
    cmd = ["horovodrun", "-np", "2", "-H", "localhost:2", sys.executable, script, *common,
           "--ckpt_dir", str(tmp_path / "h2"), "--summary_json", str(tmp_path / "h2" / "r{rank}.json")]
    two = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    if two.returncode != 0 and "error:" not in two.stdout + two.stderr:
        # Horovod/Gloo on CPU aborted once in ~50 launches here without any error of ours (a start-up or
        # shutdown race in the runtime, not in the training code): run it once more, and say so.
        warnings.warn("horovodrun -np 2 failed without an error of ours; retrying once:\n" + two.stderr[-1500:])
        shutil.rmtree(tmp_path / "h2", ignore_errors=True)
        two = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stdout[-3000:] + two.stderr[-3000:]
    one = subprocess.run([sys.executable, script, *common, "--accumulate", "2", "--ckpt_dir", str(tmp_path / "h1"),
                          "--summary_json", str(tmp_path / "h1" / "r.json")],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    r0, r1 = (json.load(open(tmp_path / "h2" / f"r{r}.json")) for r in (0, 1))
    assert r0["parameters_sha256"] == r1["parameters_sha256"]
    a = mx.nd.load(str(tmp_path / "h2" / "step_0000004.params"))
    b = mx.nd.load(str(tmp_path / "h1" / "step_0000004.params"))
    for name in a:
        np.testing.assert_allclose(a[name].asnumpy(), b[name].asnumpy(), rtol=1e-5, atol=1e-6, err_msg=name)
    single = json.load(open(tmp_path / "h1" / "r.json"))
    assert r0["eval"]["num_masks"] == single["eval"]["num_masks"]  # eval shards split over ranks, summed
    assert r0["eval"]["mlm_loss"] == pytest.approx(single["eval"]["mlm_loss"], rel=1e-4)
    three = subprocess.run(["horovodrun", "-np", "3", "-H", "localhost:3", sys.executable, script, *common,
                            "--ckpt_dir", str(tmp_path / "h3")],
                           cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert three.returncode != 0
    assert "error: --data: 2 shard file(s) for 3 workers" in three.stdout + three.stderr


def test_batch_size_eval_counts_sequences_in_one_bucket(shards, tmp_path):
    """As the original's eval loader: no --use_avg_len and one bucket, whatever the training batches use."""
    config = tiny_config(shards, tmp_path / "ck", data_eval=shards, batch_size_eval=16, use_avg_len=True,
                         num_buckets=20, batch_size=64, num_eval_steps=0)
    batches, split = eval_batches(config, Distributed(False))
    sizes = [len(b["valid_length"]) for b in batches]
    per_shard = [len(load_shard(p)) for p in list_shards(shards)]
    assert sum(sizes) == sum(per_shard)
    assert len(sizes) == sum(-(-n // 16) for n in per_shard) and max(sizes) == 16
