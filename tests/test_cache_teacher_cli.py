"""scripts/cache_teacher.py: one run per cache directory (a lock, as the pretrainer's --ckpt_dir), and a --help
that says what happens without --teacher_ckpt_dir."""
import contextlib
import os
import runpy
import shutil
import subprocess
import sys

import pytest

from bort.errors import BortError
from bort.weights import store
from helpers import ROOT

CACHE_TEACHER = os.path.join(ROOT, "scripts", "cache_teacher.py")
HOLD = "import sys; from bort.locking import hold_directory; hold_directory(sys.argv[1]); print('held', flush=True); " \
       "sys.stdin.read()"


def cache_teacher():
    """The script's namespace (run in this process, so that the test can patch what it calls)."""
    return runpy.run_path(CACHE_TEACHER, run_name="cache_teacher")


@contextlib.contextmanager
def held_by_another_run(directory):
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(directory)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        yield proc.pid
    finally:
        proc.stdin.close()
        proc.wait(timeout=60)


@pytest.mark.parametrize("where", ["cache_dir", "beside"])
def test_a_second_run_into_the_same_cache_directory_is_refused(shards, tmp_path, where):
    data = tmp_path / "shards"
    shutil.copytree(shards, data)
    cache_dir = tmp_path / "cache" if where == "cache_dir" else data
    main = cache_teacher()["main"]
    with held_by_another_run(cache_dir) as pid:
        with pytest.raises(BortError, match=rf"{cache_dir}: --cache_dir is in use by another run \(PID {pid} "):
            main(["--data", str(data), "--cache_dir", str(cache_dir) if where == "cache_dir" else "beside",
                  "--teacher_ckpt_dir", str(tmp_path / "no_teacher.params"), "--cpu_only", "--no_progress"])
    assert not [f for f in os.listdir(data) if f.endswith(".topk")]


def test_help_says_what_runs_without_teacher_ckpt_dir_and_it_does(shards, tmp_path, monkeypatch, capsys):
    namespace = cache_teacher()
    help_text = " ".join(namespace["build_parser"]().format_help().split())
    assert "random teacher" not in help_text
    assert "without it, gluon-nlp's pretrained --teacher_model from $MXNET_HOME/models" in help_text
    asked = []

    def pretrained_params(model_name, dataset_name=None, root=None):
        asked.append(model_name)
        raise BortError(f"{model_name}: not in gluon-nlp's model store (test)")

    monkeypatch.setattr(store, "pretrained_params", pretrained_params)
    with pytest.raises(BortError, match="roberta_tiny: not in gluon-nlp's model store"):
        namespace["main"](["--data", shards, "--cache_dir", str(tmp_path / "cache"), "--teacher_model",
                           "roberta_tiny", "--cpu_only", "--no_progress"])
    assert asked == ["roberta_tiny"]
    assert not os.path.exists(tmp_path / "cache") or os.listdir(tmp_path / "cache") in ([], [".bort.lock"])


def test_a_run_writes_plain_progress_lines_and_releases_its_lock(shards, vocab_size, tmp_path, capsys):
    import mxnet as mx

    from bort.model import build_model, get_config
    from bort.weights.checkpoint import finish_deferred_init, save_parameters

    mx.random.seed(0)
    config = get_config("roberta_tiny", vocab_size=vocab_size, dropout=0.0)
    save_parameters(finish_deferred_init(build_model(config)), str(tmp_path / "teacher.params"), config)
    data = tmp_path / "shards"
    shutil.copytree(shards, data)
    argv = ["--data", str(data), "--teacher_ckpt_dir", str(tmp_path / "teacher.params"), "--topk", "4",
            "--cpu_only", "--batch_size", "64"]
    cache_teacher()["main"](argv)
    err = capsys.readouterr().err
    assert "\r" not in err
    assert [line.split(" | ")[0] for line in err.splitlines() if line.startswith("teacher cache ")] == [
        "teacher cache 1/2 (50.0%)", "teacher cache 2/2 (100.0%)"]
    assert {"part-000.npz.topk", "part-001.npz.topk"} <= set(os.listdir(data))
    assert ".bort.lock" not in os.listdir(data)  # released when the run ends
    proc = subprocess.run([sys.executable, CACHE_TEACHER, *argv, "--no_progress"], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert '"skipped": 2' in proc.stdout
