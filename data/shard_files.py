"""Which files a run reads: comma-separated paths, globs and directories expanded to files (`expand_paths`,
`list_shards`), and whether a set of pretraining shards fits a model (`check_shards_fit`)."""
import glob
import json
import os

from bort.errors import BortError
from data.pretraining_format import read_shard_metadata

SUMMARY_NAME = "summary.json"  # what create_pretraining_data writes beside its shards, listing them


def expand_paths(spec, directory_pattern="*", what="files"):
    """Expand comma-separated paths, globs and directories into a de-duplicated list of files.

    Globs and directories expand in sorted order. A path that exists is taken literally, glob characters and
    all (`part-[0].npz` is that file, never `part-0.npz`); so is the existing directory part of a glob. Raises a
    one-line BortError for an item that matches nothing.
    """
    items = [item.strip() for item in str(spec).split(",") if item.strip()]
    if not items:
        raise BortError(f"no {what} given (expected comma-separated paths or globs)")
    found, seen = [], set()
    for item in items:
        path = os.path.expanduser(item)
        if os.path.isdir(path):
            matches = sorted(p for p in glob.glob(os.path.join(glob.escape(path), directory_pattern))
                             if os.path.isfile(p))
            if not matches:
                raise BortError(f"{item}: directory holds no {what} matching {directory_pattern}")
        elif os.path.isfile(path):
            matches = [path]
        elif glob.has_magic(path):
            matches = sorted(p for p in glob.glob(_escape_existing_directory(path)) if os.path.isfile(p))
            if not matches:
                raise BortError(f"{item}: no {what} match this pattern")
        else:
            raise BortError(f"{item}: no such file or directory")
        for match in matches:
            if match not in seen:
                seen.add(match)
                found.append(match)
    return found


def _escape_existing_directory(pattern):
    """The pattern with its longest existing directory prefix escaped: `run[1]/*.npz` globs inside `run[1]`."""
    directory, rest = pattern, []
    while directory and not os.path.isdir(directory):
        directory, tail = os.path.split(directory)
        if not tail:
            break
        rest.insert(0, tail)
    if not directory or not os.path.isdir(directory):
        return pattern
    return os.path.join(glob.escape(directory), *rest)


def check_summary(directory, shards):
    """Refuse shards of `directory` that its summary.json does not list although they are older than it: shards
    an earlier run with more --num_outputs left behind (shards added after the summary are taken as meant)."""
    summary_path = os.path.join(directory, SUMMARY_NAME)
    try:
        with open(summary_path, encoding="utf-8") as handle:
            listed = json.load(handle).get("shards")
        written = os.path.getmtime(summary_path)
    except (OSError, ValueError, AttributeError):
        return
    if not isinstance(listed, list):
        return
    def older(path):
        try:
            return os.path.getmtime(path) < written
        except OSError:  # gone since it was listed: opening it will say so
            return False

    stale = [os.path.basename(p) for p in shards if os.path.basename(p) not in listed and older(p)]
    if stale:
        raise BortError(f"{directory}: {', '.join(stale[:3])}{', …' if len(stale) > 3 else ''} predate its "
                        f"{SUMMARY_NAME} but are not among the {len(listed)} shard(s) it lists: left by an earlier "
                        "run with more --num_outputs; remove them, or name the shards to train on")


def list_shards(pattern_or_dir):
    """Shard files from comma-separated paths, globs or directories (a directory means `dir/*.npz`, checked
    against its summary.json by `check_summary`)."""
    paths = expand_paths(pattern_or_dir, directory_pattern="*.npz", what="shard files")
    for item in str(pattern_or_dir).split(","):
        directory = os.path.expanduser(item.strip())
        if directory and os.path.isdir(directory):
            inside = os.path.normpath(directory)
            check_summary(directory, [p for p in paths if os.path.normpath(os.path.dirname(p)) == inside])
    return paths


def check_shards_fit(paths, max_length, vocab_size=None, allow_legacy_pickle=False, what="--data"):
    """Refuse shards a model cannot train on: shards of different vocabularies, a vocabulary other than
    `vocab_size` (the model's, when given), instances longer than the model's `max_length` positions. Reads only
    each shard's metadata; the pretrainer calls it with the student's config before training. Returns the
    shards' vocab_size (None for legacy shards)."""
    first = None
    for path in paths:
        meta = read_shard_metadata(path, allow_legacy_pickle)
        size = meta.get("vocab_size")
        if size is not None:
            if first is None:
                first = (path, size)
            elif size != first[1]:
                raise BortError(f"{path}: vocab_size {size} differs from {first[0]}'s {first[1]}; all "
                                f"{what} shards must come from one vocabulary")
            if vocab_size is not None and size != vocab_size:
                raise BortError(f"{path}: vocab_size {size} differs from the model's {vocab_size}")
        elif vocab_size is not None and meta.get("min_vocab_size", 0) > vocab_size:
            raise BortError(f"{path}: token id {meta['min_vocab_size'] - 1} is outside the model's vocabulary of "
                            f"{vocab_size}")
        longest = meta.get("max_seq_length")
        if longest is not None and longest > max_length:
            raise BortError(f"{path}: instances of up to {longest} tokens (max_seq_length) do not fit the model's "
                            f"{max_length} positions; regenerate the shards with --max_seq_length {max_length} "
                            "or smaller")
    return first[1] if first else None
