"""Top-k teacher cache: the teacher's output at every masked position of a pretraining shard, computed once.

The masks are fixed in the shards and the teacher runs without dropout, so its output at a masked position is
the same every epoch, for every student and every sweep. `scripts/cache_teacher.py` runs the teacher once over
the shards (each Horovod rank its own shards: shard i goes to rank i mod size) and writes, for shard
`part-000.npz`, the file `part-000.npz.topk` into the cache directory, or beside the shard with `beside`
(the `.topk` suffix keeps it out of the `*.npz` shard globs). The pretrainer's `--teacher_cache` then trains from
these files instead of running the teacher; the loss is in bort.pretrain.topk_distill.

A cache file is an uncompressed `.npz` (zip of `.npy`, fixed timestamps, read with `allow_pickle=False`), written
atomically. Its M rows are the shard's masked positions in shard order (instance i's rows are
`masked_offsets[i]:masked_offsets[i+1]` of the shard):

| array | dtype | shape | meaning |
|---|---|---|---|
| `cache_format_version` | int32 | () | `CACHE_FORMAT_VERSION` |
| `meta_json` | uint8 | (bytes,) | UTF-8 JSON: k, T, vocab_size, shard name and SHA-256, teacher SHA-256 |
| `topk_ids` | uint16 (int32 if V > 65536) | (M, k) | the teacher's k highest-scoring tokens, best first |
| `topk_logits` | float32 | (M, k) | their raw (untempered) teacher logits |
| `log_normalizer` | float32 | (M,) | log Σ_v exp(t_v / T) over the whole vocabulary, at the cache's temperature T |
| `rest_mass` | float32 | (M,) | Σ_{v ∉ top-k} softmax(t / T)_v, summed over the tokens outside the top-k |

A cache is checked against the shard (SHA-256 of its token ids, masked positions and labels), the requested k
and temperature, and the teacher checkpoint when one is named (SHA-256 of its files), and every value is checked
(bort.pretrain.cache_validation); any mismatch is a one-line error naming the cache file.
"""
import functools
import hashlib
import json
import logging
import os
import time
import zipfile

import bort  # noqa: F401
import mxnet as mx
import numpy as np

from bort.errors import BortError
from bort.io import atomic_path, check_writable, hash_file
from bort.pretrain.cache_validation import check_meta, check_values

log = logging.getLogger(__name__)

CACHE_FORMAT_VERSION = 1
CACHE_SUFFIX = ".topk"
DEFAULT_TOPK = 16
BESIDE = "beside"
ARRAYS = ("topk_ids", "topk_logits", "log_normalizer", "rest_mass")
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)
_TEACHER_FILES = (".params", ".json", ".bin", ".safetensors")


# --------------------------------------------------------------------------------------------------------------
# Names, fingerprints, sizes
# --------------------------------------------------------------------------------------------------------------
def cache_path(shard_path, cache_dir=None):
    """Where the cache of `shard_path` lives: `<cache_dir>/<shard name>.topk`, or beside the shard."""
    directory = os.path.dirname(os.path.abspath(shard_path)) if cache_dir in (None, "", BESIDE) else cache_dir
    return os.path.join(directory, os.path.basename(shard_path) + CACHE_SUFFIX)


def shard_fingerprint(shard):
    """SHA-256 of what the teacher saw and what the cache rows are aligned to: token ids, masked positions,
    labels and both offset arrays."""
    digest = hashlib.sha256()
    b = shard.batch
    for array, dtype in ((b.input_ids, np.int32), (b.input_offsets, np.int64), (b.masked_positions, np.int32),
                         (b.masked_ids, np.int32), (b.masked_offsets, np.int64)):
        digest.update(np.ascontiguousarray(array, dtype=dtype).tobytes())
    return digest.hexdigest()


@functools.lru_cache(maxsize=8)
def teacher_fingerprint(spec):
    """SHA-256 of a teacher checkpoint (a file, or the weight/config files of a directory); None for no file."""
    if spec is None:
        return None
    if os.path.isdir(spec):
        files = sorted(f for f in os.listdir(spec)
                       if f.endswith(_TEACHER_FILES) and os.path.isfile(os.path.join(spec, f)))
    elif os.path.isfile(spec):
        spec, files = os.path.dirname(os.path.abspath(spec)), [os.path.basename(spec)]
    else:
        raise BortError(f"{spec}: teacher checkpoint not found")
    digest = hashlib.sha256()
    for name in files:
        digest.update(name.encode() + b"\0")
        hash_file(os.path.join(spec, name), digest)
    return digest.hexdigest()


