"""Fine-tuning Bort on one task: the run (data, model, training, model selection on dev, leaderboard files).

`run(config, tokenizer)` is what finetune_bort.py calls with a `FinetuneConfig` (bort.finetune.config). Models and
checkpoint files are bort.finetune.checkpoints', batches and predictions bort.finetune.predict's.
"""
import dataclasses
import logging
import math
import os
import time

import bort  # noqa: F401
import mxnet as mx
import numpy as np
from mxnet import gluon

from bort.errors import BortError
from bort.finetune.checkpoints import load_task_checkpoint, pretrained_model, save_task_checkpoint, task_meta_path
from bort.finetune.predict import batchify, evaluate, make_batches, predict_outputs, scores, write_dev_predictions
from bort.finetune.task_kinds import RegressionTask
from bort.finetune.tasks import DIAGNOSTICS, get_task, main_score
from bort.io import JsonlLogger, write_json
from bort.locking import file_digests, hold_directory, retract_result
from bort.progress import Progress
from bort.train.distributed import Distributed, launched_by_horovodrun
from bort.train.optim import (LinearWarmupDecay, create_trainer, dropout_reseeded, set_seed, step_seed,
                              trainable_parameters)
from bort.train.precision import DynamicLossScaler, GradientStep, choose_context
from bort.validation import check_finetune_inputs
from bort.weights.checkpoint import load_parameters
from bort.weights.convert import hf_directory_config

log = logging.getLogger("bort.finetune.loop")


class Data:
    """Examples and encoded instances of each segment the run needs (read before training starts, so bad
    input fails before any output is written). Without a test file a training run writes no submission."""

    def __init__(self, task, config, tokenizer, train):
        data_dir, max_len = config.data_dir, config.max_len
        self.train = None
        if train:
            examples = task.read(task.train_segment, data_dir, cb_expansion=config.cb_expansion)
            self.train = (examples, task.encode(examples, tokenizer, max_len, train=True))
            if not any(inst.target is not None for inst in self.train[1]):
                raise BortError(f"{examples[0]['where'].split(':')[0]}: training data has no labels")
        self.dev = {}
        for segment in task.dev_segments:
            examples = task.read(segment, data_dir, cb_expansion=config.cb_expansion)
            self.dev[segment] = (examples, task.encode(examples, tokenizer, max_len))
        self.test = {}
        for segment, _ in task.test_segments:
            if train and not task.has_data(segment, data_dir):
                log.warning("no test predictions: no %s data of %s in %s", segment, task.name,
                            data_dir or task.default_data_dir())
                continue
            examples = task.read(segment, data_dir, cb_expansion=config.cb_expansion)
            self.test[(task.name, segment)] = (examples, task.encode(examples, tokenizer, max_len))
        for diagnostic in DIAGNOSTICS.get(task.name, ()):
            diag = get_task(diagnostic)
            diag_dir = (config.diagnostic_data_dir if diag.benchmark == "glue" else None) \
                or sibling_data_dir(data_dir, diag)
            for segment, _ in diag.test_segments:
                if not diag.has_data(segment, diag_dir):
                    log.info("no %s predictions: no %s data in %s", diagnostic, segment, diag_dir)
                    continue
                examples = diag.read(segment, diag_dir)
                self.test[(diag.name, segment)] = (examples, diag.encode(examples, tokenizer, max_len))


def sibling_data_dir(data_dir, task):
    """Default location of a diagnostic's data: beside the task's --data_dir, else under $MXNET_HOME."""
    if data_dir:
        sibling = os.path.join(os.path.dirname(os.path.abspath(data_dir)), task.name)
        if os.path.isdir(sibling):
            return sibling
    return task.default_data_dir()


