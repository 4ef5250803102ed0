"""Feeding distillation pretraining: shard streams per rank and slot, batching, prefetching, evaluation batches.

The shard files are split over ranks (shard i goes to rank i mod size; fewer shards than ranks is an error).
Within a rank, micro-batch m of every step (m < --accumulate) reads from "slot" m mod k, k = min(accumulate,
shards of this rank), each slot owning every k-th of the rank's shards. So `-np 2 --accumulate 1` and
`-np 1 --accumulate 2` read exactly the same batches. Each slot walks its shards epoch by epoch; the shard order
and the batches of a shard (length buckets, FixedBucketSampler) are shuffled by RNGs seeded from
(seed, epoch, shard index) only, so the data position (epoch, shard, batch) in a checkpoint is enough to resume
exactly. A background thread loads shards and pads batches ahead of the training loop.
"""
import dataclasses
import logging
import queue
import threading

import bort  # noqa: F401
import numpy as np

from data.collate import batchify
from data.pretraining_format import load_shard
from data.shard_files import list_shards

from bort.pretrain import teacher_cache
from bort.errors import BortError
from bort.train.distributed import to_device


def split_shards(paths, size, rank, what="--data"):
    if len(paths) < size:
        raise BortError(f"{what}: {len(paths)} shard file(s) for {size} workers; each worker needs at least one "
                        f"shard (use fewer processes or write more shards with --num_outputs)")
    return [(i, p) for i, p in enumerate(paths) if i % size == rank]


def _rng(*keys):
    return np.random.RandomState(np.random.SeedSequence([int(k) for k in keys]).generate_state(1)[0])


def shard_batches(lengths, batch_size, num_buckets, use_avg_len, shuffle, rng):
    """Index lists of the batches of one shard: length buckets (FixedBucketSampler), shuffled by `rng`."""
    import gluonnlp  # noqa: PLC0415

    perm = rng.permutation(len(lengths)) if shuffle else np.arange(len(lengths))
    lengths = np.asarray(lengths)[perm]
    num_buckets = max(1, min(num_buckets, len(np.unique(lengths))))
    logging.getLogger("gluonnlp").setLevel(logging.ERROR)
    sampler = gluonnlp.data.FixedBucketSampler(lengths.tolist(), batch_size=batch_size, num_buckets=num_buckets,
                                               ratio=0, shuffle=False, use_average_length=use_avg_len)
    batches = [perm[np.asarray(b, dtype=np.int64)] for b in sampler if len(b)]
    if shuffle:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


class SlotStream:
    """Endless batches from a fixed list of (global index, path) shards; position = (epoch, shard, batch)."""

    def __init__(self, shards, config, seed, shuffle=True, position=None, pad_id=1, epochs=None):
        self.shards = shards
        self.config = config
        self.seed = seed
        self.shuffle = shuffle
        self.pad_id = pad_id
        self.epochs = epochs
        self.position = dict(position or {"epoch": 0, "shard": 0, "batch": 0})

    def _order(self, epoch):
        order = list(range(len(self.shards)))
        if self.shuffle and len(order) > 1:
            order = _rng(self.seed, epoch, self.shards[0][0], 7).permutation(order).tolist()
        return order

    def __iter__(self):
        cfg, pos = self.config, self.position
        epoch, shard_i, batch_i = pos["epoch"], pos["shard"], pos["batch"]
        while self.epochs is None or epoch < self.epochs:
            order = self._order(epoch)
            while shard_i < len(order):
                index, path = self.shards[order[shard_i]]
                shard = load_shard(path, allow_legacy_pickle=cfg.allow_legacy_pickle)
                if not len(shard):
                    raise BortError(f"{path}: shard holds no instances")
                # --teacher_cache: the shard's checked cache; its rows go into every batch below
                cache = teacher_cache.reader_for(cfg).open(path, shard) if cfg.teacher_cache else None
                pad_id = int(shard.metadata.get("pad_id", self.pad_id)) if shard.metadata else self.pad_id
                batches = shard_batches(shard.lengths, self.batch_size, cfg.num_buckets, cfg.use_avg_len,
                                        self.shuffle, _rng(self.seed, epoch, index))
                while batch_i < len(batches):
                    arrays = batchify([shard[int(j)] for j in batches[batch_i]], pad_id)
                    if cache is not None:
                        arrays.update(cache.batch(batches[batch_i]))
                    batch_i += 1
                    yield arrays, {"epoch": epoch, "shard": shard_i, "batch": batch_i}
                shard_i, batch_i = shard_i + 1, 0
            epoch, shard_i = epoch + 1, 0

    @property
    def batch_size(self):
        return self.config.batch_size


