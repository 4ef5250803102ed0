"""Distillation pretraining as library code: data feeding, the training step, evaluation, checkpoints, metrics.

`run_pretraining_distillation_hvd.py` parses flags into a `PretrainConfig` and calls `pretrain(config)`.

Data. The shard files are split over ranks (shard i goes to rank i mod size; fewer shards than ranks is an
error). Within a rank, micro-batch m of every step (m < --accumulate) reads from "slot" m mod k, k = min(accumulate,
shards of this rank), each slot owning every k-th of the rank's shards. So `-np 2 --accumulate 1` and
`-np 1 --accumulate 2` read exactly the same batches, and (with dropout seeded per (step, rank·accumulate + m))
compute the same update. Each slot walks its shards epoch by epoch; the shard order and the batches of a shard
(length buckets, FixedBucketSampler) are shuffled by RNGs seeded from (seed, epoch, shard index) only, so the
data position (epoch, shard, batch) in a checkpoint is enough to resume exactly. A background thread loads
shards and pads batches ahead of the training loop.

Checkpoints (rank 0, every --ckpt_interval steps and at the end) in --ckpt_dir:
`step_NNNNNNN.params` (+ `.json` model config), `.states` (optimizer arrays) and `.state.json` (step, data
positions of every rank, python/numpy RNG states, loss scale, flags). Every file is written atomically and
`.state.json` last, so a checkpoint without it is incomplete and ignored by `--start_step latest`.
MXNet's RNG cannot be saved: it is reseeded every step from (seed, step, slot) instead (bort.training.step_seed).
"""
import dataclasses
import glob
import hashlib
import json
import logging
import os
import queue
import random
import re
import threading
import time

import bort  # noqa: F401
import mxnet as mx
import numpy as np

from .checkpoint import (_finish_deferred_init, load_parameters, load_training_state, read_config,
                         save_parameters, save_training_state)
from . import teacher_cache  # --teacher_cache hook
from .distill import DistillationLoss, load_teacher
from .topk_distill import TopKDistillationLoss, prediction_counts, teacher_from_batch  # --teacher_cache hook
from .errors import BortError
from .io import JsonlLogger, write_json
from .model import build_model, get_config
from .training import (Distributed, DynamicLossScaler, GradientStep, LinearWarmupDecay, create_trainer, set_seed,
                       step_seed, trainable_parameters)

log = logging.getLogger(__name__)

from data.pretraining import batchify, list_shards, load_shard


@dataclasses.dataclass
class PretrainConfig:
    """Every setting of a distillation run. Defaults are the original script's; for the loss weights they are
    the values its launcher passed (its argparse defaults, 0 / 1.0 / 1.0, turned distillation off)."""

    data: str = None
    data_eval: str = None
    model: str = "bort_4_8_768_1024"
    student_params: str = None
    teacher_model: str = "roberta_24_1024_16"
    teacher_ckpt_dir: str = None
    teacher_ce_weight: float = 0.5
    distillation_temperature: float = 2.0
    mlm_weight: float = 0.1
    legacy_kd_loss: bool = False
    num_steps: int = 20
    lr: float = 1e-4
    warmup_ratio: float = 0.01
    optimizer: str = "bertadam"
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    batch_size: int = 8
    batch_size_eval: int = 8
    total_batch_size: int = None
    accumulate: int = 1
    use_avg_len: bool = False
    num_buckets: int = 10
    dtype: str = "float16"
    dropout: float = None
    ckpt_dir: str = "./ckpt_dir"
    ckpt_interval: int = 1000
    start_step: str = "0"
    eval_interval: int = None
    num_eval_steps: int = None
    log_interval: int = 250
    metrics_file: str = None
    seed: int = 0
    cpu_only: bool = False
    allow_legacy_pickle: bool = False
    prefetch: int = 4
    stop_at_step: int = None  # stop after this step as if killed (tests of resume)
    # --teacher_cache hook (bort.teacher_cache): train from the teacher's cached top-k instead of running it
    teacher_cache: str = None
    teacher_cache_topk: int = None
    progress: bool = True


