"""Distillation pretraining as library code: the run (config, loop, logging, checkpoints, evaluation).

`run_pretraining_distillation_hvd.py` parses flags into a `PretrainConfig` and calls `pretrain(config)`.
The pieces: data feeding in `bort.pretrain.batches`, the step (student, teacher, loss, totals, evaluation) in
`bort.pretrain.step`, checkpoint files of a run in `bort.pretrain.state`, the masked-LM head in `bort.pretrain.mlm`.
"""
import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import time
import uuid

import bort  # noqa: F401
import mxnet as mx
import numpy as np

from bort.errors import BortError
from bort.io import JsonlLogger, write_json
from bort.model import get_config
from bort.pretrain import teacher_cache
from bort.pretrain.batches import TrainData, eval_batches, shard_metadata, split_shards, to_nd
from bort.pretrain.distill import DistillationLoss
from bort.pretrain.state import (checkpoint_prefix, complete_checkpoints, prune_checkpoints, restore_checkpoint,
                                 rng_state, save_checkpoint, set_rng_state, trim_metrics)
from bort.pretrain.step import Totals, build_student, build_teacher, evaluate, forward_backward, summarize
from bort.pretrain.topk_distill import TopKDistillationLoss, prediction_counts, teacher_from_batch
from bort.profiling import StepProfiler
from bort.progress import Progress
from bort.train.distributed import Distributed
from bort.train.optim import (LinearWarmupDecay, create_trainer, dropout_reseeded, prepare_optimizer_state,
                              set_seed, step_seed, trainable_parameters)
from bort.train.precision import DynamicLossScaler, GradientStep, choose_context
from bort.weights.store import resume_original
from data.pretraining_format import load_shard
from data.shard_files import list_shards

log = logging.getLogger(__name__)

# Evaluation batches per rank: the original evaluated the whole --data_eval every --ckpt_interval (10) steps.
DEFAULT_NUM_EVAL_STEPS = 20


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
    random_teacher: bool = False  # no checkpoint: random teacher instead of gluon-nlp's pretrained one (tests)
    dataset_name: str = None  # gluon-nlp store dataset of the pretrained teacher (None: bort.weights.store.STORE_DATASET)
    pretrained: bool = False  # student starts from the released Bort (model/bort.params) unless student_params
    profile: str = None  # MXNet profiler trace of steps 10-13 (bort.profiling)
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
    num_eval_steps: int = DEFAULT_NUM_EVAL_STEPS  # batches per rank and evaluation (0: the whole --data_eval)
    keep_last_checkpoints: int = 0  # keep the newest N checkpoints (0: keep every checkpoint, as the original)
    keep_every_checkpoints: int = 0  # with keep_last_checkpoints: also keep the checkpoints of steps divisible by M
    log_interval: int = 250
    metrics_file: str = None
    seed: int = 0
    cpu_only: bool = False
    allow_legacy_pickle: bool = False
    prefetch: int = 4
    overwrite_ckpt_dir: bool = False  # a fresh run may delete another run's checkpoints in ckpt_dir
    max_consecutive_skips: int = 50  # float16: stop with an error after this many overflowing steps in a row
    # --teacher_cache (bort.pretrain.teacher_cache): train from the teacher's cached top-k instead of running it
    teacher_cache: str = None
    teacher_cache_topk: int = None
    progress: bool = True
    # GPU: dropout by MXNet's kernel (cudnn_off=True) instead of cuDNN's, so that masks follow the per-step seed
    # and a resume is exact (docs/gpu.md, 'Reproducibility on GPU'); no effect on CPU
    dropout_cudnn_off: bool = False



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
    for name in ("num_eval_steps", "keep_last_checkpoints", "keep_every_checkpoints"):
        if (getattr(config, name) or 0) < 0:
            raise BortError(f"--{name} must be >= 0, got {getattr(config, name)}")
    if config.teacher_cache:
        teacher_cache.check_config(config)


def preflight(config, world_size):
    """The checks a launcher runs in one process before starting `world_size` ranks: flags, shard files, the
    device for --dtype, the files named by --student_params / --teacher_ckpt_dir. Raises BortError."""
    check_config(config)
    shards = list_shards(config.data)
    split_shards(shards, world_size, 0)
    if config.data_eval:
        shards = shards + list_shards(config.data_eval)
    for path in shards:  # every shard a rank will read, fully validated: a bad one stops the launch, not a rank
        load_shard(path, allow_legacy_pickle=config.allow_legacy_pickle)
    choose_context(config.dtype, use_gpu=not config.cpu_only)
    for flag in ("student_params", "teacher_ckpt_dir"):
        path = getattr(config, flag)
        if path and not os.path.exists(path):
            raise BortError(f"{path}: not found (--{flag})")


