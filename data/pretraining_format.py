"""Pretraining shard format: pickle-free `.npz` files of flat integer arrays, one row per token or instance.

A shard `part-NNN.npz` holds n masked-LM instances, T tokens and M masked positions. Version 2 (written by
default) stores every array in the smallest unsigned type that holds its values:

| array | dtype | shape | meaning |
|---|---|---|---|
| `input_ids` | ID | (T,) | all instances' (masked) token ids, concatenated |
| `input_lengths` | POS | (n,) | instance i's number of tokens |
| `masked_lm_positions` | POS | (M,) | positions (within the instance) that were selected for prediction |
| `masked_lm_ids` | ID | (M,) | the original token ids at those positions (the labels) |
| `masked_counts` | POS | (n,) | instance i's number of masked positions |
| `next_sentence_labels` | uint8 | (n,) | 1 when segment B is a random continuation (kept for format compatibility) |
| `segment_b_starts` | POS | (n,) | only when all segment ids are 0…0 1…1 per instance, not all 0: where 1 starts |
| `segment_ids` | uint8 | (T,) | only when segment ids are neither all 0 nor of that form |
| `format_version` | int32 | () | 2 |
| `vocab_size`, `pad_id`, `mask_id`, `bos_id`, `eos_id`, `max_seq_length` | int32 | () | vocabulary metadata |

ID is uint8, uint16 (RoBERTa's 50,265 ids) or uint32, whichever first holds `vocab_size - 1`; POS likewise for
`max_seq_length`; no segment array means all segment ids are 0. Version 1 (still read, and written on request)
stores ids, segment ids, positions and labels as int32 and `input_offsets`/`masked_offsets` (n+1 cumulative
counts) as int64: 8 bytes per token instead of 2. In memory every version is an `InstanceBatch` of int32 arrays.

`pad_id` is the id to pad batches with (`</s>` when the vocabulary has no `<pad>`). All arrays are plain
integers, so `np.load(path, allow_pickle=False)` reads them; the file is an uncompressed zip of `.npy` files (what
`np.savez` writes), streamed from disk, with fixed zip timestamps so that equal content gives equal bytes. The
legacy gluon-nlp/Bort format (numpy object arrays, which need unpickling) is read only when the caller opts in.
"""
import collections
import os
import shutil
import tempfile
import zipfile

import numpy as np

from bort.errors import BortError
from bort.io import atomic_path
from data.shard_checks import check, validate_layout, validate_metadata, validate_ranges

FORMAT_VERSION = 2
METADATA_FIELDS = ("vocab_size", "pad_id", "mask_id", "bos_id", "eos_id", "max_seq_length")
LEGACY_FIELDS = ("input_ids", "masked_lm_ids", "masked_lm_positions", "masked_lm_weights",
                 "next_sentence_labels", "segment_ids", "valid_lengths")
# A fixed timestamp for zip entries keeps shards byte-identical between runs.
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)
_COPY_BLOCK = 1 << 20

Instance = collections.namedtuple(
    "Instance", ["input_ids", "segment_ids", "masked_positions", "masked_ids", "next_sentence_label"])


def _offsets(lengths):
    out = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=out[1:])
    return out


def _ragged_take(flat, offsets, indices):
    """Rows `indices` of a ragged array stored as (flat, offsets); returns (flat, offsets)."""
    starts = offsets[indices]
    lengths = offsets[indices + 1] - starts
    new_offsets = _offsets(lengths)
    gather = np.repeat(starts - new_offsets[:-1], lengths) + np.arange(new_offsets[-1], dtype=np.int64)
    return flat[gather], new_offsets