# --------------------------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------------------------
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
                # --teacher_cache hook: the shard's checked cache; its rows go into every batch below
                cache = teacher_cache.reader_for(cfg).open(path, shard) if cfg.teacher_cache else None
                pad_id = int(shard.metadata.get("pad_id", self.pad_id)) if shard.metadata else self.pad_id
                batches = shard_batches(shard.lengths, self.batch_size, cfg.num_buckets, cfg.use_avg_len,
                                        self.shuffle, _rng(self.seed, epoch, index))
                while batch_i < len(batches):
                    arrays = batchify([shard[int(j)] for j in batches[batch_i]], pad_id)
                    if cache is not None:  # --teacher_cache hook
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
    eval_config = dataclasses.replace(config, batch_size=config.batch_size_eval)
    if config.teacher_cache and not teacher_cache.reader_for(config).has_caches(paths):  # --teacher_cache hook
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


# --------------------------------------------------------------------------------------------------------------
# Model pieces
# --------------------------------------------------------------------------------------------------------------
def to_nd(arrays, ctx, dtype="float32"):
    """(inputs, valid_length, masked_positions, labels, weights) NDArrays from a batchify() dict.

    Token ids and positions stay float32 (float16 cannot hold ids above 2048 exactly); valid_length takes the
    model's dtype (it builds the attention mask)."""
    return (mx.nd.array(arrays["input_ids"], ctx=ctx, dtype="float32"),
            mx.nd.array(arrays["valid_length"], ctx=ctx, dtype=dtype),
            mx.nd.array(arrays["masked_positions"], ctx=ctx, dtype="float32"),
            mx.nd.array(arrays["masked_ids"], ctx=ctx, dtype="float32"),
            mx.nd.array(arrays["masked_weights"], ctx=ctx, dtype="float32"))


def materialize(model):
    """Finish deferred shape inference so every parameter exists (before broadcast or loading)."""
    _finish_deferred_init(model, model._collect_params_with_prefix())
    return model


def build_student(config, vocab_size, ctx):
    model_config = get_config(config.model, vocab_size=vocab_size, dropout=config.dropout)
    if config.student_params:
        model_config = read_config(config.student_params, model_config)
        if model_config.vocab_size != vocab_size:
            raise BortError(f"{config.student_params}: student vocabulary size {model_config.vocab_size} differs "
                            f"from the data's {vocab_size}")
    model = materialize(build_model(model_config, ctx=ctx))
    if config.student_params:
        load_parameters(model, config.student_params)
    return model, model_config


def build_teacher(config, vocab_size, ctx, dtype):
    """The frozen teacher, or None with --teacher_model none (plain masked-LM pretraining)."""
    spec = config.teacher_ckpt_dir
    if spec is None and str(config.teacher_model).lower() in ("none", ""):
        if config.teacher_ce_weight:
            raise BortError("--teacher_model none: no teacher, so --teacher_ce_weight must be 0")
        return None
    teacher = load_teacher(spec, config=config.teacher_model, ctx=ctx, dtype=dtype,
                           vocab_size=vocab_size if spec is None else None)
    teacher.check_student(get_config(config.model, vocab_size=vocab_size), source=spec or config.teacher_model)
    return teacher


# --------------------------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------------------------
_CKPT = re.compile(r"step_(\d{7,})\.state\.json$")


def checkpoint_prefix(ckpt_dir, step):
    return os.path.join(ckpt_dir, f"step_{int(step):07d}")


def complete_checkpoints(ckpt_dir):
    """Steps of checkpoints whose every file exists (.state.json is written last), ascending."""
    steps = []
    for path in glob.glob(os.path.join(glob.escape(ckpt_dir), "step_*.state.json")):
        match = _CKPT.search(os.path.basename(path))
        prefix = path[: -len(".state.json")]
        if match and all(os.path.isfile(prefix + ext) for ext in (".params", ".states")):
            steps.append(int(match.group(1)))
    return sorted(steps)