def pretrain(config, dist=None):
    """Run distillation pretraining; returns {'step', 'student', 'teacher', 'last_train', 'last_eval', ...}."""
    check_config(config)
    dist = dist or Distributed()
    ctx, dtype = choose_context(config.dtype, use_gpu=not config.cpu_only, local_rank=dist.local_rank)
    config = dataclasses.replace(config, batch_size=resolve_batch_size(config, dist))
    eval_interval = config.eval_interval if config.eval_interval is not None else config.ckpt_interval

    # Vocabulary from the data: the student's size, and the teacher must match it.
    paths = list_shards(config.data)
    split_shards(paths, dist.size, dist.rank)  # fail early with a clear message
    meta = shard_metadata(config.data, config.allow_legacy_pickle)
    vocab_size = int(meta.get("vocab_size") or get_config(config.model).vocab_size)

    set_seed(config.seed)
    student, model_config = build_student(config, vocab_size, ctx)
    # --teacher_cache: no teacher in memory; the cached top-k comes with the data
    teacher = None if config.teacher_cache else build_teacher(config, vocab_size, ctx, dtype)
    if dtype == "float16":
        student.cast("float16")
    params = trainable_parameters(student)

    trainer = create_trainer(params, dist, optimizer=config.optimizer, lr=config.lr,
                             weight_decay=config.weight_decay, multi_precision=dtype == "float16")
    prepare_optimizer_state(trainer)
    scaler = DynamicLossScaler(max_skips=config.max_consecutive_skips) if dtype == "float16" else None
    stepper = GradientStep(trainer, params, max_norm=config.max_grad_norm, loss_scaler=scaler)
    if config.accumulate > 1:
        for param in params.values():
            param.grad_req = "add"
    schedule = LinearWarmupDecay(config.lr, config.num_steps, int(config.num_steps * config.warmup_ratio))
    loss_class = TopKDistillationLoss if config.teacher_cache else DistillationLoss
    loss_fn = loss_class(config.mlm_weight, config.teacher_ce_weight, config.distillation_temperature,
                         legacy=config.legacy_kd_loss)

    settings = {k: v for k, v in dataclasses.asdict(config).items() if _jsonable(v)}
    # The original's layout (checkpoint_N/NNNNNNN.params + pickled .states.NN): see bort.weights.store.
    original = resume_original(config, dist, student, trainer, params, model_config,
                               complete_checkpoints(config.ckpt_dir))
    if original:
        start_step, state = original, None
    else:
        start_step, state = restore_checkpoint(config.ckpt_dir, config.start_step, student, trainer,
                                               list(params.values()), dist, settings, config.overwrite_ckpt_dir)
    run_id = (state or {}).get("run_id") or uuid.uuid4().hex
    metrics_path = config.metrics_file or os.path.join(config.ckpt_dir, "metrics.jsonl")
    if dist.is_root and (start_step or not config.metrics_file):  # a --metrics_file of its own: the user's
        trim_metrics(metrics_path, start_step)
    positions = _resume_position(config, dist, start_step, state, scaler) if state else None
    student.hybridize(static_alloc=True)

    data = TrainData(config, dist, config.seed, positions)
    metrics = JsonlLogger(metrics_path if dist.is_root else None)
    if dist.is_root:
        os.makedirs(config.ckpt_dir, exist_ok=True)
        log.info("effective batch = %d %s x %d accumulate x %d workers", config.batch_size,
                 "tokens" if config.use_avg_len else "sequences", config.accumulate, dist.size)
        if config.teacher_cache:
            log.info("distilling from the teacher cache %s (no teacher forward)", config.teacher_cache)
    progress = Progress(total=config.num_steps, initial=start_step, desc="distillation", unit="step",
                        enabled=config.progress and dist.is_root)
    profiler = StepProfiler(config.profile, config.num_steps, dist.rank, dist.size)
    reseed = dropout_reseeded(ctx, config.dropout_cudnn_off)
    totals, last_train, last_eval = Totals(), None, None
    step, window_start, window_steps = start_step, time.time(), 0
    data_time = 0.0
    clock = OverheadClock()
    try:
        while step < config.num_steps:
            step += 1
            profiler.step_started(step)
            t0 = time.time()
            micro_batches = data.next_step()
            data_time += time.time() - t0
            lr = schedule(step)
            trainer.set_learning_rate(lr)
            step_loss = 0
            for m, arrays in enumerate(micro_batches):
                slot = dist.rank * config.accumulate + m
                out, logits, teacher_logits, labels, weights = forward_backward(
                    student, teacher, loss_fn, to_nd(arrays, ctx, dtype), stepper.loss_scale / config.accumulate,
                    before_student=(lambda: step_seed(config.seed, step, slot, ctx)) if reseed else None,
                    cached_teacher=teacher_from_batch(arrays, ctx))
                correct, agree = prediction_counts(logits, teacher_logits, labels, weights)
                totals.add(out, correct, agree, float(arrays["valid_length"].sum()))
                step_loss = out["loss"] + step_loss
            grad_norm, applied = stepper(1.0, step=step, loss=step_loss)  # the step's one host sync
            if config.accumulate > 1:
                stepper.zero_grad()
            window_steps += 1
            profiler.step_finished(step)
            progress.update(1)

            if step % config.log_interval == 0 or step == config.num_steps:
                sums = totals.collect(dist)
                elapsed = max(time.time() - window_start, 1e-9)
                last_train = dict(summarize(sums), kind="train", step=step, lr=lr, grad_norm=grad_norm,
                                  skipped=not applied, tokens_per_s=sums["tokens"] / elapsed,
                                  ms_per_step=1000 * elapsed / window_steps,
                                  data_ms_per_step=1000 * data_time / window_steps,
                                  loss_scale=stepper.loss_scale, legacy_kd_loss=config.legacy_kd_loss,
                                  **clock.shares())
                if dist.is_root:
                    metrics.log(**last_train)
                    progress.report(mlm_loss=last_train["mlm_loss"], kd_loss=last_train["kd_loss"],
                                    mlm_acc=last_train["mlm_acc"], tok_s=round(last_train["tokens_per_s"]),
                                    ckpt_share=f"{100 * last_train['checkpoint_time_share']:.1f}%",
                                    eval_share=f"{100 * last_train['eval_time_share']:.1f}%")
                    if not progress.writes_lines:  # the plain progress line already says it
                        log.info("step %d: %s", step, json.dumps({k: last_train[k] for k in (
                            "mlm_loss", "kd_loss", "mlm_acc", "teacher_agreement", "lr", "tokens_per_s",
                            "ms_per_step", "checkpoint_time_share", "eval_time_share")}))
                totals.reset()
                window_start, window_steps, data_time = time.time(), 0, 0.0

            if step % config.ckpt_interval == 0 or step == config.num_steps:
                with clock.measure("checkpoint"):
                    _checkpoint(config, dist, step, student, model_config, trainer, data, scaler, run_id)
            if config.data_eval and eval_interval and step % eval_interval == 0 and step != config.num_steps:
                with clock.measure("eval"):
                    last_eval = _eval_and_log(config, dist, student, teacher, loss_fn, ctx, dtype, metrics, step)
    finally:
        data.close()
        progress.close()
    if dist.is_root:
        shares = clock.shares()
        log.info("time in checkpoints: %.1f %% of the run, in evaluation: %.1f %%",
                 100 * shares["checkpoint_time_share"], 100 * shares["eval_time_share"])
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


