"""One run per output directory; a fine-tuning run's result files land as one set described by result.json."""
import errno
import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

import finetune_bort
import run_pretraining_distillation_hvd as pretrain_cli
from bort.finetune import loop as finetune
from bort import locking
from bort.errors import BortError, run_cli
from helpers import ROOT, VOCAB_FLAGS, disk_error, fill_disk, small_disk

WNLI = ["--task_name", "WNLI", "--data_dir", os.path.join(ROOT, "test_data/glue/WNLI"), "--pretrained_parameters",
        "none", "--model_config", "bort_tiny", "--gpu", "999", "--max_len", "32", "--epochs", "1", "--batch_size",
        "8"] + VOCAB_FLAGS


@pytest.fixture
def holder(tmp_path):
    """Another process holding tmp_path/'out' the way a running fine-tuning run does."""
    out = tmp_path / "out"
    code = textwrap.dedent(f"""
        import sys, time
        from bort.locking import hold_directory
        hold_directory({str(out)!r}, "--output_dir")
        print("held", flush=True)
        time.sleep(120)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    yield out, proc
    if proc.poll() is None:
        proc.kill()
    proc.communicate()


def _refused(main, argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_cli(main)(argv)
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1, err
    return err


def test_a_second_finetuning_run_into_a_held_directory_is_refused(holder, capsys):
    out, proc = holder
    err = _refused(finetune_bort.main, WNLI + ["--output_dir", str(out)], capsys)
    assert err == (f"error: {out}: --output_dir is in use by another run (PID {proc.pid} on {os.uname().nodename}); "
                   "wait for it to finish or choose another --output_dir")
    assert os.listdir(out) == [locking.LOCK_NAME]


def test_a_second_pretraining_run_into_a_held_ckpt_dir_is_refused(holder, tmp_path, capsys):
    import create_pretraining_data

    out, proc = holder
    shards = str(tmp_path / "shards")
    create_pretraining_data.main(["--input_file", os.path.join(ROOT, "test_data/sample_text.txt"), "--output_dir",
                                  shards, *VOCAB_FLAGS, "--max_seq_length", "32", "--num_workers", "1",
                                  "--no_progress"])
    err = _refused(pretrain_cli.main, ["--data", shards, "--model", "bort_tiny", "--teacher_model", "roberta_tiny",
                                       "--num_steps", "1", "--batch_size", "4", "--ckpt_dir", str(out),
                                       "--no_progress"], capsys)
    assert f"{out}: --ckpt_dir is in use by another run (PID {proc.pid}" in err


def test_the_lock_goes_with_its_process_even_on_kill_9(holder):
    out, proc = holder
    with pytest.raises(BortError, match="in use by another run"):
        locking.hold_directory(out)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert locking.hold_directory(out) is True  # free again, no stale lock to clean up
    assert locking.hold_directory(out) is False  # re-entrant within a process
    locking.release_directory(out)


def test_owned_directory_removes_what_a_failing_run_created(tmp_path):
    target = tmp_path / "new"
    with pytest.raises(RuntimeError):
        with locking.owned_directory(target):
            assert target.is_dir()
            raise RuntimeError("boom")
    assert not target.exists()
    existing = tmp_path / "existing"
    existing.mkdir()
    with pytest.raises(RuntimeError):
        with locking.owned_directory(existing):
            raise RuntimeError("boom")
    assert existing.is_dir()  # not ours to remove


def test_a_full_disk_leaves_no_empty_lock_file(tmp_path, monkeypatch, capsys):
    disk = tmp_path / "disk"
    with small_disk(disk) as mounted:
        if mounted:
            fill_disk(disk)
        else:
            write = os.write

            def full(fd, data):
                if os.readlink(f"/proc/self/fd/{fd}").endswith(locking.LOCK_NAME):
                    raise disk_error(errno.ENOSPC)
                return write(fd, data)
            monkeypatch.setattr(os, "write", full)
            (disk / "filler").write_bytes(b"")
        with pytest.raises(BortError, match=r"ft/\.bort\.lock: cannot write the lock file \(No space left"):
            locking.hold_directory(disk / "ft")
        # the same through a CLI: one line, no directory and no lock file left
        err = _refused(finetune_bort.main, WNLI + ["--output_dir", str(disk / "ft")], capsys)
        assert err == f"error: {disk / 'ft' / locking.LOCK_NAME}: cannot write the lock file (No space left on " \
                      "device; --output_dir)"
        assert os.listdir(disk) == ["filler"]
        assert str(disk / "ft") not in locking._held


@pytest.mark.slow
def test_result_json_is_the_manifest_of_the_result_set(tmp_path, monkeypatch):
    out = tmp_path / "out"
    run_cli(finetune_bort.main)(WNLI + ["--output_dir", str(out), "--seed", "1"])
    result = json.loads((out / "result.json").read_text())
    assert set(result["files"]) == {"model_bort_WNLI.params", "model_bort_WNLI.json", "model_bort_WNLI.task.json",
                                    "WNLI.tsv"}
    locking.verify_result_set(str(out), result)
    locking.release_directory(out)
    # A second run into the directory that dies half-way: the first run's result.json must not survive beside
    # files that may already be the second run's.
    monkeypatch.setattr(finetune, "train", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("crash")))
    with pytest.raises(RuntimeError):
        finetune_bort.main(WNLI + ["--output_dir", str(out), "--seed", "2"])
    assert not (out / "result.json").exists()
    (out / "WNLI.tsv").write_text("index\tprediction\n")
    with pytest.raises(BortError, match="WNLI.tsv: changed since"):
        locking.verify_result_set(str(out), result)
