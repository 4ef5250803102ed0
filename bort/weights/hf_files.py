"""Hugging Face checkpoint files, read and written without torch or the safetensors package.

`read_safetensors` / `write_safetensors`: the format is an 8-byte little-endian header length, a JSON header, then
raw little-endian buffers. `read_hf_weights` reads a local HF directory's `model.safetensors`, sharded safetensors
(`model.safetensors.index.json`), or `pytorch_model.bin` (and its shards; only these need torch).
"""
import json
import math
import os
import struct

import numpy as np

from bort.errors import BortError
from bort.io import atomic_path, read_json

SAFETENSORS_DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4", "I16": "<i2",
                      "I8": "i1", "U8": "u1", "U16": "<u2", "U32": "<u4", "U64": "<u8", "BOOL": "?"}
_NUMPY_TO_SAFETENSORS = {np.dtype(v): k for k, v in SAFETENSORS_DTYPES.items()}
_MAX_HEADER = 100 * 1024 * 1024


def read_safetensors(path):
    """{name: numpy array} from a safetensors file; BF16 becomes float32. One-line errors on bad files."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise BortError(f"{path}: safetensors file not found")
    size = os.path.getsize(path)
    with open(path, "rb") as handle:
        start = handle.read(8)
        if len(start) < 8:
            raise BortError(f"{path}: not a safetensors file (shorter than its 8-byte header length)")
        (header_len,) = struct.unpack("<Q", start)
        if header_len > min(size - 8, _MAX_HEADER):
            raise BortError(f"{path}: not a safetensors file or truncated (header of {header_len} bytes, "
                            f"file of {size} bytes)")
        try:
            header = json.loads(handle.read(header_len).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise BortError(f"{path}: not a safetensors file (its header is not JSON)") from None
    if not isinstance(header, dict):
        raise BortError(f"{path}: not a safetensors file (its header is not a JSON object)")
    data_len = size - 8 - header_len
    data = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + header_len) if data_len else np.zeros(0, np.uint8)
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype, shape, begin, end = _header_entry(path, name, info)
        itemsize = 2 if dtype == "BF16" else np.dtype(SAFETENSORS_DTYPES.get(dtype, "u1")).itemsize
        if dtype != "BF16" and dtype not in SAFETENSORS_DTYPES:
            raise BortError(f"{path}: tensor {name!r}: unsupported dtype {dtype}")
        if not 0 <= begin <= end <= data_len:
            raise BortError(f"{path}: tensor {name!r} lies outside the file (bytes {begin}..{end} of "
                            f"{data_len}); the file is truncated")
        if end - begin != math.prod(shape) * itemsize:
            raise BortError(f"{path}: tensor {name!r}: {end - begin} bytes do not hold shape {shape} of {dtype}")
        raw = data[begin:end]
        if dtype == "BF16":
            tensors[name] = (raw.view("<u2").astype(np.uint32) << 16).view(np.float32).reshape(shape)
        else:
            tensors[name] = np.array(raw.view(SAFETENSORS_DTYPES[dtype]).reshape(shape))
    return tensors


def _is_count(value):
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _header_entry(path, name, info):
    """(dtype, shape, begin, end) of one safetensors header entry, with every field's type checked."""
    expected = "an object with dtype (string), shape (list of non-negative integers) and data_offsets " \
               "(two non-negative integers)"
    if not isinstance(info, dict) or not {"dtype", "shape", "data_offsets"} <= set(info):
        raise BortError(f"{path}: tensor {name!r}: header entry must be {expected}")
    dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    if not isinstance(dtype, str):
        raise BortError(f"{path}: tensor {name!r}: dtype {dtype!r} is not a string; expected {expected}")
    if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
        raise BortError(f"{path}: tensor {name!r}: shape {shape!r}; expected a list of non-negative integers")
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_count(o) for o in offsets):
        raise BortError(f"{path}: tensor {name!r}: data_offsets {offsets!r}; expected two non-negative integers")
    return dtype, tuple(shape), offsets[0], offsets[1]