class InstanceBatch:
    """n instances as flat arrays with offsets (the in-memory twin of a shard)."""

    __slots__ = ("input_ids", "segment_ids", "input_offsets", "masked_positions", "masked_ids",
                 "masked_offsets", "next_sentence_labels")

    def __init__(self, input_ids, segment_ids, input_offsets, masked_positions, masked_ids, masked_offsets,
                 next_sentence_labels):
        self.input_ids = np.asarray(input_ids, dtype=np.int32)
        self.segment_ids = np.asarray(segment_ids, dtype=np.int32)
        self.input_offsets = np.asarray(input_offsets, dtype=np.int64)
        self.masked_positions = np.asarray(masked_positions, dtype=np.int32)
        self.masked_ids = np.asarray(masked_ids, dtype=np.int32)
        self.masked_offsets = np.asarray(masked_offsets, dtype=np.int64)
        self.next_sentence_labels = np.asarray(next_sentence_labels, dtype=np.int32)

    def __len__(self):
        return len(self.next_sentence_labels)

    @classmethod
    def from_instances(cls, instances):
        instances = list(instances)

        def cat(arrays):
            return np.concatenate(arrays).astype(np.int32) if arrays else np.zeros(0, np.int32)

        return cls(
            cat([np.asarray(i.input_ids) for i in instances]),
            cat([np.asarray(i.segment_ids) for i in instances]),
            _offsets([len(i.input_ids) for i in instances]),
            cat([np.asarray(i.masked_positions) for i in instances]),
            cat([np.asarray(i.masked_ids) for i in instances]),
            _offsets([len(i.masked_positions) for i in instances]),
            [int(i.next_sentence_label) for i in instances])

    def instance(self, i):
        a, b = self.input_offsets[i], self.input_offsets[i + 1]
        c, d = self.masked_offsets[i], self.masked_offsets[i + 1]
        return Instance(self.input_ids[a:b], self.segment_ids[a:b], self.masked_positions[c:d],
                        self.masked_ids[c:d], self.next_sentence_labels[i])

    def take(self, indices):
        """A new batch with the instances at `indices`, in that order."""
        indices = np.asarray(indices, dtype=np.int64)
        input_ids, input_offsets = _ragged_take(self.input_ids, self.input_offsets, indices)
        segment_ids, _ = _ragged_take(self.segment_ids, self.input_offsets, indices)
        masked_positions, masked_offsets = _ragged_take(self.masked_positions, self.masked_offsets, indices)
        masked_ids, _ = _ragged_take(self.masked_ids, self.masked_offsets, indices)
        return InstanceBatch(input_ids, segment_ids, input_offsets, masked_positions, masked_ids, masked_offsets,
                             self.next_sentence_labels[indices])


def smallest_uint(max_value):
    """The smallest unsigned numpy dtype that holds 0..max_value."""
    for dtype in (np.uint8, np.uint16, np.uint32):
        if max_value <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    return np.dtype(np.uint64)


def _narrow(name, array, dtype):
    """`array` as `dtype`, refusing values the type cannot hold (a cast would wrap them silently)."""
    info = np.iinfo(dtype)
    if len(array) and (array.min() < info.min or array.max() > info.max):
        raise ValueError(f"{name}: values {array.min()}..{array.max()} do not fit {np.dtype(dtype).name}")
    return array.astype(dtype, copy=False)


def two_segment_ids(input_offsets, b_starts):
    """Segment ids (int32, flat) that are 0 before `b_starts[i]` and 1 from there to instance i's end."""
    total = int(input_offsets[-1])
    delta = np.zeros(total + 1, dtype=np.int32)
    starts = input_offsets[:-1] + b_starts
    has_b = starts < input_offsets[1:]
    delta[starts[has_b]] += 1
    delta[input_offsets[1:][has_b]] -= 1
    return np.cumsum(delta[:total], dtype=np.int32)


