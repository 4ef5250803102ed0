"""Agora's files on disk, read with suspicion: every state file's structure is checked, paths never lead out of
the output directory, and a finished trial is trusted only while its command and its result set are unchanged.

- `read_record(path, what, fields)`: a JSON object with the given fields and types; a truncated file, a list where
  an object is expected, a missing key or a string score is one line `<path>: ...` naming the field.
- `inside(root, path, where)`: `path` resolved (symlinks too) must lie under `root`.
- `trial_trust(folder, command)`: None when a trial's recorded command equals `command` and its `result.json` and
  the files it lists still have the recorded SHA-256; otherwise the reason it cannot be reused.
"""
import os

from bort.errors import BortError
from bort.io import file_sha256, read_json
from bort.locking import verify_result_set

NUMBER = "a number"
OPTIONAL_NUMBER = "a number or null"
TEXT = "a string"
LIST = "a list"
OBJECT = "an object"
INTEGER = "an integer"
OPTIONAL_INTEGER = "an integer or null"


def _is(value, kind):
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    return {NUMBER: number, OPTIONAL_NUMBER: value is None or number, TEXT: isinstance(value, str),
            LIST: isinstance(value, list), OBJECT: isinstance(value, dict),
            INTEGER: isinstance(value, int) and not isinstance(value, bool),
            OPTIONAL_INTEGER: value is None or (isinstance(value, int) and not isinstance(value, bool))}[kind]


def check_fields(record, fields, where):
    """Raise BortError unless `record` is a dict whose `fields` ({name: kind above}) have the right types."""
    if not isinstance(record, dict):
        raise BortError(f"{where}: expected a JSON object, found {type(record).__name__}")
    for name, kind in fields.items():
        if name not in record:
            raise BortError(f"{where}: field {name!r} missing")
        if not _is(record[name], kind):
            raise BortError(f"{where}: field {name!r}: expected {kind}, found {type(record[name]).__name__} "
                            f"{str(record[name])[:40]!r}")
    return record


def read_record(path, what, fields):
    """A JSON object from `path` with `fields` ({name: kind}) checked; one-line BortError otherwise."""
    return check_fields(read_json(path, what), fields, path)


def inside(root, path, where):
    """`path` (relative paths are taken from the working directory) if it resolves to a place under `root`;
    one-line BortError otherwise."""
    real, base = os.path.realpath(path), os.path.realpath(root)
    if real != base and not real.startswith(base + os.sep):
        raise BortError(f"{where}: {path!r} lies outside {root}; refusing to follow it")
    return path


STATUS_FIELDS = {"status": TEXT, "command": LIST}
RESULT_FIELDS = {"score": OPTIONAL_NUMBER, "checkpoint": TEXT, "dev": OBJECT, "files": OBJECT,
                 "best_epoch": OPTIONAL_INTEGER}


def read_status(folder):
    return read_record(os.path.join(folder, "status.json"), "a trial's status.json", STATUS_FIELDS)


def read_result(folder):
    """A finished trial's result.json, checked; its checkpoint must lie inside the trial's folder."""
    path = os.path.join(folder, "result.json")
    result = read_record(path, "a trial's result.json", RESULT_FIELDS)
    for segment, metrics in result["dev"].items():
        check_fields(metrics, {name: NUMBER for name in (metrics if isinstance(metrics, dict) else {})},
                     f"{path}: field 'dev'.{segment}")
    if result["checkpoint"]:
        inside(folder, result["checkpoint"], f"{path}: field 'checkpoint'")
    return result


def trial_flags(command):
    """The flags of a trial's command line that decide its result: argv[2:] (the Python and script paths may
    differ between checkouts) without `--gpu N` (which device ran it)."""
    flags, i = [], 2
    while i < len(command):
        if command[i] == "--gpu":
            i += 2
            continue
        flags.append(str(command[i]))
        i += 1
    return flags


def trial_trust(folder, command):
    """None when the trial in `folder` may be reused for `command` (`trial_flags` compared); else why not."""
    status = read_status(folder)
    if trial_flags(status["command"]) != trial_flags(command):
        return "it was run with another command"
    result_path = os.path.join(folder, "result.json")
    if not os.path.isfile(result_path):
        return None
    if status.get("result_sha256") != file_sha256(result_path):
        return "its result.json changed after the trial wrote it"
    try:
        verify_result_set(folder, read_result(folder))
    except BortError as err:
        return f"its result set changed ({err})"
    return None