def context(config, dist):
    """The run's context: config.gpu (each Horovod rank its own GPU), else the CPU; float16 on CPU only with
    BORT_CPU_FLOAT16=1 (bort.train.precision)."""
    want_gpu = config.gpu is not None and config.gpu != 999
    if want_gpu and mx.context.num_gpus() == 0:
        raise BortError(f"--gpu {config.gpu}: no GPU is visible to this process; leave --gpu out (or pass 999) to "
                        f"run on the CPU")
    ctx, _ = choose_context(config.dtype, use_gpu=want_gpu, local_rank=dist.local_rank,
                            gpu=None if dist.size > 1 else config.gpu)
    return ctx


def check_sizes(config):
    sizes = {"batch_size": config.batch_size, "dev_batch_size": config.dev_batch_size, "max_len": config.max_len,
             "epochs": config.epochs, "log_interval": config.log_interval}
    for flag, value in sizes.items():
        if value is not None and value <= 0:
            raise BortError(f"--{flag}: must be positive, got {value}")
    if config.max_len is not None and config.max_len < 8:
        raise BortError(f"--max_len: must be at least 8, got {config.max_len}")


def run(config, tokenizer):
    """Fine-tune (or with config.only_inference, predict) and write the outputs to config.output_dir.
    Returns the result dict also written to `<output_dir>/result.json`."""
    task = get_task(config.task_name)
    check_sizes(config)
    # bort.validation: --max_len and vocabulary against the model; an unset max_len becomes the model's
    config = dataclasses.replace(config, max_len=check_finetune_inputs(
        config, tokenizer, hf_directory_config(config.pretrained_parameters)))
    dist = Distributed(use_horovod=launched_by_horovodrun() and not config.no_distributed)
    ctx = context(config, dist)
    set_seed(config.seed)
    only_inference = config.only_inference or not task.dev_segments
    if only_inference and not config.model_parameters:
        raise BortError(f"--model_parameters: required with --only_inference (and for {task.name}, which has no "
                        "training data); pass a checkpoint written by finetune_bort.py")
    data = Data(task, config, tokenizer, train=not only_inference)
    if dist.is_root:  # only rank 0 writes; bort.locking: one run per --output_dir; the old result.json goes first
        hold_directory(config.output_dir, "--output_dir")
        retract_result(config.output_dir)
        os.makedirs(config.output_dir, exist_ok=True)
    logger = JsonlLogger(os.path.join(config.output_dir, "metrics.jsonl") if dist.is_root else None)
    ckpt = os.path.join(config.output_dir, f"model_bort_{task.name}.params")
    result = {"task": task.name, "checkpoint": None, "dev": {}, "submissions": []}
    if only_inference:
        model = load_task_checkpoint(config.model_parameters, task, ctx, config.dropout)
        ckpt = os.path.abspath(config.model_parameters)
    else:
        model = pretrained_model(task, config, tokenizer, ctx)
        if config.model_parameters:
            load_parameters(model, config.model_parameters)
        best = train(task, model, data, config, dist, ctx, tokenizer.pad_id, logger, ckpt)
        result.update(best)
        if dist.is_root:
            model = load_task_checkpoint(ckpt, task, ctx, config.dropout)
    if config.dtype == "float16":
        model.cast("float16")
    if not dist.is_root:
        dist.shutdown()  # waits for rank 0's predictions, then ends Horovod before interpreter exit
        return result
    result["checkpoint"] = os.path.abspath(ckpt)
    dev_metrics = write_dev_predictions(task, model, data.dev, tokenizer.pad_id, config.dev_batch_size, ctx,
                                        config.dtype, config.output_dir)
    if only_inference:
        result["dev"].update(dev_metrics)
        for segment, metrics in dev_metrics.items():
            log.info("%s %s: %s", task.name, segment, format_metrics(metrics))
        result["score"] = main_score(task, result["dev"]) if result["dev"] else None
    for (name, segment), (examples, instances) in data.test.items():
        target = get_task(name)
        outputs = predict_outputs(target, model, instances, tokenizer.pad_id, config.dev_batch_size, ctx,
                                  config.dtype, progress=True)
        preds = target.predict(examples, instances, outputs)
        path = target.write_submission(preds, examples, config.output_dir, segment,
                                       race_format=config.race_submission_format)
        result["submissions"].append(path)
        metrics = target.metrics(preds, target.gold(examples))
        if metrics:  # AX-b / AX-g ship labels
            result["dev"][f"{name}:{segment}"] = metrics
        log.info("wrote %s (%d predictions)", path, len(preds))
    result["args"] = {k: v for k, v in dataclasses.asdict(config).items()
                      if isinstance(v, (str, int, float, bool, type(None)))}
    result["files"] = file_digests(config.output_dir, [ckpt, os.path.splitext(ckpt)[0] + ".json",
                                                       task_meta_path(ckpt)]
                                   + result["submissions"])  # result.json is written last: the set's manifest
    write_json(os.path.join(config.output_dir, "result.json"), result)
    dist.shutdown()
    return result