def resolve_start_step(ckpt_dir, start_step):
    """0 for a fresh run, else the checkpoint step to resume from ('latest' = newest complete checkpoint)."""
    text = str(start_step).strip().lower()
    if text in ("", "0", "none"):
        return 0
    if text == "latest":
        steps = complete_checkpoints(ckpt_dir)
        return steps[-1] if steps else 0
    if not text.isdigit():
        raise BortError(f"--start_step: expected a step number or 'latest', got {start_step!r}")
    step = int(text)
    if step not in complete_checkpoints(ckpt_dir):
        raise BortError(f"{checkpoint_prefix(ckpt_dir, step)}.state.json: no complete checkpoint for step {step} "
                        f"in {ckpt_dir} (found {complete_checkpoints(ckpt_dir) or 'none'})")
    return step


def save_checkpoint(ckpt_dir, step, model, model_config, trainer, state):
    prefix = checkpoint_prefix(ckpt_dir, step)
    save_parameters(model, prefix + ".params", model_config)
    save_training_state(prefix, trainer, state)  # .states, then .state.json: the commit marker
    return prefix


def rng_state():
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"python": [version, list(internal), gauss],
            "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)]}


def set_rng_state(state):
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))


# --------------------------------------------------------------------------------------------------------------
# Steps and evaluation
# --------------------------------------------------------------------------------------------------------------
class Totals:
    """Running sums of the quantities logged; summed over ranks when reported."""

    KEYS = ("mlm_sum", "kd_sum", "num_masks", "correct", "agree", "tokens", "micro_batches")

    def __init__(self):
        self.reset()

    def reset(self):
        self.values = {k: 0.0 for k in self.KEYS}
        self._pending = []

    def add(self, out, correct, agree, tokens):
        self._pending.append((out["mlm_sum"], out["kd_sum"], out["num_masks"], correct, agree))
        self.values["tokens"] += tokens
        self.values["micro_batches"] += 1

    def collect(self, dist=None):
        for mlm, kd, n, c, a in self._pending:
            self.values["mlm_sum"] += float(mlm.asscalar())
            self.values["kd_sum"] += float(kd.asscalar())
            self.values["num_masks"] += float(n.asscalar())
            self.values["correct"] += float(c.asscalar())
            self.values["agree"] += float(a.asscalar())
        self._pending = []
        values = [self.values[k] for k in self.KEYS]
        if dist is not None:
            values = dist.allreduce_sum(values)
        return dict(zip(self.KEYS, values))


def summarize(sums):
    n = max(sums["num_masks"], 1e-8)
    return {"mlm_loss": sums["mlm_sum"] / n, "kd_loss": sums["kd_sum"] / n, "mlm_acc": sums["correct"] / n,
            "teacher_agreement": sums["agree"] / n, "num_masks": int(sums["num_masks"]),
            "tokens": int(sums["tokens"])}


def forward_backward(student, teacher, loss_fn, batch, scale=1.0, before_student=None, cached_teacher=None):
    """One micro-batch: teacher forward (no gradients), student forward, loss, backward of loss × `scale`.
    `before_student()` runs between the two forwards (the per-step reseeding: a hybridized teacher's first call
    draws from MXNet's RNG, so the seed must be set after it for dropout to be reproducible across a resume).
    `cached_teacher` (a bort.topk_distill.CachedTopK, --teacher_cache) replaces the teacher forward.
    Returns (loss dict, student logits, teacher logits, labels, weights)."""
    inputs, valid_length, positions, labels, weights = batch
    if cached_teacher is not None:  # --teacher_cache hook
        teacher_logits = cached_teacher
    else:
        teacher_logits = teacher(inputs, valid_length, positions) if teacher else None
    if before_student is not None:
        before_student()
    with mx.autograd.record():
        _, logits = student(inputs, valid_length, positions)
        out = loss_fn(logits, teacher_logits, labels, weights)
        scaled = out["loss"] * scale
    scaled.backward()
    return out, logits, teacher_logits, labels, weights