def _resume_position(config, dist, start_step, state, scaler):
    """Restore the RNGs and the loss scaler from a checkpoint's state; returns this rank's data position."""
    positions = None
    if state.get("world_size") == dist.size and state.get("accumulate") == config.accumulate:
        positions = state["data_positions"][dist.rank]
    elif dist.is_root:
        log.warning("checkpoint written with %s workers x accumulate %s; the data restarts from the beginning",
                    state.get("world_size"), state.get("accumulate"))
    if "rng" in state:
        set_rng_state(state["rng"])
    if scaler and state.get("loss_scaler"):
        scaler.load_state_dict(state["loss_scaler"])
    elif scaler and state.get("loss_scale"):  # checkpoints written before the scaler's counter was saved
        scaler.scale = float(state["loss_scale"])
    if dist.is_root:
        log.info("resumed from %s (step %d)", checkpoint_prefix(config.ckpt_dir, start_step), start_step)
    return positions


class OverheadClock:
    """Wall time spent in checkpoints and evaluations, as shares of the time since the clock started."""

    def __init__(self):
        self.started_at = time.time()
        self.seconds = {"checkpoint": 0.0, "eval": 0.0}

    @contextlib.contextmanager
    def measure(self, what):
        t0 = time.time()
        try:
            yield
        finally:
            self.seconds[what] += time.time() - t0

    def shares(self):
        """{'checkpoint_time_share': fraction, 'eval_time_share': fraction} of the wall time so far."""
        total = max(time.time() - self.started_at, 1e-9)
        return {f"{what}_time_share": seconds / total for what, seconds in self.seconds.items()}


def _checkpoint(config, dist, step, student, model_config, trainer, data, scaler, run_id):
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
             "loss_scaler": scaler.state_dict() if scaler else None, "run_id": run_id,
             "config": {k: v for k, v in dataclasses.asdict(config).items() if _jsonable(v)}}
    prefix = save_checkpoint(config.ckpt_dir, step, student, model_config, trainer, state)
    removed = prune_checkpoints(config.ckpt_dir, step, config.keep_last_checkpoints, config.keep_every_checkpoints)
    log.info("checkpoint %s%s", prefix, f" (removed steps {', '.join(map(str, removed))})" if removed else "")


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