def _read(total):
    """A running sum kept on the device (or a plain number) as a float: a host sync, for logging steps only."""
    return float(total.asscalar()) if isinstance(total, mx.nd.NDArray) else float(total)


def format_metrics(metrics):
    return ", ".join(f"{k}={v:.4f}" for k, v in metrics.items())


def training_batches(lengths, config, regression, rng):
    """One epoch's shuffled batches (lists of instance indices). Examples of similar length share a batch within
    chunks of `config.bucket_batches` batches (less padding); regression tasks default to random batches: STS-B's
    rows are ordered by source, whose lengths and scores differ, and length-sorted batches each held one slice of
    the scores (dev Pearson/Spearman 26.8 against 80.8 with random batches, docs/results/finetuning.md)."""
    bucket = config.bucket_batches or (1 if regression else 100)
    return make_batches(lengths, config.batch_size, shuffle=True, rng=rng, bucket_size=bucket)


def train(task, model, data, config, dist, ctx, pad_id, logger, ckpt):
    """Train on data.train, evaluate data.dev after each epoch, keep the best epoch's model in `ckpt` (rank 0).
    Returns {"best_epoch", "score", "dev"} of the best epoch."""
    examples, instances = data.train
    instances = [inst for inst in instances if inst.target is not None]
    if config.dtype == "float16":
        model.cast("float16")
    model.bort.hybridize(static_alloc=True)
    params = trainable_parameters(model)
    dist.broadcast_parameters(model.collect_params())
    trainer = create_trainer(params, dist, "bertadam", lr=config.lr, weight_decay=config.weight_decay,
                             epsilon=config.epsilon, multi_precision=config.dtype == "float16")
    accumulate = config.accumulate or 1
    if accumulate > 1:
        for param in params.values():
            param.grad_req = "add"
    step = GradientStep(trainer, params, max_norm=1.0,
                        loss_scaler=DynamicLossScaler() if config.dtype == "float16" else None)
    reseed = dropout_reseeded(ctx)  # on GPU cuDNN's dropout ignores MXNet's seed: no reseeding there
    step_size = config.batch_size * accumulate * dist.size
    total_steps = config.training_steps or max(1, int(len(instances) / step_size * config.ramp_up_epochs))
    epochs = 10 ** 6 if config.training_steps else config.epochs
    schedule = LinearWarmupDecay(config.lr, total_steps, int(total_steps * config.warmup_ratio))
    regression = isinstance(task, RegressionTask)  # one real-valued output: L2 loss; else softmax over the scores
    loss_fn = gluon.loss.L2Loss() if regression else gluon.loss.SoftmaxCrossEntropyLoss()
    lengths = [max(len(s) for s in inst.seqs) for inst in instances]
    log.info("%s: %d training instances, %d steps of %d, %d warmup", task.name, len(instances), total_steps,
             step_size, schedule.warmup_steps)
    best = {"best_epoch": None, "score": -math.inf, "dev": {}}
    patience = config.early_stop
    num_update, stop = 0, False
    for epoch in range(epochs):
        rng = np.random.RandomState(config.seed * 1000 + epoch)
        batches = training_batches(lengths, config, regression, rng)
        per_rank = len(batches) // dist.size
        batches = batches[dist.rank * per_rank:(dist.rank + 1) * per_rank] if dist.size > 1 else batches
        tic, seen, loss_sum, step_loss, loss_count = time.time(), 0, 0.0, 0, 0
        bar = Progress(batches, desc=f"{task.name} epoch {epoch + 1}", unit="batch", enabled=dist.is_root,
                       leave=False)
        step.zero_grad()
        for batch_id, idx in enumerate(bar):
            batch = [instances[i] for i in idx]
            inputs = batchify(batch, pad_id, ctx, config.dtype)
            if reseed:
                step_seed(config.seed, num_update * accumulate + batch_id % accumulate, dist.rank, ctx)
            with mx.autograd.record():
                out = scores(model, inputs, len(batch))
                target = inputs[3].reshape((-1, 1)) if regression else inputs[3]
                loss = loss_fn(out, target).mean()
                scaled = loss * step.loss_scale if step.loss_scale != 1.0 else loss
            scaled.backward()
            step_loss = loss.astype("float32", copy=False) + step_loss  # summed on the device, read when logged
            loss_count += 1
            seen += len(batch)
            if (batch_id + 1) % accumulate == 0:
                num_update += 1
                trainer.set_learning_rate(schedule(num_update))
                step(accumulate, step=num_update, loss=step_loss)  # the step's one host sync
                loss_sum, step_loss = step_loss + loss_sum, 0
                if accumulate > 1:
                    step.zero_grad()
                if num_update % config.log_interval == 0 and dist.is_root:
                    rate = seen / max(time.time() - tic, 1e-9)
                    mean_loss = _read(loss_sum) / loss_count
                    bar.report(loss=mean_loss, lr=trainer.learning_rate)
                    logger.log(kind="train", epoch=epoch + 1, step=num_update, loss=mean_loss,
                               lr=trainer.learning_rate, samples_per_s=rate)
                if config.training_steps and num_update >= total_steps:
                    stop = True
                    break
        bar.close()
        loss_sum = step_loss + loss_sum  # micro-batches after the epoch's last full step
        mx.nd.waitall()
        elapsed = time.time() - tic
        improved = 0.0
        if dist.is_root:
            dev = {}
            for segment, (dev_examples, dev_instances) in data.dev.items():
                _, dev[segment] = evaluate(task, model, dev_examples, dev_instances, pad_id, config.dev_batch_size,
                                           ctx, config.dtype)
            score = main_score(task, dev)
            record = {"kind": "dev", "epoch": epoch + 1, "step": num_update, "score": score,
                      "train_loss": _read(loss_sum) / max(1, loss_count),
                      "train_samples_per_s": seen / max(elapsed, 1e-9),
                      "epoch_time_s": elapsed}
            for segment, metrics in dev.items():
                record.update({f"{segment}.{k}": v for k, v in metrics.items()})
            logger.log(**record)
            log.info("epoch %d: loss %.4f, %s, %.1f samples/s", epoch + 1, record["train_loss"],
                     "; ".join(f"{s}: {format_metrics(m)}" for s, m in dev.items()), record["train_samples_per_s"])
            if not math.isnan(score) and score >= best["score"]:
                best.update(best_epoch=epoch + 1, score=score, dev=dev)
                save_task_checkpoint(model, ckpt, task, {"epoch": epoch + 1, "score": score, "dev": dev})
                improved = 1.0
        improved = dist.allreduce_sum([improved])[0]
        if config.early_stop is not None:
            patience = config.early_stop if improved else patience - 1
            if patience <= 0:
                log.info("early stop after epoch %d", epoch + 1)
                break
        if stop:
            break
    dist.barrier()
    if dist.is_root and best["best_epoch"] is None:
        save_task_checkpoint(model, ckpt, task, {"epoch": None, "score": None})
    return best
