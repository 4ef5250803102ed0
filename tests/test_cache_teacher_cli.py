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
                            stdout=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONPATH=ROOT))
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
