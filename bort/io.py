"""File input and output shared by every reader and writer.

Input: `read_text`, `read_lines`, `read_json`, `read_jsonl` decode UTF-8 and drop a leading byte-order mark (the
released MRPC files and files saved by Windows editors start with one), with one-line errors naming the file.
Output: `atomic_write` / `atomic_path` write to a temporary name beside the target and rename when complete; a
full or read-only disk is a one-line error that leaves nothing behind. `check_writable` refuses an output that
cannot be written before a command does its work.
"""
import contextlib
import errno
import hashlib
import json
import math
import os
import tempfile

from bort.errors import BortError

# A full, read-only or forbidden output: one line naming the file (a programming error keeps its traceback).
_DISK_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EIO, errno.EACCES, errno.EPERM,
                errno.ENOTDIR, errno.EISDIR, errno.EEXIST)


def cannot_write(path, err):
    """The BortError of an OSError `err` met writing `path`, for the errors of _DISK_ERRORS; else None."""
    if isinstance(err, OSError) and err.errno in _DISK_ERRORS:
        return BortError(f"{path}: cannot write ({os.strerror(err.errno)}); nothing was written")
    return None


def _remove_empty(directories):
    """Remove each of `directories` (deepest first) that is empty; stop at the first that is not."""
    for directory in directories:
        try:
            os.rmdir(directory)
        except OSError:
            return


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path in the target's directory; on success rename it to `path`.

    On any exception the temporary file is removed and `path` is left as it was; a full or read-only disk is a
    one-line BortError naming `path`.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    made = []  # the directories this call creates, deepest first: removed again if the write fails
    parent = directory
    while not os.path.exists(parent):
        made.append(parent)
        parent = os.path.dirname(parent)
    try:
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    except OSError as err:
        _remove_empty(made)
        error = cannot_write(path, err)
        if error is None:
            raise
        raise error from None
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the final file the usual permissions
    try:
        yield tmp
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        _remove_empty(made)
        error = cannot_write(path, err)  # full disk: one line, no partial file
        if error is None:
            raise
        raise error from None


def check_writable(path, flag, kind="directory"):
    """Refuse an output before any work is done: `path` (a `kind` "directory" or "file" to be written) must not
    be an existing file where a directory is wanted, nor a directory where a file is, and its nearest existing
    directory must take a new file (a read-only or forbidden place is found by trying: root ignores modes).
    Creates nothing; a BortError naming `path` and `flag` otherwise. A full disk is found only at the write."""
    path = os.path.abspath(os.fspath(path))
    if kind == "directory" and os.path.exists(path) and not os.path.isdir(path):
        raise BortError(f"{path}: is an existing file; {flag} must be a directory")
    if kind == "file" and os.path.isdir(path):
        raise BortError(f"{path}: is a directory; {flag} must be a file name")
    place = path if kind == "directory" else os.path.dirname(path)
    while not os.path.exists(place):
        place = os.path.dirname(place)
    if not os.path.isdir(place):
        raise BortError(f"{place}: is a file, so {flag} {path} cannot be created")
    try:
        fd, probe = tempfile.mkstemp(dir=place, prefix=".bort-write-check.")
        os.close(fd)
        os.remove(probe)
    except OSError as err:
        raise BortError(f"{path}: cannot write there ({os.strerror(err.errno)}; {flag})") from None


@contextlib.contextmanager
def atomic_write(path, mode="w", encoding="utf-8"):
    """Open a file for writing that appears at `path` only once it is completely written."""
    with atomic_path(path) as tmp:
        kwargs = {} if "b" in mode else {"encoding": encoding, "newline": ""}
        with open(tmp, mode, **kwargs) as handle:
            yield handle


UTF8_BOM = "\ufeff"


def strip_bom(text):
    """`text` without a leading UTF-8 byte-order mark."""
    return text[1:] if text.startswith(UTF8_BOM) else text


def decode_utf8(data, path, what="UTF-8 text"):
    """Bytes of a user file -> text without a leading BOM; invalid UTF-8 is a one-line error with the line."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[:err.start].count(b"\n") + 1
        raise BortError(f"{path}:{line}: not valid UTF-8 (byte {err.start}); expected {what}") from None
    return strip_bom(text)


def read_text(path, what="UTF-8 text"):
    """The whole file as text (leading BOM dropped); missing or unreadable files are one-line errors."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except FileNotFoundError:
        raise BortError(f"{path}: file not found (expected {what})") from None
    except IsADirectoryError:
        raise BortError(f"{path}: is a directory (expected {what})") from None
    except OSError as err:
        raise BortError(f"{path}: cannot read ({err.strerror}; expected {what})") from None
    return decode_utf8(data, path, what)


def read_json(path, what="JSON"):
    """Parse a JSON file; a missing file or invalid JSON is a one-line BortError naming the file and line."""
    text = read_text(path, what)
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise BortError(f"{path}:{err.lineno}: invalid JSON ({err.msg}); expected {what}") from None


def read_lines(path, what="UTF-8 text"):
    """(line number from 1, text without the newline) for each line; a final line without newline is kept."""
    lines = read_text(path, what).split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [(number, line.rstrip("\r")) for number, line in enumerate(lines, 1)]


def read_jsonl(path):
    """(line number, object) for each non-empty line; one-line error naming the line of invalid JSON."""
    records = []
    for number, line in read_lines(path):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise BortError(f"{path}:{number}: invalid JSON ({err.msg} at column {err.colno})") from None
        if not isinstance(record, dict):
            raise BortError(f"{path}:{number}: expected a JSON object, found {type(record).__name__}")
        records.append((number, record))
    if not records:
        raise BortError(f"{path}: empty file; expected one JSON object per line")
    return records


def write_json(path, obj):
    with atomic_write(path) as handle:
        json.dump(obj, handle, indent=2, sort_keys=True)
        handle.write("\n")


class JsonlLogger:
    """Appends one JSON object per line (metrics for scripts/plot_metrics.py); a non-finite number becomes null."""

    def __init__(self, path):
        self.path = path
        if path:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)

    def log(self, **record):
        if not self.path:
            return
        try:
            with open(self.path, "a", encoding="utf-8") as handle:
                handle.write(json.dumps({k: _finite_or_none(v) for k, v in record.items()}, sort_keys=True,
                                        allow_nan=False) + "\n")
        except OSError as err:
            error = cannot_write(self.path, err)
            if error is None:
                raise
            raise BortError(f"{self.path}: cannot append a record ({os.strerror(err.errno)})") from None


def _finite_or_none(value):
    """JSON has no NaN or Infinity: a non-finite number (also inside lists and objects) is written as null."""
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_none(v) for v in value]
    return None if isinstance(value, float) and not math.isfinite(value) else value


def hash_file(path, digest, block=1 << 22):
    """Feed a file's bytes to `digest` (a hashlib object) in blocks; returns the digest."""
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(block), b""):
            digest.update(chunk)
    return digest


def file_sha256(path):
    """SHA-256 hex digest of a file, read in blocks."""
    return hash_file(path, hashlib.sha256()).hexdigest()