def id_dtype(vocab_size):
    return np.uint16 if vocab_size <= 1 << 16 else np.int32


def bytes_per_position(k, vocab_size=50265):
    """Cache bytes per masked position: k ids, k float32 logits, the log-normalizer and the rest mass."""
    return k * (np.dtype(id_dtype(vocab_size)).itemsize + 4) + 8


# --------------------------------------------------------------------------------------------------------------
# The file
# --------------------------------------------------------------------------------------------------------------
def write_cache(path, meta, topk_ids, topk_logits, log_normalizer, rest_mass):
    """Write one cache file atomically (equal content gives equal bytes)."""
    arrays = {"cache_format_version": np.array(CACHE_FORMAT_VERSION, dtype=np.int32),
              "meta_json": np.frombuffer(json.dumps(meta, sort_keys=True).encode(), dtype=np.uint8),
              "topk_ids": topk_ids, "topk_logits": topk_logits.astype(np.float32, copy=False),
              "log_normalizer": log_normalizer.astype(np.float32, copy=False),
              "rest_mass": rest_mass.astype(np.float32, copy=False)}
    with atomic_path(path) as tmp:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
            for name, array in arrays.items():
                info = zipfile.ZipInfo(name + ".npy", date_time=_ZIP_DATE)
                info.external_attr = 0o644 << 16
                with zf.open(info, "w", force_zip64=True) as out:
                    np.lib.format.write_array(out, np.ascontiguousarray(array), allow_pickle=False)


def read_cache(path):
    """(meta dict, {name: array}) of a cache file; a missing, corrupt or inconsistent file is a BortError."""
    if not os.path.isfile(path):
        raise BortError(f"{path}: teacher cache not found (write it with scripts/cache_teacher.py)")
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = sorted({"cache_format_version", "meta_json", *ARRAYS} - set(npz.files))
            if missing:
                raise BortError(f"{path}: not a teacher cache (arrays {missing} are missing)")
            version = int(npz["cache_format_version"])
            if version > CACHE_FORMAT_VERSION:
                raise BortError(f"{path}: cache format {version} is newer than this reader "
                                f"({CACHE_FORMAT_VERSION}); update the code")
            meta = json.loads(npz["meta_json"].tobytes().decode())
            arrays = {name: npz[name] for name in ARRAYS}
    except BortError:
        raise
    except (OSError, ValueError, TypeError, EOFError, KeyError, zipfile.BadZipFile, UnicodeDecodeError) as err:
        raise BortError(f"{path}: corrupt or truncated teacher cache ({type(err).__name__}: "
                        f"{' '.join(str(err).split())})") from None
    check_meta(path, meta)
    m, k = meta["num_positions"], meta["k"]
    for name in ARRAYS:
        shape = (m, k) if name.startswith("topk") else (m,)
        if arrays[name].shape != shape:
            raise BortError(f"{path}: {name}: expected shape {shape} (num_positions x k), found "
                            f"{arrays[name].shape}")
    check_values(path, arrays, meta["vocab_size"], meta["temperature"])
    return meta, arrays


class ShardCache:
    """One shard's cache, checked, ready to hand out the rows of a batch of instances."""

    def __init__(self, path, meta, arrays, masked_offsets, temperature):
        self.path = path
        self.meta = meta
        self.k = int(meta["k"])
        self.temperature = float(temperature)
        self.offsets = np.asarray(masked_offsets, dtype=np.int64)
        self.ids = arrays["topk_ids"]
        self.logits = arrays["topk_logits"]
        self.log_normalizer = arrays["log_normalizer"]
        self.rest = arrays["rest_mass"]

    def batch(self, indices):
        """The cached teacher rows of instances `indices`, laid out like batchify()'s masked arrays (B, K):
        ids (B, K, k) int32, prob (B, K, k) and rest (B, K) renormalized to sum to 1 (float64 arithmetic), and
        neg_entropy (B, K) = Σ p log p + r log r; padding rows are all zero."""
        indices = np.asarray(indices, dtype=np.int64)
        starts = self.offsets[indices]
        counts = self.offsets[indices + 1] - starts
        width = max(1, int(counts.max()) if len(counts) else 1)
        valid = np.arange(width)[None, :] < counts[:, None]
        out = {"teacher_topk_ids": np.zeros(valid.shape + (self.k,), np.int32),
               "teacher_topk_prob": np.zeros(valid.shape + (self.k,), np.float32),
               "teacher_rest_mass": np.zeros(valid.shape, np.float32),
               "teacher_neg_entropy": np.zeros(valid.shape, np.float32)}
        if not valid.any():
            return out
        rows = (starts[:, None] + np.arange(width)[None, :])[valid]
        log_p = self.logits[rows].astype(np.float64) / self.temperature - self.log_normalizer[rows, None]
        prob, rest = np.exp(log_p), self.rest[rows].astype(np.float64)
        total = prob.sum(axis=-1) + rest
        prob, rest, log_p = prob / total[:, None], rest / total, log_p - np.log(total)[:, None]
        rest_term = np.where(rest > 0, rest * np.log(np.where(rest > 0, rest, 1.0)), 0.0)
        out["teacher_topk_ids"][valid] = self.ids[rows]
        out["teacher_topk_prob"][valid] = prob
        out["teacher_rest_mass"][valid] = rest
        out["teacher_neg_entropy"][valid] = (prob * log_p).sum(axis=-1) + rest_term
        return out


