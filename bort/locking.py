"""A run owns its output directory: an exclusive lock for the run's lifetime, a result set that lands whole.

`hold_directory(path, flag)` takes an exclusive `fcntl.flock` on `<path>/.bort.lock` and keeps it until the
process exits (the kernel drops it on exit, on a crash and on `kill -9`, so a stale lock never blocks anyone;
a normal exit also removes the file).
A second run gets one line naming the directory and the PID of the run holding it. Within one process the
lock is re-entrant, so a library caller can run twice into the same directory. When the run that created the
directory fails before writing anything into it, the directory is removed again at exit.

A fine-tuning run's result files (checkpoint, its JSONs, leaderboard files, `result.json`) form a set:
`retract_result` removes the previous run's `result.json` before anything is rewritten, and the new
`result.json` is written last with the SHA-256 of every file of the set (`file_digests`), so a `result.json`
always describes the files beside it (`verify_result_set` checks that).
"""
import atexit
import contextlib
import errno
import fcntl
import os
import shutil
import socket

from bort.errors import BortError
from bort.io import file_sha256

LOCK_NAME = ".bort.lock"
RESULT_NAME = "result.json"

_held = {}  # realpath -> (fd, created by this process)


def _holder(path):
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read().strip() or "unknown"
    except OSError:
        return "unknown"


def hold_directory(directory, flag="--output_dir"):
    """Create `directory` if needed and lock it for this process's lifetime; BortError when another run holds it.
    Returns False when this process already held it."""
    directory = os.fspath(directory)
    key = os.path.realpath(directory)
    if key in _held:
        return False
    created = not os.path.isdir(directory)
    lock_path = os.path.join(directory, LOCK_NAME)
    while True:
        try:
            os.makedirs(directory, exist_ok=True)
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise BortError(f"{directory}: cannot create the output directory or its lock file ({err.strerror}; "
                            f"{flag})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(fd)
            if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise BortError(f"{directory}: cannot lock the {flag} directory ({err.strerror})") from None
            raise BortError(f"{directory}: {flag} is in use by another run ({_holder(lock_path)}); wait for it to "
                            f"finish or choose another {flag}") from None
        try:  # the holder removes the file when it lets go: a lock on a removed file is no lock, try again
            if os.stat(lock_path).st_ino == os.fstat(fd).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"PID {os.getpid()} on {socket.gethostname()}\n".encode())
    except OSError as err:  # a full disk: no empty lock file (nor a directory this call made) stays behind
        _let_go(key, (fd, created), remove_if_unused=True)
        raise BortError(f"{lock_path}: cannot write the lock file ({err.strerror}; {flag})") from None
    _held[key] = (fd, created)
    return True


def release_directory(directory, remove_if_unused=False):
    """Give the lock back early (it is released at process exit anyway); with `remove_if_unused`, a directory
    this process created and left empty goes too."""
    key = os.path.realpath(os.fspath(directory))
    entry = _held.pop(key, None)
    if entry:
        _let_go(key, entry, remove_if_unused)


def _let_go(key, entry, remove_if_unused):
    """Remove the lock file (and an unused directory this process created), then unlock."""
    fd, created = entry
    if remove_if_unused and created:
        _remove_if_unused(key)
    try:
        os.remove(os.path.join(key, LOCK_NAME))
    except OSError:
        pass
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)


@contextlib.contextmanager
def owned_directory(directory, flag="--output_dir"):
    """Hold `directory` for the duration of a with-block; on an error, remove it again if this call created it
    and nothing was written into it."""
    if not hold_directory(directory, flag):
        yield directory
        return
    try:
        yield directory
    except BaseException:
        release_directory(directory, remove_if_unused=True)
        raise
    release_directory(directory)


def _remove_if_unused(directory):
    """Remove a directory this process created when it holds nothing but the lock file."""
    try:
        if set(os.listdir(directory)) <= {LOCK_NAME}:
            shutil.rmtree(directory)
    except OSError:
        pass


@atexit.register
def _release_all():
    for key in list(_held):
        _let_go(key, _held.pop(key), remove_if_unused=True)


# ---- the result set ----------------------------------------------------------------------------------------------
def retract_result(directory):
    """Remove the previous run's result.json before this run rewrites any file it describes."""
    try:
        os.remove(os.path.join(directory, RESULT_NAME))
    except FileNotFoundError:
        pass


def file_digests(directory, paths):
    """{path relative to `directory` (absolute when outside it): sha256} of the files that exist."""
    out = {}
    root = os.path.realpath(directory)
    for path in paths:
        if not path or not os.path.isfile(path):
            continue
        real = os.path.realpath(path)
        name = os.path.relpath(real, root) if real.startswith(root + os.sep) else real
        out[name] = file_sha256(path)
    return out


def verify_result_set(directory, result):
    """Raise BortError unless every file `result['files']` lists still has the recorded SHA-256."""
    for name, digest in (result.get("files") or {}).items():
        path = name if os.path.isabs(name) else os.path.join(directory, name)
        if not os.path.isfile(path):
            raise BortError(f"{path}: listed in {RESULT_NAME} but missing")
        if file_sha256(path) != digest:
            raise BortError(f"{path}: changed since {os.path.join(directory, RESULT_NAME)} was written "
                            "(it belongs to another run)")
