"""The checks a teacher cache (bort.pretrain.teacher_cache) passes when it is opened, as shards pass theirs.

A damaged cache must never reach the loss: token ids beyond the vocabulary crash MXNet's indexing (a
segmentation fault), a NaN spreads through every weight. `check_meta` checks the decoded `meta_json`,
`check_values` every array, vectorised (about 60 ms for a 40 MB cache: docs/results/reliability.md).
"""
import math

import numpy as np

from bort.errors import BortError

# meta_json's fields that are read, and their types (bool is excluded from the numbers: JSON true is not a k).
_META_TYPES = {"k": (int, "an integer"), "num_positions": (int, "an integer"), "num_instances": (int, "an integer"),
               "vocab_size": (int, "an integer"), "temperature": ((int, float), "a number"),
               "shard": (str, "a string"), "shard_sha256": (str, "a string")}


def check_meta(path, meta):
    """One-line error unless `meta` (a cache's decoded meta_json) has every field read, with its type and range."""
    if not isinstance(meta, dict):
        raise BortError(f"{path}: meta_json: expected a JSON object, found {type(meta).__name__}")
    for name, (kind, what) in _META_TYPES.items():
        value = meta.get(name)
        if isinstance(value, bool) or not isinstance(value, kind):
            raise BortError(f"{path}: meta_json: '{name}' must be {what}, found {value!r}"[:300])
    for name, low in (("k", 1), ("vocab_size", 1), ("num_positions", 0), ("num_instances", 0)):
        if meta[name] < low:
            raise BortError(f"{path}: meta_json: '{name}' must be >= {low}, found {meta[name]}")
    if not (math.isfinite(meta["temperature"]) and meta["temperature"] > 0):
        raise BortError(f"{path}: meta_json: 'temperature' must be positive, found {meta['temperature']}")
    if meta["k"] > meta["vocab_size"]:
        raise BortError(f"{path}: meta_json: 'k' {meta['k']} exceeds 'vocab_size' {meta['vocab_size']}")


def check_values(path, arrays, vocab_size, temperature, rows_per_chunk=1 << 16):
    """One-line error naming the file, the array and the first bad row unless: topk_ids are integers in
    [0, vocab_size); topk_logits, log_normalizer, rest_mass are finite floats; log_normalizer >= the log-sum-exp
    of the row's top-k logits / T (the whole vocabulary's normalizer cannot be below its top-k's); rest_mass is in
    [0, 1]. Vectorised, in chunks of rows (bounded temporary memory)."""
    ids, logits, log_norm, rest = (arrays[name] for name in ("topk_ids", "topk_logits", "log_normalizer",
                                                            "rest_mass"))
    if ids.dtype.kind not in "iu":
        raise BortError(f"{path}: topk_ids: expected integer token ids, found dtype {ids.dtype}")
    for name in ("topk_logits", "log_normalizer", "rest_mass"):
        if arrays[name].dtype.kind != "f":
            raise BortError(f"{path}: {name}: expected floating-point values, found dtype {arrays[name].dtype}")

    def first(offset, bad, name, what):
        row = offset + int(np.flatnonzero(bad.reshape(len(bad), -1).any(axis=1))[0])
        raise BortError(f"{path}: {name}: row {row}: {what} (a damaged cache; rewrite it with "
                        f"scripts/cache_teacher.py --overwrite)")

    # float32 rounding of the stored normalizer and of this log-sum-exp: a few ulps of the larger magnitude.
    for start in range(0, len(ids), rows_per_chunk):
        part = slice(start, start + rows_per_chunk)
        chunk_ids = ids[part]
        if chunk_ids.size and (int(chunk_ids.min()) < 0 or int(chunk_ids.max()) >= vocab_size):
            first(start, (chunk_ids < 0) | (chunk_ids >= vocab_size), "topk_ids",
                  f"token id outside the vocabulary [0, {vocab_size})")
        for name, values in (("topk_logits", logits[part]), ("log_normalizer", log_norm[part]),
                             ("rest_mass", rest[part])):
            finite = np.isfinite(values)
            if not finite.all():
                first(start, ~finite, name, "not a finite number")
        chunk_rest = rest[part]
        if chunk_rest.size and (chunk_rest.min() < 0 or chunk_rest.max() > 1 + 1e-4):
            first(start, (chunk_rest < 0) | (chunk_rest > 1 + 1e-4), "rest_mass", "outside [0, 1]")
        scaled = logits[part].astype(np.float32) / np.float32(temperature)
        shift = scaled.max(axis=1)
        lse = shift + np.log(np.exp(scaled - shift[:, None]).sum(axis=1))
        chunk_norm = log_norm[part]
        below = chunk_norm < lse - (1e-4 + 1e-5 * np.abs(lse))
        if below.any():
            first(start, below, "log_normalizer", "below the log-sum-exp of its own top-k logits")