def write_safetensors(path, tensors, metadata=None):
    """Write {name: numpy array} as a safetensors file, atomically."""
    header, offset, ordered = {}, 0, []
    for name in sorted(tensors):
        array = np.ascontiguousarray(tensors[name])
        if array.dtype.byteorder == ">":
            array = array.astype(array.dtype.newbyteorder("<"))
        if array.dtype not in _NUMPY_TO_SAFETENSORS:
            raise BortError(f"{path}: cannot store {name!r} of dtype {array.dtype} in safetensors")
        header[name] = {"dtype": _NUMPY_TO_SAFETENSORS[array.dtype], "shape": list(array.shape),
                        "data_offsets": [offset, offset + array.nbytes]}
        offset += array.nbytes
        ordered.append(array)
    header["__metadata__"] = {str(k): str(v) for k, v in (metadata or {}).items()}
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            handle.write(struct.pack("<Q", len(raw)))
            handle.write(raw)
            for array in ordered:
                handle.write(array.tobytes())


def _read_torch_bin(path):
    try:
        import torch  # noqa: PLC0415 - optional, only for pytorch_model.bin
    except ImportError:
        raise BortError(f"{path}: reading pytorch_model.bin needs torch (pip install torch); "
                        "or save the checkpoint as model.safetensors") from None
    import pickle  # noqa: PLC0415

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # torch's own message suggests weights_only=False, i.e. running the file's code: never pass that on.
        raise BortError(f"{path}: refused: the file holds Python objects other than tensors, and loading them could "
                        "run code from the file; convert a checkpoint you trust to model.safetensors instead") \
            from None
    except Exception as err:  # noqa: BLE001 - any failure means the file is not a usable checkpoint
        first = str(err).splitlines()[0] if str(err) else ""
        if "weights_only" in first:
            first = "it holds objects other than tensors"
        raise BortError(f"{path}: not a readable PyTorch state dict ({type(err).__name__}: {first})") from None
    if not isinstance(state, dict):
        raise BortError(f"{path}: expected a state dict of named tensors, found {type(state).__name__}")
    out = {}
    for name, tensor in state.items():
        if hasattr(tensor, "numpy"):
            tensor = tensor.detach().cpu()
            out[name] = (tensor.float() if tensor.is_floating_point() else tensor).numpy()
    return out


def read_hf_weights(hf_dir):
    """{HF name: numpy array} from model.safetensors (or its shards) or pytorch_model.bin (or its shards)."""
    for single, index, reader in (("model.safetensors", "model.safetensors.index.json", read_safetensors),
                                  ("pytorch_model.bin", "pytorch_model.bin.index.json", _read_torch_bin)):
        if os.path.isfile(os.path.join(hf_dir, single)):
            return reader(os.path.join(hf_dir, single))
        index_path = os.path.join(hf_dir, index)
        if os.path.isfile(index_path):
            tensors = {}
            for shard in _index_shards(hf_dir, index_path):
                tensors.update(reader(shard))
            return tensors
    raise BortError(f"{hf_dir}: no model.safetensors or pytorch_model.bin (or their .index.json) found")


def _index_shards(hf_dir, index_path):
    """The shard files an index.json names: plain file names inside `hf_dir`, each existing."""
    index = read_hf_json(index_path)
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise BortError(f"{index_path}: expected a JSON object with a non-empty 'weight_map' object "
                        "(tensor name -> shard file)")
    root = os.path.realpath(hf_dir)
    shards = []
    for name, shard in sorted(weight_map.items()):
        if not isinstance(shard, str) or not shard:
            raise BortError(f"{index_path}: weight_map[{name!r}] = {shard!r}; expected a shard file name")
        path = os.path.join(hf_dir, shard)
        if os.path.isabs(shard) or os.path.dirname(os.path.realpath(path)) != root:
            raise BortError(f"{index_path}: weight_map[{name!r}] = {shard!r} points outside {hf_dir}; expected "
                            "a file name in the same directory")
        if path not in shards:
            shards.append(path)
    return sorted(shards)


def read_hf_json(path):
    """A config.json or index.json of an HF directory; one-line errors naming the file."""
    return read_json(path, "an HF config or index file")
