"""File input and output shared by every reader and writer.

Input: `read_text`, `read_lines`, `read_json`, `read_jsonl` decode UTF-8 and drop a leading byte-order mark (the
released MRPC files and files saved by Windows editors start with one), with one-line errors naming the file.
Output: `atomic_write` / `atomic_path` write to a temporary name beside the target and rename when complete.
"""
import contextlib
import errno
import hashlib
import json
import math
import os
import tempfile

from bort.errors import BortError

_DISK_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EIO)


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path in the target's directory; on success rename it to `path`.

    On any exception the temporary file is removed and `path` is left as it was.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
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
        if isinstance(err, OSError) and err.errno in _DISK_ERRORS:  # full disk: one line, no partial file
            raise BortError(f"{path}: cannot write ({os.strerror(err.errno)}); nothing was written") from None
        raise


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
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps({k: _finite_or_none(v) for k, v in record.items()}, sort_keys=True,
                                    allow_nan=False) + "\n")


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
