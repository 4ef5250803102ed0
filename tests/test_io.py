"""bort.io: atomic writes and appends on a full or read-only disk, and the output check done before the work."""
import errno
import os

import pytest

from bort import io
from bort.errors import BortError
from bort.io import JsonlLogger, atomic_write, check_writable
from helpers import disk_error, fill_disk, read_only_disk, small_disk


def _one_line(func, *args, **kwargs):
    with pytest.raises(BortError) as err:
        func(*args, **kwargs)
    assert "\n" not in str(err.value)
    return str(err.value)


def _write(path, text):
    with atomic_write(path) as handle:
        handle.write(text)


def test_a_read_only_disk_is_one_line_before_and_at_the_write(tmp_path, monkeypatch):
    disk = tmp_path / "ro"
    with read_only_disk(disk, monkeypatch):
        message = _one_line(check_writable, disk / "out", "--output_dir")
        assert message == f"{disk / 'out'}: cannot write there (Read-only file system; --output_dir)"
        message = _one_line(_write, disk / "result.json", "{}")
        assert message == f"{disk / 'result.json'}: cannot write (Read-only file system); nothing was written"
        assert os.listdir(disk) == []


def test_a_full_disk_is_one_line_and_leaves_no_partial_file(tmp_path, monkeypatch):
    disk = tmp_path / "full"
    with small_disk(disk) as mounted:
        if mounted:
            fill_disk(disk)
        else:
            def full(*args, **kwargs):
                raise disk_error(errno.ENOSPC)
            monkeypatch.setattr(io, "open", full, raising=False)
            (disk / "filler").write_bytes(b"")
        message = _one_line(_write, disk / "big.txt", "x" * 100000)
        assert message.endswith("big.txt: cannot write (No space left on device); nothing was written")
        # nor the directories the write would have created
        message = _one_line(_write, disk / "new" / "deeper" / "big.txt", "x" * 100000)
        assert message.endswith("deeper/big.txt: cannot write (No space left on device); nothing was written")
        metrics = JsonlLogger(str(disk / "metrics.jsonl"))
        message = _one_line(metrics.log, step=1, loss=0.5)
        assert message == f"{disk / 'metrics.jsonl'}: cannot append a record (No space left on device)"
        assert sorted(n for n in os.listdir(disk) if n != "metrics.jsonl") == ["filler"]


def test_outputs_that_cannot_be_written_are_refused_before_the_work(tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    assert _one_line(check_writable, a_file, "--output_dir") == \
        f"{a_file}: is an existing file; --output_dir must be a directory"
    assert _one_line(check_writable, a_file / "sub", "--cache_dir") == \
        f"{a_file}: is a file, so --cache_dir {a_file / 'sub'} cannot be created"
    assert _one_line(check_writable, tmp_path, "--output", kind="file") == \
        f"{tmp_path}: is a directory; --output must be a file name"
    check_writable(tmp_path / "new" / "deeper", "--output_dir")  # to be created: fine, and nothing made yet
    check_writable(a_file, "--output", kind="file")  # an existing file is replaced
    assert sorted(os.listdir(tmp_path)) == ["a_file"]
