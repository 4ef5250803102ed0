"""Which files a run reads: comma-separated paths, globs and directories expanded to files (`expand_paths`,
`list_shards`), and whether a set of pretraining shards fits a model (`check_shards_fit`)."""
import glob
import os

from bort.errors import BortError
from data.pretraining_format import read_shard_metadata


def expand_paths(spec, directory_pattern="*", what="files"):
    """Expand comma-separated paths, globs and directories into a de-duplicated list of files.

    Globs and directories expand in sorted order. Raises a one-line BortError for an item that matches
    nothing.
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
        elif glob.has_magic(path):
            matches = sorted(p for p in glob.glob(path) if os.path.isfile(p))
            if not matches:
                raise BortError(f"{item}: no {what} match this pattern")
        elif os.path.isfile(path):
            matches = [path]
        else:
            raise BortError(f"{item}: no such file or directory")
        for match in matches:
            if match not in seen:
                seen.add(match)
                found.append(match)
    return found


def list_shards(pattern_or_dir):
    """Shard files from comma-separated paths, globs or directories (a directory means `dir/*.npz`)."""
    return expand_paths(pattern_or_dir, directory_pattern="*.npz", what="shard files")


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