class CacheReader:
    """Opens and checks the caches of a run's shards: --teacher_cache DIR, --teacher_cache_topk (None: any, but
    the same for every shard), --distillation_temperature, and --teacher_ckpt_dir when given."""

    def __init__(self, cache_dir, temperature, topk=None, teacher_spec=None):
        self.cache_dir = cache_dir
        self.temperature = float(temperature)
        self.topk = topk
        self.teacher_spec = teacher_spec
        self.k_seen = None

    def path(self, shard_path):
        return cache_path(shard_path, self.cache_dir)

    def has_caches(self, shard_paths):
        return all(os.path.isfile(self.path(p)) for p in shard_paths)

    def open(self, shard_path, shard):
        path = self.path(shard_path)
        if not os.path.isfile(path):
            raise BortError(f"{path}: no teacher cache for shard {shard_path}; write it with "
                            f"scripts/cache_teacher.py --data ... --cache_dir {self.cache_dir or BESIDE}")
        meta, arrays = read_cache(path)
        num_positions = int(shard.batch.masked_offsets[-1])
        if meta.get("shard_sha256") != shard_fingerprint(shard):
            raise BortError(f"{path}: cache of another shard: made for {meta.get('shard')} "
                            f"({meta.get('num_instances')} instances, {meta.get('num_positions')} masked positions), "
                            f"not for {shard_path} ({len(shard)} instances, {num_positions} masked positions)")
        k = int(meta["k"])
        if self.topk is not None and k != self.topk:
            raise BortError(f"{path}: cache holds the teacher's top-{k}, but --teacher_cache_topk {self.topk} "
                            f"was asked for")
        if self.k_seen is not None and k != self.k_seen:
            raise BortError(f"{path}: cache holds the teacher's top-{k}, other shards' caches top-{self.k_seen}; "
                            f"re-cache with one --topk")
        self.k_seen = k
        cached_t = float(meta["temperature"])
        if abs(cached_t - self.temperature) > 1e-6 * max(1.0, self.temperature):
            raise BortError(f"{path}: cache made at distillation temperature {cached_t:g}, but "
                            f"--distillation_temperature is {self.temperature:g}")
        vocab = (shard.metadata or {}).get("vocab_size")
        if vocab is not None and int(meta["vocab_size"]) != int(vocab):
            raise BortError(f"{path}: cache vocabulary size {meta['vocab_size']} differs from the shard's {vocab}")
        expected = teacher_fingerprint(self.teacher_spec)
        if expected is not None and meta.get("teacher_sha256") != expected:
            raise BortError(f"{path}: cache of another teacher: made from {meta.get('teacher_source')} "
                            f"(sha256 {str(meta.get('teacher_sha256'))[:12]}), not from --teacher_ckpt_dir "
                            f"{self.teacher_spec} (sha256 {expected[:12]})")
        return ShardCache(path, meta, arrays, shard.batch.masked_offsets, self.temperature)


_READERS = {}


def reader_for(config):
    """The CacheReader of a PretrainConfig with --teacher_cache (one per process and setting)."""
    key = (config.teacher_cache, float(config.distillation_temperature), config.teacher_cache_topk,
           config.teacher_ckpt_dir)
    if key not in _READERS:
        _READERS[key] = CacheReader(*key)
    return _READERS[key]


def check_config(config):
    """Flag combinations that cannot work with --teacher_cache (called only when it is set)."""
    if config.legacy_kd_loss:
        raise BortError("--legacy_kd_loss needs the teacher's full logits; it cannot be combined with "
                        "--teacher_cache")
    if config.teacher_cache_topk is not None and config.teacher_cache_topk < 1:
        raise BortError(f"--teacher_cache_topk must be >= 1, got {config.teacher_cache_topk}")
    if config.teacher_cache != BESIDE and not os.path.isdir(config.teacher_cache):
        raise BortError(f"{config.teacher_cache}: --teacher_cache directory not found (or '{BESIDE}' for caches "
                        f"beside the shards)")


