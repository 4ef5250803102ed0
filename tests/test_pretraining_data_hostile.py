"""create_pretraining_data under hostile conditions: SIGTERM, kill -9 of the parent, a full disk; shards whose
contents do not fit the vocabulary or the model."""
import errno
import glob
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from bort.errors import BortError
from bort.runtime import process_alive, process_descendants
from bort.text.tokenizer import load_tokenizer
from data import pretraining
from data.pretraining_format import InstanceBatch, ShardWriter, load_shard
from data.pretraining_instances import InstanceOptions
from data.shard_files import check_shards_fit
from helpers import ROOT, SAMPLE_TEXT, VOCAB_FLAGS
META = {"vocab_size": 100, "pad_id": 1, "mask_id": 99, "bos_id": 0, "eos_id": 2, "max_seq_length": 16}


def _corpus(path, megabytes):
    with open(SAMPLE_TEXT, encoding="utf-8") as handle:
        sentences = [line.strip() for line in handle if line.strip()]
    rng = random.Random(0)
    with open(path, "w", encoding="utf-8") as out:
        while out.tell() < megabytes * 1e6:
            out.write("\n".join(rng.choice(sentences) for _ in range(rng.randint(3, 30))) + "\n\n")
    return path


def _start(tmp_path, out):
    corpus = _corpus(tmp_path / "corpus.txt", 6)
    proc = subprocess.Popen([sys.executable, "create_pretraining_data.py", "--input_file", str(corpus),
                             "--output_dir", str(out), "--num_workers", "2", "--no_progress", *VOCAB_FLAGS,
                             "--dupe_factor", "40"], cwd=ROOT,  # ~15 s of work even on a quiet machine
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    workers = []
    while time.time() < deadline and len(workers) < 2 and proc.poll() is None:
        time.sleep(0.2)
        workers = process_descendants(proc.pid)
    assert len(workers) >= 2, "the workers never started"
    time.sleep(1.0)  # let them take chunks
    assert proc.poll() is None, "the run finished before it could be interrupted; use a larger corpus"
    return proc, workers


def _wait_gone(pids, seconds=15):
    deadline = time.time() + seconds
    while time.time() < deadline and any(process_alive(p) for p in pids):
        time.sleep(0.1)
    return [p for p in pids if process_alive(p)]


def _no_shard_files(out):
    return not glob.glob(os.path.join(str(out), "*.npz")) and not glob.glob(os.path.join(str(out), ".*.tmp"))


def _cleanup(proc, workers):
    """Whatever the outcome, leave no process of the test behind."""
    for pid in [proc.pid] + workers:
        if process_alive(pid):
            os.kill(pid, signal.SIGKILL)
    proc.communicate()


def test_sigterm_stops_the_workers_and_writes_no_shard(tmp_path):
    out = tmp_path / "shards"
    proc, workers = _start(tmp_path, out)
    try:
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
        assert proc.returncode == 143  # 128 + SIGTERM, as the default action would give
        assert stderr.strip().splitlines()[-1] == "error: terminated by SIGTERM; workers stopped, no shard written"
        assert _wait_gone(workers) == []
        assert not out.exists()  # created by this run, nothing in it: removed
    finally:
        _cleanup(proc, workers)


def test_workers_die_when_the_parent_is_killed_with_sigkill(tmp_path):
    out = tmp_path / "shards"
    proc, workers = _start(tmp_path, out)
    try:
        proc.kill()
        proc.communicate(timeout=60)
        assert _wait_gone(workers) == [], "workers outlived their parent"
        assert _no_shard_files(out)
    finally:
        _cleanup(proc, workers)


def _tiny_tokenizer():
    return load_tokenizer(vocab_json=VOCAB_FLAGS[1], merges=VOCAB_FLAGS[3])


def test_full_disk_while_spooling_is_one_line_and_leaves_no_shard(tmp_path, monkeypatch):
    def full(self, name, array):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(ShardWriter, "_write", full)
    out = tmp_path / "out"
    with pytest.raises(BortError, match=r"out: cannot write shards there \(No space left on device\)") as err:
        pretraining.create_pretraining_data(SAMPLE_TEXT, str(out), _tiny_tokenizer(),
                                            InstanceOptions(max_seq_length=32), progress=False)
    assert "\n" not in str(err.value)
    assert not out.exists()  # created by the failed run, removed again


def test_full_disk_while_writing_the_shard_leaves_no_partial_file(tmp_path, monkeypatch):
    import shutil

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    out = tmp_path / "out"
    os.makedirs(out)
    monkeypatch.setattr(shutil, "copyfileobj", full)
    with pytest.raises(BortError, match=r"part-000.npz: cannot write \(No space left on device\)"):
        pretraining.create_pretraining_data(SAMPLE_TEXT, str(out), _tiny_tokenizer(),
                                            InstanceOptions(max_seq_length=32), progress=False)
    assert _no_shard_files(out) and os.listdir(out) == []


def test_an_error_after_creating_the_output_directory_removes_it(tmp_path):
    empty = tmp_path / "blank.txt"
    empty.write_text("\n\n\n")
    out = tmp_path / "new" / "shards"
    with pytest.raises(BortError, match="no documents found"):
        pretraining.create_pretraining_data(str(empty), str(out), _tiny_tokenizer(), progress=False)
    assert not out.exists()


# ---- shards that do not fit ------------------------------------------------------------------------------------
def _shard(path, ids, masked=(5,), meta=None, labels=(0,), version=2):
    ids = np.asarray(ids, np.int32)
    batch = InstanceBatch(ids, np.zeros_like(ids), [0, len(ids)], [1], list(masked), [0, 1], list(labels))
    with ShardWriter(path, dict(META, **(meta or {})), format_version=version) as writer:
        writer.append(batch)
    return str(path)


@pytest.mark.parametrize("kwargs, message", [
    (dict(ids=[0, 5, 100, 2]), r"input_ids: id 100 at index 2 is outside the vocabulary \(0..99\)"),
    (dict(ids=[0, 5, -3, 2], version=1), r"input_ids: id -3 at index 2 is outside the vocabulary"),  # int32
    (dict(ids=[0, 5, 6, 2], masked=(250,)), r"masked_lm_ids: id 250 at index 0 is outside the vocabulary"),
    (dict(ids=[0] + [5] * 20 + [2]), r"an instance of 22 tokens is longer than the shard's max_seq_length 16"),
    (dict(ids=[0, 5, 6, 2], labels=(7,)), r"next_sentence_labels: expected 0 or 1"),
])
def test_out_of_range_shard_contents_are_refused_at_load(tmp_path, kwargs, message):
    path = _shard(tmp_path / "bad.npz", **kwargs)
    with pytest.raises(BortError, match=message) as err:
        load_shard(path)
    assert str(err.value).startswith(path) and "\n" not in str(err.value)


def test_shards_that_do_not_fit_the_model(tmp_path):
    a = _shard(tmp_path / "a.npz", [0, 5, 6, 2])
    b = _shard(tmp_path / "b.npz", [0, 5, 6, 2], meta={"vocab_size": 120, "mask_id": 119})
    long = _shard(tmp_path / "long.npz", [0, 5, 6, 2], meta={"max_seq_length": 512})
    assert check_shards_fit([a, a], max_length=16, vocab_size=100) == 100
    with pytest.raises(BortError, match=r"b.npz: vocab_size 120 differs from .*a.npz's 100"):
        check_shards_fit([a, b], max_length=16)
    with pytest.raises(BortError, match=r"a.npz: vocab_size 100 differs from the model's 50265"):
        check_shards_fit([a], max_length=16, vocab_size=50265)
    with pytest.raises(BortError, match=r"long.npz: instances of up to 512 tokens .* do not fit the model's 128"):
        check_shards_fit([a, long], max_length=128)