def evaluate(model, teacher, loss_fn, batches, ctx, dtype, dist=None, is_teacher=False):
    """Masked-LM loss/accuracy (and KD loss, agreement with the teacher) of `model` over `batches`."""
    totals = Totals()
    for arrays in batches:
        inputs, valid_length, positions, labels, weights = to_nd(arrays, ctx, dtype)
        teacher_logits = teacher_from_batch(arrays, ctx)  # --teacher_cache hook: None without a cache
        if teacher_logits is None:
            teacher_logits = teacher(inputs, valid_length, positions) if teacher else None
        if is_teacher:
            logits = teacher_logits
        else:
            with mx.autograd.pause(train_mode=False):
                _, logits = model(inputs, valid_length, positions)
        out = loss_fn(logits, teacher_logits, labels, weights)
        correct, agree = prediction_counts(logits, teacher_logits, labels, weights)
        totals.add(out, correct, agree, float(arrays["valid_length"].sum()))
    return summarize(totals.collect(dist))


# --------------------------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------------------------
def resolve_batch_size(config, dist):
    if config.total_batch_size:
        per_rank = config.total_batch_size // (dist.size * config.accumulate)
        if per_rank < 1 or per_rank * dist.size * config.accumulate != config.total_batch_size:
            raise BortError(f"--total_batch_size {config.total_batch_size} is not divisible by "
                            f"workers ({dist.size}) x --accumulate ({config.accumulate})")
        return per_rank
    return config.batch_size


def check_config(config):
    if not config.data:
        raise BortError("--data: no training data given")
    if config.accumulate < 1:
        raise BortError(f"--accumulate must be >= 1, got {config.accumulate}")
    if config.num_steps < 1:
        raise BortError(f"--num_steps must be >= 1, got {config.num_steps}")
    if config.dtype not in ("float32", "float16"):
        raise BortError(f"--dtype: expected float32 or float16, got {config.dtype!r}")
    for name in ("log_interval", "ckpt_interval"):
        if getattr(config, name) < 1:
            raise BortError(f"--{name} must be >= 1, got {getattr(config, name)}")
    if config.teacher_cache:  # --teacher_cache hook
        teacher_cache.check_config(config)