class ShardWriter:
    """Appends instance batches to a shard without holding them in memory; `close()` writes the `.npz`.

    Rows are spooled to anonymous temporary files beside the shard and streamed into the zip at the end,
    through `bort.io.atomic_path`: the shard appears complete or not at all. Use as a context manager;
    an exception discards everything. `format_version` 2 (the default) or 1 (the int32 layout).
    """

    def __init__(self, path, metadata, format_version=FORMAT_VERSION):
        missing = [k for k in METADATA_FIELDS if k not in metadata]
        if missing:
            raise ValueError(f"shard metadata lacks {missing}")
        if format_version not in (1, 2):
            raise ValueError(f"format_version {format_version}: expected 1 or 2")
        self.path = os.fspath(path)
        self.metadata = {k: int(metadata[k]) for k in METADATA_FIELDS}
        self.format_version = format_version
        if format_version == 1:
            self._columns = {"input_ids": np.int32, "segment_ids": np.int32, "input_offsets": np.int64,
                             "masked_lm_positions": np.int32, "masked_lm_ids": np.int32,
                             "masked_offsets": np.int64, "next_sentence_labels": np.int32}
        else:
            ids = smallest_uint(self.metadata["vocab_size"] - 1)
            positions = smallest_uint(self.metadata["max_seq_length"])
            self._columns = {"input_ids": ids, "input_lengths": positions, "masked_lm_positions": positions,
                             "masked_lm_ids": ids, "masked_counts": positions, "next_sentence_labels": np.uint8,
                             "segment_b_starts": positions, "segment_ids": np.uint8}
        directory = os.path.dirname(os.path.abspath(self.path))
        self._spool = {name: tempfile.TemporaryFile(dir=directory) for name in self._columns}
        self._count = dict.fromkeys(self._columns, 0)
        self._tokens = self._masked = 0
        self._segments_nonzero, self._segments_two_part = False, True  # version 2: the segment array to keep
        if format_version == 1:
            self._write("input_offsets", np.zeros(1, np.int64))
            self._write("masked_offsets", np.zeros(1, np.int64))
        self.num_instances = 0

    def _write(self, name, array):
        array = _narrow(name, np.asarray(array), self._columns[name])
        self._spool[name].write(np.ascontiguousarray(array).tobytes())
        self._count[name] += len(array)

    def append(self, batch):
        if not len(batch):
            return
        if self.format_version == 1:
            self._write("input_offsets", batch.input_offsets[1:] + self._tokens)
            self._write("masked_offsets", batch.masked_offsets[1:] + self._masked)
            self._write("segment_ids", batch.segment_ids)
        else:
            lengths = np.diff(batch.input_offsets)
            self._write("input_lengths", lengths)
            self._write("masked_counts", np.diff(batch.masked_offsets))
            self._append_segments(batch, lengths)
        self._write("input_ids", batch.input_ids)
        self._write("masked_lm_positions", batch.masked_positions)
        self._write("masked_lm_ids", batch.masked_ids)
        self._write("next_sentence_labels", batch.next_sentence_labels)
        self._tokens += int(batch.input_offsets[-1])
        self._masked += int(batch.masked_offsets[-1])
        self.num_instances += len(batch)

    def _append_segments(self, batch, lengths):
        """Spool both segment forms; close() keeps none (all 0), `segment_b_starts` or `segment_ids`."""
        segments = batch.segment_ids
        self._write("segment_ids", segments)
        ones = np.concatenate([[0], np.cumsum(segments, dtype=np.int64)])
        b_starts = lengths - (ones[batch.input_offsets[1:]] - ones[batch.input_offsets[:-1]])
        self._segments_nonzero |= bool(ones[-1])
        if self._segments_two_part:
            self._segments_two_part = bool(np.all(b_starts >= 0)) and np.array_equal(
                two_segment_ids(batch.input_offsets, np.maximum(b_starts, 0)), segments)
            self._write("segment_b_starts", np.maximum(b_starts, 0))

    def _stored_columns(self):
        names = list(self._columns)
        if self.format_version == 2:
            keep = None if not self._segments_nonzero else (
                "segment_b_starts" if self._segments_two_part else "segment_ids")
            names = [n for n in names if not n.startswith("segment_") or n == keep]
        return names

    def _entry(self, zf, name):
        info = zipfile.ZipInfo(name + ".npy", date_time=_ZIP_DATE)
        info.compress_type = zipfile.ZIP_STORED
        info.external_attr = 0o644 << 16
        return zf.open(info, "w", force_zip64=True)

    def close(self):
        """Write the shard atomically and release the spool files."""
        try:
            with atomic_path(self.path) as tmp:
                with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
                    for name in self._stored_columns():
                        header = {"descr": np.lib.format.dtype_to_descr(np.dtype(self._columns[name])),
                                  "fortran_order": False, "shape": (self._count[name],)}
                        spool = self._spool[name]
                        spool.flush()
                        spool.seek(0)
                        with self._entry(zf, name) as out:
                            np.lib.format.write_array_header_1_0(out, header)
                            shutil.copyfileobj(spool, out, _COPY_BLOCK)
                    scalars = dict(self.metadata, format_version=self.format_version)
                    for name in ("format_version",) + METADATA_FIELDS:
                        with self._entry(zf, name) as out:
                            np.lib.format.write_array(out, np.array(scalars[name], dtype=np.int32),
                                                      allow_pickle=False)
        finally:
            self.abort()

    def abort(self):
        for spool in self._spool.values():
            spool.close()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:
            self.abort()
        return False


