"""Paths and plain helpers the test files share; the shared fixtures built from them are in conftest.py.

Imported the ordinary way (`from helpers import ROOT`): pytest puts tests/ on sys.path for the test files.
"""
import contextlib
import dataclasses
import errno
import functools
import os
import shutil
import signal
import subprocess
import sys
import tempfile

import bort  # noqa: F401  (before mxnet, which the modules below import)
import create_pretraining_data
from bort.pretrain.loop import PretrainConfig
from bort.text.bpe_train import made_from

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEST_DATA = os.path.join(ROOT, "test_data")
SAMPLE_TEXT = os.path.join(TEST_DATA, "sample_text.txt")
VOCAB_DIR = os.path.join(TEST_DATA, "vocab")
VOCAB_JSON = os.path.join(VOCAB_DIR, "vocab.json")
MERGES = os.path.join(VOCAB_DIR, "merges.txt")
VOCAB_FLAGS = ["--vocab_json", VOCAB_JSON, "--merges", MERGES]  # the test vocabulary (1005 tokens)
# Real released files (GLUE prefixes, gluon-nlp's sample text) beside the checkout: ../shared/real_data.
REAL_DATA = os.path.join(os.path.dirname(ROOT), "shared", "real_data")
LAUNCHER = os.path.join(ROOT, "run_pretraining_distillation.sh")
TEST_STUDENT_STEPS, TEST_TEACHER_STEPS = 400, 450  # the launcher's TEST defaults


@functools.lru_cache(maxsize=None)
def have_horovod():
    """horovodrun on PATH and Horovod built with MXNet (asked once per session: the import takes seconds)."""
    return shutil.which("horovodrun") is not None and subprocess.run(
        [sys.executable, "-c", "import horovod.mxnet"], capture_output=True).returncode == 0


def launcher_procs():
    """The launcher's <num gpus> in the tests: 2 processes under Horovod when it is installed, else 1."""
    return "2" if have_horovod() else "1"


def bundled_sample_text():
    """True when test_data/sample_text.txt is the text the bundled vocabulary was made from (not, e.g., the
    gluon-nlp sample text that scripts/test_sample_text.sh puts in its place)."""
    return made_from(VOCAB_DIR, SAMPLE_TEXT)


def make_shards(out_dir, num_outputs=2, dupe_factor=2, seed=12345, max_seq_length=32):
    """Pretraining shards of the sample text with the test vocabulary; returns out_dir as a string."""
    create_pretraining_data.main(["--input_file", SAMPLE_TEXT, "--output_dir", str(out_dir), *VOCAB_FLAGS,
                                  "--dupe_factor", str(dupe_factor), "--num_outputs", str(num_outputs),
                                  "--max_seq_length", str(max_seq_length), "--random_seed", str(seed),
                                  "--num_workers", "1", "--no_progress"])
    return str(out_dir)


def tiny_config(shards, ckpt_dir, **changes):
    """A PretrainConfig of a few CPU steps: bort_tiny distilled from a random roberta_tiny teacher."""
    base = PretrainConfig(data=shards, model="bort_tiny", teacher_model="roberta_tiny", random_teacher=True,
                          num_steps=8, batch_size=8,
                          num_buckets=3, dtype="float32", ckpt_dir=str(ckpt_dir), ckpt_interval=4, log_interval=2,
                          lr=1e-3, warmup_ratio=0.25, progress=False, cpu_only=True)
    return dataclasses.replace(base, **changes)


def run_launcher(args, cwd, timeout=1800, **env):
    """bash run_pretraining_distillation.sh ARGS in cwd with the test's Python; returns the CompletedProcess.

    The launcher runs in its own process group, and a timeout kills the whole group: killing only bash would leave
    its trainer (or horovodrun's ranks) running after the test."""
    run_env = dict(os.environ, **dict(dict(PYTHON=sys.executable), **env))
    process = subprocess.Popen(["bash", LAUNCHER, *args], cwd=str(cwd), env=run_env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


@contextlib.contextmanager
def small_disk(directory, size="64k", read_only=False):
    """A tmpfs of `size` mounted at `directory` (created) for the with-block, read-only when asked. Yields True, or
    False where this machine does not allow mounting (CI without root): the test then injects the errno at the
    write instead."""
    os.makedirs(directory, exist_ok=True)
    options = f"size={size}" + (",ro" if read_only else "")
    mounted = shutil.which("mount") is not None and subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(directory)], capture_output=True).returncode == 0
    try:
        yield mounted
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(directory)], capture_output=True)


@contextlib.contextmanager
def read_only_disk(directory, monkeypatch):
    """A read-only tmpfs at `directory` for the with-block; where mounting is not allowed, creating any temporary
    file (what every atomic write does first) fails with EROFS instead."""
    with small_disk(directory, read_only=True) as mounted:
        if not mounted:
            def read_only(*args, **kwargs):
                raise disk_error(errno.EROFS)
            monkeypatch.setattr(tempfile, "mkstemp", read_only)
        yield


def fill_disk(directory, leave=0):
    """Write a file into `directory` that leaves at most `leave` bytes free on its file system."""
    stat = os.statvfs(directory)
    with open(os.path.join(directory, "filler"), "wb") as handle:
        handle.write(b"\0" * max(stat.f_bavail * stat.f_frsize - leave, 0))


def disk_error(code=errno.ENOSPC):
    """The OSError a full (ENOSPC), read-only (EROFS) or forbidden (EACCES) file system gives."""
    return OSError(code, os.strerror(code))