def pretrain(config, dist=None):
    """Run distillation pretraining; returns {'step', 'student', 'teacher', 'last_train', 'last_eval', ...}."""
    check_config(config)
    dist = dist or Distributed()
    use_gpu = not config.cpu_only and mx.context.num_gpus() > 0
    ctx = mx.gpu(dist.local_rank) if use_gpu else mx.cpu()
    dtype = config.dtype if use_gpu else "float32"
    if dtype != config.dtype and dist.is_root:
        log.info("--dtype %s needs a GPU; running float32 on CPU", config.dtype)
    config = dataclasses.replace(config, batch_size=resolve_batch_size(config, dist))
    eval_interval = config.eval_interval if config.eval_interval is not None else config.ckpt_interval

    # Vocabulary from the data: the student's size, and the teacher must match it.
    paths = list_shards(config.data)
    split_shards(paths, dist.size, dist.rank)  # fail early with a clear message
    meta = shard_metadata(config.data, config.allow_legacy_pickle)
    vocab_size = int(meta.get("vocab_size") or get_config(config.model).vocab_size)

    set_seed(config.seed)
    student, model_config = build_student(config, vocab_size, ctx)
    # --teacher_cache hook: no teacher in memory; the cached top-k comes with the data
    teacher = None if config.teacher_cache else build_teacher(config, vocab_size, ctx, dtype)
    if dtype == "float16":
        student.cast("float16")
    params = trainable_parameters(student)
    dist.broadcast_parameters(student.collect_params())

    trainer = create_trainer(params, dist, optimizer=config.optimizer, lr=config.lr,
                             weight_decay=config.weight_decay, multi_precision=dtype == "float16")
    scaler = DynamicLossScaler(window=max(1, 2000 // dist.size)) if dtype == "float16" else None
    stepper = GradientStep(trainer, params, max_norm=config.max_grad_norm, loss_scaler=scaler)
    if config.accumulate > 1:
        for param in params.values():
            param.grad_req = "add"
    schedule = LinearWarmupDecay(config.lr, config.num_steps, int(config.num_steps * config.warmup_ratio))
    loss_class = TopKDistillationLoss if config.teacher_cache else DistillationLoss  # --teacher_cache hook
    loss_fn = loss_class(config.mlm_weight, config.teacher_ce_weight, config.distillation_temperature,
                         legacy=config.legacy_kd_loss)

    start_step, positions = resolve_start_step(config.ckpt_dir, config.start_step), None
    if start_step:
        prefix = checkpoint_prefix(config.ckpt_dir, start_step)
        load_parameters(student, prefix + ".params")
        _ensure_trainer_ready(trainer)
        state = load_training_state(prefix, trainer, list(params.values()))
        if state.get("world_size") == dist.size and state.get("accumulate") == config.accumulate:
            positions = state["data_positions"][dist.rank]
        elif dist.is_root:
            log.warning("checkpoint written with %s workers x accumulate %s; the data restarts from the beginning",
                        state.get("world_size"), state.get("accumulate"))
        if "rng" in state:
            set_rng_state(state["rng"])
        if scaler and state.get("loss_scale"):
            scaler.scale = state["loss_scale"]
        if dist.is_root:
            log.info("resumed from %s (step %d)", prefix, start_step)
    student.hybridize(static_alloc=True)

    data = TrainData(config, dist, config.seed, positions)
    metrics = JsonlLogger((config.metrics_file or os.path.join(config.ckpt_dir, "metrics.jsonl"))
                          if dist.is_root else None)
    if dist.is_root:
        os.makedirs(config.ckpt_dir, exist_ok=True)
        log.info("effective batch = %d %s x %d accumulate x %d workers", config.batch_size,
                 "tokens" if config.use_avg_len else "sequences", config.accumulate, dist.size)
        if config.teacher_cache:  # --teacher_cache hook
            log.info("distilling from the teacher cache %s (no teacher forward)", config.teacher_cache)
    progress = _progress(config, dist, start_step)
    totals, last_train, last_eval = Totals(), None, None
    step, window_start, window_steps = start_step, time.time(), 0
    data_time = 0.0
    try:
        while step < config.num_steps:
            step += 1
            t0 = time.time()
            micro_batches = data.next_step()
            data_time += time.time() - t0
            lr = schedule(step)
            trainer.set_learning_rate(lr)
            for m, arrays in enumerate(micro_batches):
                slot = dist.rank * config.accumulate + m
                out, logits, teacher_logits, labels, weights = forward_backward(
                    student, teacher, loss_fn, to_nd(arrays, ctx, dtype), stepper.loss_scale / config.accumulate,
                    before_student=lambda: step_seed(config.seed, step, slot),
                    cached_teacher=teacher_from_batch(arrays, ctx))  # --teacher_cache hook
                correct, agree = prediction_counts(logits, teacher_logits, labels, weights)
                totals.add(out, correct, agree, float(arrays["valid_length"].sum()))
            grad_norm, applied = stepper(1.0)
            if config.accumulate > 1:
                stepper.zero_grad()
            window_steps += 1
            if progress:
                progress.update(1)

            if step % config.log_interval == 0 or step == config.num_steps:
                sums = totals.collect(dist)
                elapsed = max(time.time() - window_start, 1e-9)
                last_train = dict(summarize(sums), kind="train", step=step, lr=lr, grad_norm=grad_norm,
                                  skipped=not applied, tokens_per_s=sums["tokens"] / elapsed,
                                  ms_per_step=1000 * elapsed / window_steps,
                                  data_ms_per_step=1000 * data_time / window_steps,
                                  loss_scale=stepper.loss_scale, legacy_kd_loss=config.legacy_kd_loss)
                if dist.is_root:
                    metrics.log(**last_train)
                    if progress:
                        progress.set_postfix(mlm=f"{last_train['mlm_loss']:.3f}", kd=f"{last_train['kd_loss']:.3g}",
                                             acc=f"{last_train['mlm_acc']:.3f}", tok_s=f"{last_train['tokens_per_s']:.0f}")
                    log.info("step %d: %s", step, json.dumps({k: last_train[k] for k in (
                        "mlm_loss", "kd_loss", "mlm_acc", "teacher_agreement", "lr", "tokens_per_s",
                        "ms_per_step")}))
                totals.reset()
                window_start, window_steps, data_time = time.time(), 0, 0.0

            if step % config.ckpt_interval == 0 or step == config.num_steps:
                _checkpoint(config, dist, step, student, model_config, trainer, data, scaler)
            if config.data_eval and eval_interval and step % eval_interval == 0 and step != config.num_steps:
                last_eval = _eval_and_log(config, dist, student, teacher, loss_fn, ctx, dtype, metrics, step)
            if config.stop_at_step and step >= config.stop_at_step:
                return {"step": step, "stopped": True, "student": student, "teacher": teacher,
                        "last_train": last_train, "rank": dist.rank}
    finally:
        data.close()
        if progress:
            progress.close()
    result = {"step": step, "student": student, "teacher": teacher, "last_train": last_train,
              "model_config": model_config, "rank": dist.rank}
    if config.data_eval:
        result["eval"] = _eval_and_log(config, dist, student, teacher, loss_fn, ctx, dtype, metrics, step)
        if teacher is not None:
            result["teacher_eval"] = _eval_and_log(config, dist, student, teacher, loss_fn, ctx, dtype, metrics,
                                                   step, is_teacher=True)
    else:
        result["eval"] = last_eval
    mx.nd.waitall()
    return result


def _ensure_trainer_ready(trainer):
    if not trainer._kv_initialized:
        trainer._init_kvstore()


def _progress(config, dist, start_step):
    if not (config.progress and dist.is_root):
        return None
    from tqdm import tqdm  # noqa: PLC0415

    return tqdm(total=config.num_steps, initial=start_step, desc="distillation", unit="step", dynamic_ncols=True)


def _checkpoint(config, dist, step, student, model_config, trainer, data, scaler):
    # Every rank's data position goes into the checkpoint: gather them with a sum over a zero-padded vector.
    slots, size = config.accumulate, dist.size
    flat = np.zeros(size * slots * 3)
    for k, pos in data.positions.items():
        base = (dist.rank * slots + int(k)) * 3
        flat[base:base + 3] = [pos["epoch"], pos["shard"], pos["batch"]]
    flat = dist.allreduce_sum(flat.tolist())
    if not dist.is_root:
        return
    positions = []
    for r in range(size):
        slots_of_r = min(config.accumulate, len(range(r, len(data.paths), size)))
        positions.append({str(k): dict(zip(("epoch", "shard", "batch"),
                                           (int(v) for v in flat[(r * slots + k) * 3:(r * slots + k) * 3 + 3])))
                          for k in range(slots_of_r)})
    state = {"step": step, "world_size": size, "accumulate": config.accumulate, "data_positions": positions,
             "rng": rng_state(), "loss_scale": scaler.scale if scaler else None, "seed": config.seed,
             "config": {k: v for k, v in dataclasses.asdict(config).items() if _jsonable(v)}}
    prefix = save_checkpoint(config.ckpt_dir, step, student, model_config, trainer, state)
    log.info("checkpoint %s", prefix)


def _jsonable(value):
    return value is None or isinstance(value, (bool, int, float, str))


def _eval_and_log(config, dist, student, teacher, loss_fn, ctx, dtype, metrics, step, is_teacher=False):
    batches, split = eval_batches(config, dist)
    result = evaluate(student, teacher, loss_fn, batches, ctx, dtype, dist if split else None,
                      is_teacher=is_teacher)
    result = dict(result, kind="eval", model="teacher" if is_teacher else "student", step=step)
    if dist.is_root:
        metrics.log(**result)
        log.info("eval %s at step %d: mlm_loss=%.4f mlm_acc=%.4f kd_loss=%.4g teacher_agreement=%.4f",
                 result["model"], step, result["mlm_loss"], result["mlm_acc"], result["kd_loss"],
                 result["teacher_agreement"])
    return result


def parameters_digest(model):
    """{name: numpy array} of a model's parameters (tests and the Horovod check)."""
    return {n: p.data().asnumpy() for n, p in model._collect_params_with_prefix().items()}


def parameters_sha256(model):
    digest = hashlib.sha256()
    for name, value in sorted(parameters_digest(model).items()):
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(value, dtype=np.float32).tobytes())
    return digest.hexdigest()


def write_summary(path, result, rank=0):
    """Final metrics and a parameter checksum as JSON ('{rank}' in `path` is replaced by the rank)."""
    summary = {k: result.get(k) for k in ("step", "eval", "teacher_eval", "last_train")}
    summary["parameters_sha256"] = parameters_sha256(result["student"])
    summary["rank"] = rank
    write_json(str(path).replace("{rank}", str(rank)), summary)


# --------------------------------------------------------------------------------------------------------------
# Using the MLM head
# --------------------------------------------------------------------------------------------------------------
MASK_TEXT = "<mask>"


def encode_with_masks(tokenizer, text):
    """Token ids of `text` with every '<mask>' replaced by the mask id, wrapped in <s> ... </s>.

    As in RoBERTa, the space before a mask belongs to the masked word ("The <mask> sat" → 'The', <mask>, 'Ġsat').
    Returns (ids, mask positions)."""
    if MASK_TEXT not in text:
        raise BortError(f"the text has no {MASK_TEXT} token to fill: {text!r}")
    if tokenizer.mask_id is None:
        raise BortError("the vocabulary has no <mask> token")
    pieces = text.split(MASK_TEXT)
    ids = [tokenizer.bos_id] if tokenizer.bos_id is not None else []
    positions = []
    for i, piece in enumerate(pieces):
        if i < len(pieces) - 1:
            piece = piece.rstrip(" ")
        ids.extend(tokenizer.encode(piece) if piece else [])
        if i < len(pieces) - 1:
            positions.append(len(ids))
            ids.append(tokenizer.mask_id)
    if tokenizer.eos_id is not None:
        ids.append(tokenizer.eos_id)
    return ids, positions


def fill_mask(model, tokenizer, text, top_k=5):
    """For each '<mask>' in `text`: the `top_k` (token text, probability) pairs the MLM head predicts."""
    if model.config.vocab_size != tokenizer.vocab_size:
        raise BortError(f"the model's vocabulary size {model.config.vocab_size} differs from the tokenizer's "
                        f"{tokenizer.vocab_size}")
    ids, positions = encode_with_masks(tokenizer, text)
    if len(ids) > model.config.max_length:
        raise BortError(f"the text is {len(ids)} tokens long; the model takes at most {model.config.max_length}")
    ctx = model.collect_params().list_ctx()[0]
    with mx.autograd.pause(train_mode=False):
        _, logits = model(mx.nd.array([ids], ctx=ctx), mx.nd.array([len(ids)], ctx=ctx),
                          mx.nd.array([positions], ctx=ctx))
    probs = mx.nd.softmax(logits.astype("float32"), axis=-1)[0].asnumpy()
    results = []
    for row in probs:
        top = np.argsort(-row)[:top_k]
        results.append([(tokenizer.decode([int(t)]), float(row[t])) for t in top])
    return results


def topk_accuracy(model, batches, ctx, k=5):
    """Weighted fraction of masked positions whose label is among the model's top-k predictions."""
    hits = total = 0.0
    for arrays in batches:
        inputs, valid_length, positions, _, _ = to_nd(arrays, ctx)
        with mx.autograd.pause(train_mode=False):
            _, logits = model(inputs, valid_length, positions)
        top = np.argsort(-logits.asnumpy(), axis=-1)[..., :k]
        weights = arrays["masked_weights"]
        hits += float(((top == arrays["masked_ids"][..., None]).any(-1) * weights).sum())
        total += float(weights.sum())
    return hits / max(total, 1e-8)