def write_shard(path, batch, metadata, format_version=FORMAT_VERSION):
    """Write one InstanceBatch as a shard (atomic)."""
    with ShardWriter(path, metadata, format_version) as writer:
        writer.append(batch)


class PretrainingShard:
    """A loaded shard: `len(shard)`, `shard[i] -> Instance`, `shard.lengths`, `shard.metadata`."""

    def __init__(self, batch, metadata, path=None, legacy=False):
        self.batch = batch
        self.metadata = metadata
        self.path = path
        self.legacy = legacy
        self.lengths = np.diff(batch.input_offsets).astype(np.int32)

    def __len__(self):
        return len(self.batch)

    def __getitem__(self, index):
        n = len(self.batch)
        if not -n <= index < n:
            raise IndexError(f"instance {index} out of range for a shard of {n}")
        return self.batch.instance(index % n)

    def __iter__(self):
        return (self.batch.instance(i) for i in range(len(self.batch)))

    @property
    def num_tokens(self):
        return int(self.batch.input_offsets[-1])


def _one_line(err):
    return " ".join(str(err).split())


def _integer(path, npz, name, ndim=1):
    array = npz[name]
    check(path, array.dtype.kind in "iu" and array.ndim == ndim,
          f"{name}: expected a {ndim}-d integer array, found {array.dtype} with shape {array.shape}")
    return array


def _read_current(path, npz):
    version = int(_integer(path, npz, "format_version", ndim=0))
    check(path, 1 <= version <= FORMAT_VERSION,
          f"format_version {version} is not one this reader knows (1..{FORMAT_VERSION}); update the code")
    if version == 1:
        batch = InstanceBatch(*(_integer(path, npz, name) for name in (
            "input_ids", "segment_ids", "input_offsets", "masked_lm_positions", "masked_lm_ids", "masked_offsets",
            "next_sentence_labels")))
    else:
        input_offsets = _offsets(_integer(path, npz, "input_lengths"))
        if "segment_b_starts" in npz.files:
            b_starts = _integer(path, npz, "segment_b_starts").astype(np.int64)
            check(path, b_starts.shape == input_offsets[1:].shape and np.all(b_starts >= 0)
                  and np.all(b_starts <= np.diff(input_offsets)),
                  "segment_b_starts: expected one start per instance, within the instance")
            segment_ids = two_segment_ids(input_offsets, b_starts)
        elif "segment_ids" in npz.files:
            segment_ids = _integer(path, npz, "segment_ids")
        else:
            segment_ids = np.zeros(input_offsets[-1], dtype=np.int32)
        batch = InstanceBatch(_integer(path, npz, "input_ids"), segment_ids, input_offsets,
                              _integer(path, npz, "masked_lm_positions"), _integer(path, npz, "masked_lm_ids"),
                              _offsets(_integer(path, npz, "masked_counts")),
                              _integer(path, npz, "next_sentence_labels"))
    metadata = {name: int(_integer(path, npz, name, ndim=0)) for name in METADATA_FIELDS if name in npz.files}
    metadata["format_version"] = version
    return batch, metadata


