"""MXNet's NDArray file format (`mx.nd.save`), written with its SHA-256 computed from the bytes as they go out.

A pretraining checkpoint is ~1.2 GB; hashing it by reading the file back after `mx.nd.save` doubles the I/O of
every checkpoint on rank 0 while the other ranks wait. `save_ndarrays` writes the same bytes as `mx.nd.save`
(tests/test_checkpoint_retention.py compares them) and hashes them on the way:

    uint64 0x112 (the list magic), uint64 0 (reserved),
    uint64 n, then n arrays as NDArray::Save writes them (`MXNDArraySaveRawBytes`),
    uint64 n, then n names, each uint64 length + UTF-8 bytes.

One array is serialized at a time, so the extra memory is about one array.
"""
import hashlib
import struct

import bort  # noqa: F401
import mxnet as mx

from bort.io import atomic_path

_LIST_MAGIC = 0x112


def _u64(value):
    return struct.pack("<Q", value)


class HashingWriter:
    """A binary file whose bytes are also fed to a SHA-256 digest."""

    def __init__(self, handle):
        self.handle, self.digest = handle, hashlib.sha256()

    def write(self, data):
        self.digest.update(data)
        self.handle.write(data)


def raw_bytes(array):
    """One NDArray as NDArray::Save writes it (what `pickle` of an NDArray carries)."""
    return array.__getstate__()["handle"]  # a bytearray: written and hashed without another copy


def save_ndarrays(path, arrays):
    """Write {name: NDArray} to `path` atomically, as `mx.nd.save` would; returns the file's SHA-256 (hex)."""
    names = list(arrays)
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        out = HashingWriter(handle)
        out.write(_u64(_LIST_MAGIC) + _u64(0) + _u64(len(names)))
        for name in names:
            value = arrays[name]
            if not isinstance(value, mx.nd.NDArray):
                raise TypeError(f"{name}: expected an NDArray, got {type(value).__name__}")
            out.write(raw_bytes(value))
        out.write(_u64(len(names)))
        for name in names:
            encoded = name.encode("utf-8")
            out.write(_u64(len(encoded)) + encoded)
    return out.digest.hexdigest()