# --------------------------------------------------------------------------------------------------------------
# Writing: run the teacher once
# --------------------------------------------------------------------------------------------------------------
def topk_rows(logits, k, temperature):
    """(ids, top-k logits, log-normalizer at T, rest mass at T) as numpy for logits (N, V) on any context."""
    logits = logits.astype("float32", copy=False)
    n, vocab = logits.shape
    values, ids = mx.nd.topk(logits, k=k, ret_typ="both", is_ascend=False)
    scaled = logits / temperature
    shift = mx.nd.max(scaled, axis=-1, keepdims=True)
    log_norm = shift + mx.nd.log(mx.nd.sum(mx.nd.exp(scaled - shift), axis=-1, keepdims=True))
    rows = mx.nd.arange(n, ctx=logits.context).reshape((n, 1)).broadcast_to((n, k)).reshape((-1,))
    in_top = mx.nd.scatter_nd(mx.nd.ones((n * k,), ctx=logits.context), mx.nd.stack(rows, ids.reshape((-1,))),
                              shape=(n, vocab))
    rest = (mx.nd.exp(scaled - log_norm) * (1 - in_top)).sum(axis=-1)
    return (ids.asnumpy().astype(np.int64), values.asnumpy(), log_norm.reshape((-1,)).asnumpy(),
            rest.asnumpy())


def cache_shard(teacher, shard_path, out_path, k, temperature, batch_size=32, ctx=None, dtype="float32",
                teacher_info=None, allow_legacy_pickle=False):
    """Run `teacher` over every masked position of one shard and write its cache; returns (positions, bytes, sum
    of the rest masses)."""
    from data.collate import batchify  # noqa: PLC0415  (data/ imports bort, not the reverse)
    from data.pretraining_format import load_shard  # noqa: PLC0415

    ctx = ctx or mx.cpu()
    shard = load_shard(shard_path, allow_legacy_pickle=allow_legacy_pickle)
    vocab = teacher.config.vocab_size
    shard_vocab = (shard.metadata or {}).get("vocab_size")
    if shard_vocab is not None and int(shard_vocab) != vocab:
        raise BortError(f"{shard_path}: shard vocabulary size {shard_vocab} differs from the teacher's {vocab}")
    if not 1 <= k <= vocab:
        raise BortError(f"--topk must be between 1 and the vocabulary size {vocab}, got {k}")
    offsets = shard.batch.masked_offsets
    num_positions = int(offsets[-1])
    ids = np.zeros((num_positions, k), id_dtype(vocab))
    logits = np.zeros((num_positions, k), np.float32)
    log_norm = np.zeros(num_positions, np.float32)
    rest = np.zeros(num_positions, np.float32)
    pad_id = int((shard.metadata or {}).get("pad_id", teacher.config.pad_id))
    order = np.argsort(shard.lengths, kind="stable")  # similar lengths together: little padding
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        if int((offsets[chunk + 1] - offsets[chunk]).sum()) == 0:
            continue
        arrays = batchify([shard[int(j)] for j in chunk], pad_id)
        out = teacher(mx.nd.array(arrays["input_ids"], ctx=ctx, dtype="float32"),
                      mx.nd.array(arrays["valid_length"], ctx=ctx, dtype=dtype),
                      mx.nd.array(arrays["masked_positions"], ctx=ctx, dtype="float32"))
        valid = np.flatnonzero(arrays["masked_weights"].reshape(-1) > 0)
        flat = mx.nd.take(out.reshape((-1, vocab)), mx.nd.array(valid, ctx=ctx))
        # batchify puts instance b's predictions in row b, in shard order: the valid rows, row-major, are the
        # instances' masked_offsets ranges one after another.
        dest = np.concatenate([np.arange(offsets[j], offsets[j + 1]) for j in chunk])
        ids[dest], logits[dest], log_norm[dest], rest[dest] = topk_rows(flat, k, temperature)
    meta = dict(teacher_info or {}, format="bort-teacher-topk", k=int(k), temperature=float(temperature),
                vocab_size=int(vocab), shard=os.path.basename(shard_path), shard_sha256=shard_fingerprint(shard),
                num_instances=len(shard), num_positions=num_positions, ids_dtype=np.dtype(ids.dtype).name)
    write_cache(out_path, meta, ids, logits, log_norm, rest)
    return num_positions, os.path.getsize(out_path), float(rest.astype(np.float64).sum())