def _read_legacy(path):
    with np.load(path, allow_pickle=True) as npz:  # the caller opted in explicitly
        fields = {name: npz[name] for name in LEGACY_FIELDS}
    n = len(fields["valid_lengths"])
    rows = []
    for i in range(n):
        length = int(fields["valid_lengths"][i])
        weights = np.asarray(fields["masked_lm_weights"][i], dtype=np.float32)
        keep = weights > 0
        rows.append(Instance(
            np.asarray(fields["input_ids"][i], dtype=np.int32)[:length],
            np.asarray(fields["segment_ids"][i], dtype=np.int32)[:length],
            np.asarray(fields["masked_lm_positions"][i], dtype=np.int32)[keep],
            np.asarray(fields["masked_lm_ids"][i], dtype=np.int32)[keep],
            int(np.asarray(fields["next_sentence_labels"][i]).reshape(-1)[0])))
    return InstanceBatch.from_instances(rows), {"format_version": 0}


def load_shard(path, allow_legacy_pickle=False):
    """Read a shard written by `ShardWriter` (or, with `allow_legacy_pickle=True`, a gluon-nlp/Bort one).

    Any unreadable, truncated or inconsistent file raises a one-line BortError naming it.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise BortError(f"{path}: shard file not found")
    try:
        with np.load(path, allow_pickle=False) as npz:
            names = set(npz.files)
            if "format_version" in names:
                batch, metadata = _read_current(path, npz)
                legacy = False
            elif set(LEGACY_FIELDS) <= names:
                if not allow_legacy_pickle:
                    raise BortError(
                        f"{path}: legacy gluon-nlp/Bort shard of pickled numpy object arrays; loading it can run "
                        "code from the file, so it is refused unless you pass --allow_legacy_pickle "
                        "(or regenerate it with create_pretraining_data.py)")
                legacy = True
            else:
                missing = sorted({"input_ids", "format_version", "masked_lm_positions"} - names)
                raise BortError(f"{path}: not a pretraining shard (arrays {missing} are missing)")
        if legacy:
            batch, metadata = _read_legacy(path)
    except BortError:
        raise
    except (OSError, ValueError, EOFError, KeyError, IndexError, TypeError, AttributeError,
            zipfile.BadZipFile) as err:
        raise BortError(f"{path}: corrupt or truncated shard ({type(err).__name__}: {_one_line(err)})") from None
    validate_layout(path, batch)
    validate_ranges(path, batch, metadata)
    return PretrainingShard(batch, metadata, path=path, legacy=legacy)


def read_shard_metadata(path, allow_legacy_pickle=False):
    """A shard's metadata without reading its instances: vocab_size, max_seq_length, ... (legacy shards, which
    have none, are loaded and measured: vocab_size is then the smallest vocabulary that holds their ids)."""
    path = os.fspath(path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            if "format_version" in npz.files:
                metadata = {name: int(_integer(path, npz, name, ndim=0)) for name in METADATA_FIELDS
                            if name in npz.files}
                validate_metadata(path, metadata)
                return metadata
    except BortError:
        raise
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as err:
        raise BortError(f"{path}: corrupt or truncated shard ({type(err).__name__}: {_one_line(err)})") from None
    shard = load_shard(path, allow_legacy_pickle=allow_legacy_pickle)
    ids = np.concatenate([shard.batch.input_ids, shard.batch.masked_ids])
    return {"min_vocab_size": int(ids.max()) + 1 if len(ids) else 0,
            "max_seq_length": int(shard.lengths.max()) if len(shard) else 0}