class Prefetcher:
    """Runs an iterator in a daemon thread, `depth` items ahead; re-raises its exceptions in the consumer."""

    _END = object()

    def __init__(self, iterator, depth=4):
        self._queue = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(iterator,), daemon=True)
        self._thread.start()

    def _run(self, iterator):
        try:
            for item in iterator:
                while not self._stop.is_set():
                    try:
                        self._queue.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if self._stop.is_set():
                    return
            self._queue.put(self._END)
        except BaseException as err:  # noqa: BLE001 - handed to the consumer
            self._queue.put(err)

    def __iter__(self):
        return self

    def __next__(self):
        item = self._queue.get()
        if item is self._END:
            raise StopIteration
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self):
        self._stop.set()


class TrainData:
    """The micro-batches of one rank: slot m of each step reads slot stream m mod k (see the module docstring)."""

    def __init__(self, config, dist, seed, positions=None):
        paths = list_shards(config.data)
        mine = split_shards(paths, dist.size, dist.rank)
        self.num_slots = min(config.accumulate, len(mine))
        self.streams = [SlotStream(mine[k::self.num_slots], config, seed,
                                   position=(positions or {}).get(str(k)))
                        for k in range(self.num_slots)]
        self.positions = {str(k): dict(s.position) for k, s in enumerate(self.streams)}
        self.accumulate = config.accumulate
        self._iters = [iter(Prefetcher(iter(s), config.prefetch)) for s in self.streams]
        self.paths = paths

    def next_step(self):
        """The `accumulate` micro-batches of the next step (and the new positions)."""
        out = []
        for m in range(self.accumulate):
            k = m % self.num_slots
            arrays, position = next(self._iters[k])
            self.positions[str(k)] = position
            out.append(arrays)
        return out

    def close(self):
        for it in self._iters:
            it.close()


def eval_batches(config, dist):
    """This rank's evaluation batches (one pass, no shuffling); every rank evaluates all shards when there are
    fewer shards than ranks. Returns (iterator, split) where split says whether results must be summed."""
    paths = list_shards(config.data_eval)
    split = len(paths) >= dist.size
    mine = split_shards(paths, dist.size, dist.rank, "--data_eval") if split else list(enumerate(paths))
    # As the original's evaluation loader: --batch_size_eval sequences per batch, one length bucket.
    eval_config = dataclasses.replace(config, batch_size=config.batch_size_eval, use_avg_len=False, num_buckets=1)
    if config.teacher_cache and not teacher_cache.reader_for(config).has_caches(paths):
        eval_config = dataclasses.replace(eval_config, teacher_cache=None)  # evaluate without the teacher
    stream = SlotStream(mine, eval_config, seed=0, shuffle=False, epochs=1)
    batches = (arrays for arrays, _ in stream)
    if config.num_eval_steps:
        batches = (b for i, b in zip(range(config.num_eval_steps), batches))
    return batches, split


def shard_metadata(spec, allow_legacy_pickle=False):
    """Vocabulary metadata (vocab_size, pad_id, ...) of the first shard of `spec`."""
    first = list_shards(spec)[0]
    return load_shard(first, allow_legacy_pickle=allow_legacy_pickle).metadata or {}



def to_nd(arrays, ctx, dtype="float32"):
    """(inputs, valid_length, masked_positions, labels, weights) NDArrays from a batchify() dict.

    Token ids and positions stay float32 (float16 cannot hold ids above 2048 exactly); valid_length takes the
    model's dtype (it builds the attention mask). The copies to a GPU are queued, not waited for."""
    return (to_device(arrays["input_ids"], ctx, "float32"),
            to_device(arrays["valid_length"], ctx, dtype),
            to_device(arrays["masked_positions"], ctx, "float32"),
            to_device(arrays["masked_ids"], ctx, "float32"),
            to_device(arrays["masked_weights"], ctx, "float32"))