def build_cache(data, cache_dir=BESIDE, teacher_ckpt_dir=None, teacher_model="roberta_24_1024_16",
                topk=DEFAULT_TOPK, temperature=2.0, batch_size=32, dtype="float32", cpu_only=False,
                overwrite=False, allow_legacy_pickle=False, seed=0, dist=None, progress=True):
    """Cache the teacher's top-k for every shard of `data`; rank r of `dist` takes shards i with i mod size == r.
    A shard whose cache exists and passes every check is skipped unless `overwrite`. Returns totals over ranks."""
    from data.pretraining_format import load_shard  # noqa: PLC0415
    from data.shard_files import list_shards  # noqa: PLC0415

    from bort.pretrain.distill import load_teacher  # noqa: PLC0415
    from bort.progress import Progress  # noqa: PLC0415
    from bort.train.distributed import Distributed, rank_device  # noqa: PLC0415
    from bort.train.optim import set_seed  # noqa: PLC0415

    dist = dist or Distributed()
    if temperature <= 0:
        raise BortError(f"--distillation_temperature must be positive, got {temperature}")
    if topk < 1:
        raise BortError(f"--topk must be >= 1, got {topk}")
    paths = list_shards(data)
    targets = {}
    for path in paths:
        target = os.path.abspath(cache_path(path, cache_dir))
        if target in targets:
            raise BortError(f"{path}: shares the cache file {target} with {targets[target]}; cache shards of "
                            f"different directories into different --cache_dir (or '{BESIDE}')")
        targets[target] = path
    for directory in sorted({os.path.dirname(target) for target in targets}):  # before the teacher runs
        check_writable(directory, "--cache_dir" if cache_dir not in (None, "", BESIDE) else "--cache_dir beside")
    mine = [p for i, p in enumerate(paths) if i % dist.size == dist.rank]
    ctx = rank_device(dist.local_rank, use_gpu=not cpu_only)
    dtype = dtype if ctx.device_type == "gpu" else "float32"
    vocab = (load_shard(paths[0], allow_legacy_pickle=allow_legacy_pickle).metadata or {}).get("vocab_size")
    set_seed(seed)  # a random teacher (tests only) is then the same on every rank
    teacher = load_teacher(teacher_ckpt_dir, config=teacher_model, ctx=ctx, dtype=dtype,
                           vocab_size=vocab if teacher_ckpt_dir is None else None)
    info = {"teacher_sha256": teacher_fingerprint(teacher_ckpt_dir), "teacher_dtype": dtype,
            "teacher_source": teacher_ckpt_dir or f"gluon-nlp's pretrained {teacher_model}"}
    checker = CacheReader(cache_dir, temperature, topk, teacher_ckpt_dir)
    bar = Progress(total=len(mine), desc="teacher cache", unit="shard") if progress and dist.is_root else None
    written = skipped = positions = size = rest_sum = 0
    start = time.time()
    for path in mine:
        out_path = cache_path(path, cache_dir)
        if not overwrite and os.path.isfile(out_path):
            try:
                checker.k_seen = None
                checker.open(path, load_shard(path, allow_legacy_pickle=allow_legacy_pickle))
                skipped += 1
                log.info("%s: valid cache exists, skipped", out_path)
                if bar:
                    bar.update(1)
                continue
            except BortError as err:
                log.info("re-caching: %s", err)
        t0 = time.time()
        n, nbytes, rest = cache_shard(teacher, path, out_path, topk, temperature, batch_size, ctx, dtype, info,
                                      allow_legacy_pickle)
        written, positions, size, rest_sum = written + 1, positions + n, size + nbytes, rest_sum + rest
        log.info("rank %d: %s: %d masked positions in %.1f s (%.0f/s), %.1f MB", dist.rank, out_path, n,
                 time.time() - t0, n / max(time.time() - t0, 1e-9), nbytes / 1e6)
        if bar:
            bar.update(1)
            bar.report(positions_per_s=round(positions / max(time.time() - start, 1e-9)))
    if bar:
        bar.close()
    totals = dist.allreduce_sum([written, skipped, positions, size, rest_sum])
    # The teacher's mean probability outside the top-k (of the shards written): what the cached KD term cannot
    # distribute token by token (docs/teacher_cache.md). Large values call for a larger k.
    return {"shards": len(paths), "written": int(totals[0]), "skipped": int(totals[1]),
            "positions": int(totals[2]), "bytes": int(totals[3]), "seconds": time.time() - start,
            "mean_rest_mass": totals[4] / max(totals[2], 1),
            "k": int(topk), "temperature": float(temperature), "cache_dir": cache_dir}
