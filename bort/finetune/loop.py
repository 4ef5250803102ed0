"""Fine-tuning Bort on one task: data, the loop, model selection on dev, leaderboard files.

`run(args)` is what finetune_bort.py calls (args as its parser defines them). The pieces are usable alone:
`build_task_model`, `save_task_checkpoint` / `load_task_checkpoint` (a task checkpoint is `<name>.params`, the
architecture `<name>.json` and `<name>.task.json` naming the task), `make_batches` (length bucketing),
`predict_outputs` (checkpoint + instances -> scores) and `evaluate`.
"""
import json
import logging
import math
import os
import time

import bort  # noqa: F401
import mxnet as mx
import numpy as np
from mxnet import gluon

from bort.weights.checkpoint import load_parameters, read_config, save_parameters
from bort.errors import BortError
from bort.finetune.heads import TaskModel
from bort.io import JsonlLogger, atomic_write, read_json, write_json
from bort.locking import file_digests, hold_directory, retract_result
from bort.model import get_config
from bort.train.distributed import Distributed, launched_by_horovodrun
from bort.train.precision import DynamicLossScaler, GradientStep, choose_context
from bort.finetune.tasks import CHOICE, DIAGNOSTICS, REGRESS, get_task, main_score, read_options, submission_options
from bort.train.optim import LinearWarmupDecay, create_trainer, set_seed, step_seed, trainable_parameters
from bort.validation import check_finetune_inputs

log = logging.getLogger("bort.finetune.loop")
PRETRAINED_HELP = ("download bort.params as described in the README ('Pretrained model') and put it at "
                   "model/bort.params, or pass --pretrained_parameters PATH (or 'none' for a random initialization)")


# ---- models and checkpoints -------------------------------------------------------------------------------
def build_task_model(task, config, dropout=0.1, ctx=None):
    ctx = ctx or mx.cpu()
    model = TaskModel(config, task.num_outputs, task.num_spans, dropout)
    model.initialize(mx.init.Normal(0.02), ctx=ctx)
    with mx.autograd.pause():  # finish the encoder's deferred shapes
        spans = mx.nd.zeros((1, task.num_spans, 2), ctx=ctx) if task.num_spans else None
        model(mx.nd.zeros((1, 2), ctx=ctx), mx.nd.array([2], ctx=ctx), spans)
    return model


def task_meta_path(params_path):
    return os.path.splitext(os.fspath(params_path))[0] + ".task.json"


def save_task_checkpoint(model, path, task, extra=None):
    """`path` (.params), its config JSON and `<name>.task.json`, each written atomically."""
    meta = {"task": task.name, "num_outputs": task.num_outputs, "num_spans": task.num_spans}
    meta.update(extra or {})
    save_parameters(model, path, config=model.config)
    write_json(task_meta_path(path), meta)


def load_task_checkpoint(path, task, ctx=None, dropout=0.1):
    """A TaskModel from a fine-tuned checkpoint; one-line error when it was fine-tuned for another task."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise BortError(f"{path}: fine-tuned checkpoint not found (--model_parameters)")
    meta_path = task_meta_path(path)
    if not os.path.isfile(meta_path):
        raise BortError(f"{path}: no {os.path.basename(meta_path)} beside it; expected a checkpoint written by "
                        f"finetune_bort.py (for a pretrained model use --pretrained_parameters)")
    meta = read_json(meta_path, "the task of a fine-tuned checkpoint")
    wanted = {task.name, task.model_task} - {None}
    if meta.get("task") not in wanted:
        raise BortError(f"{path}: checkpoint was fine-tuned for {meta.get('task')!r}, not for "
                        f"{' or '.join(sorted(wanted))}")
    model = build_task_model(task, read_config(path), dropout, ctx)
    load_parameters(model, path)
    return model


def pretrained_model(task, args, tokenizer, ctx):
    """The task model with the encoder from --pretrained_parameters (or random with 'none')."""
    source = args.pretrained_parameters
    if not source or source.lower() == "none":
        config = get_config(args.model_config, vocab_size=tokenizer.vocab_size)
        model = build_task_model(task, config, args.dropout, ctx)
        model.head.initialize(head_initializer(args.init, args.prob), ctx=ctx, force_reinit=True)
        return model
    if not os.path.isfile(source):
        raise BortError(f"{source}: pretrained parameters not found; {PRETRAINED_HELP}")
    config = read_config(source, args.model_config)
    if tokenizer.vocab_size > config.vocab_size:
        raise BortError(f"{source}: the model has {config.vocab_size} word embeddings but the vocabulary has "
                        f"{tokenizer.vocab_size} tokens; pass the vocabulary it was trained with")
    model = build_task_model(task, config, args.dropout, ctx)
    load_parameters(model.bort, source, ignore_extra=("decoder.", "pooler.", "classifier."))
    model.head.initialize(head_initializer(args.init, args.prob), ctx=ctx, force_reinit=True)
    return model


def check_model_files(args):
    """Fail before any slow setup when the parameter files the run needs are missing."""
    if args.only_inference:
        if args.model_parameters and not os.path.isfile(args.model_parameters):
            raise BortError(f"{args.model_parameters}: fine-tuned checkpoint not found (--model_parameters)")
        return
    source = args.pretrained_parameters
    if source and source.lower() != "none" and not os.path.isfile(source):
        raise BortError(f"{source}: pretrained parameters not found; {PRETRAINED_HELP}")


def head_initializer(name, scale):
    """The original's choices for initializing the task head (--init, --prob)."""
    return {"gaussian": lambda: mx.init.Normal(scale), "uniform": lambda: mx.init.Uniform(scale),
            "orthogonal": lambda: mx.init.Orthogonal(scale=scale), "xavier": mx.init.Xavier}[name]()


# ---- batches ----------------------------------------------------------------------------------------------
def make_batches(lengths, batch_size, shuffle=False, rng=None, bucket_size=100):
    """Index lists; with shuffle, similar lengths are batched together (sorted within chunks of
    `bucket_size` batches) and the batches are shuffled."""
    order = np.arange(len(lengths))
    if not shuffle:
        return [order[i:i + batch_size].tolist() for i in range(0, len(order), batch_size)]
    order = rng.permutation(len(lengths))
    chunk = batch_size * bucket_size
    batches = []
    for start in range(0, len(order), chunk):
        part = sorted(order[start:start + chunk].tolist(), key=lambda i: lengths[i])
        batches += [part[i:i + batch_size] for i in range(0, len(part), batch_size)]
    rng.shuffle(batches)
    return batches


def batchify(instances, pad_id, ctx, dtype="float32"):
    """inputs (N*K, L), valid_length (N*K,), spans (N*K, S, 2) or None, targets (N,) or None."""
    seqs = [seq for inst in instances for seq in inst.seqs]
    length = max(len(s) for s in seqs)
    inputs = np.full((len(seqs), length), pad_id, dtype=np.int32)
    for row, seq in enumerate(seqs):
        inputs[row, :len(seq)] = seq
    valid = np.array([len(s) for s in seqs], dtype=np.float32)
    spans = None
    if instances[0].spans is not None:
        spans = mx.nd.array([sp for inst in instances for sp in inst.spans], ctx=ctx, dtype="int32")
    targets = None
    if instances[0].target is not None:
        targets = mx.nd.array([inst.target for inst in instances], ctx=ctx, dtype="float32")
    return mx.nd.array(inputs, ctx=ctx), mx.nd.array(valid, ctx=ctx, dtype=dtype), spans, targets


def scores(task, model, batch, num_instances):
    inputs, valid, spans, _ = batch
    out = model(inputs, valid, spans).astype("float32")
    if task.kind == CHOICE:
        out = out.reshape((num_instances, -1))
    return out


def predict_outputs(task, model, instances, pad_id, batch_size=8, ctx=None, dtype="float32", progress=False):
    """Scores for each instance (numpy, one row per instance, in order)."""
    ctx = ctx or mx.cpu()
    lengths = [max(len(s) for s in inst.seqs) for inst in instances]
    order = sorted(range(len(instances)), key=lambda i: lengths[i])  # length-sorted batches, restored below
    outputs = [None] * len(instances)
    chunks = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    if progress:
        from tqdm import tqdm
        chunks = tqdm(chunks, desc="predict", unit="batch", leave=False)
    with mx.autograd.predict_mode():
        for idx in chunks:
            batch = [instances[i] for i in idx]
            out = scores(task, model, batchify(batch, pad_id, ctx, dtype), len(batch)).asnumpy()
            for i, row in zip(idx, out):
                outputs[i] = row
    return np.stack(outputs) if outputs else np.zeros((0, task.num_outputs))


def evaluate(task, model, examples, instances, pad_id, batch_size, ctx, dtype="float32"):
    outputs = predict_outputs(task, model, instances, pad_id, batch_size, ctx, dtype)
    preds = task.predict(examples, instances, outputs)
    return preds, task.metrics(preds, task.gold(examples))


# ---- the training run -------------------------------------------------------------------------------------
class Data:
    """Examples and encoded instances of each segment the run needs (read before training starts, so bad
    input fails before any output is written)."""

    def __init__(self, task, args, tokenizer, train):
        data_dir = args.data_dir
        options = read_options(args)
        self.train = self.dev = None
        if train:
            examples = task.read(task.train_segment, data_dir, **options)
            self.train = (examples, task.encode(examples, tokenizer, args.max_len, train=True))
            if not any(inst.target is not None for inst in self.train[1]):
                raise BortError(f"{examples[0]['where'].split(':')[0]}: training data has no labels")
        self.dev = {}
        for segment in task.dev_segments:
            examples = task.read(segment, data_dir, **options)
            self.dev[segment] = (examples, task.encode(examples, tokenizer, args.max_len))
        self.test = {}
        for segment, _ in task.test_segments:
            try:
                examples = task.read(segment, data_dir, **options)
            except BortError as err:
                if train and "not found" in str(err):  # training without a test file: no submission
                    log.warning("no test predictions: %s", err)
                    continue
                raise
            self.test[(task.name, segment)] = (examples, task.encode(examples, tokenizer, args.max_len))
        for diagnostic in DIAGNOSTICS.get(task.name, ()):
            diag = get_task(diagnostic)
            diag_dir = getattr(args, "diagnostic_data_dir", None) if diag.benchmark == "glue" else None
            for segment, _ in diag.test_segments:
                try:
                    examples = diag.read(segment, diag_dir or _sibling_dir(data_dir, diag))
                except BortError as err:
                    log.info("no %s predictions: %s", diagnostic, err)
                    continue
                self.test[(diag.name, segment)] = (examples, diag.encode(examples, tokenizer, args.max_len))


def _sibling_dir(data_dir, task):
    """Default location of a diagnostic's data: beside the task's --data_dir, else under $MXNET_HOME."""
    if data_dir:
        sibling = os.path.join(os.path.dirname(os.path.abspath(data_dir)), task.name)
        if os.path.isdir(sibling):
            return sibling
    return task.default_data_dir()


def context(args, dist):
    """The run's context: --gpu (each Horovod rank its own GPU), else the CPU; float16 on CPU only with
    BORT_CPU_FLOAT16=1 (bort.train.precision)."""
    want_gpu = args.gpu is not None and args.gpu != 999
    if want_gpu and mx.context.num_gpus() == 0:
        raise BortError(f"--gpu {args.gpu}: no GPU is visible to this process; leave --gpu out (or pass 999) to "
                        f"run on the CPU")
    ctx, _ = choose_context(args.dtype, use_gpu=want_gpu, local_rank=dist.local_rank,
                            gpu=None if dist.size > 1 else args.gpu)
    return ctx


def run(args, tokenizer):
    """Fine-tune (or with args.only_inference, predict) and write the outputs to args.output_dir.
    Returns the result dict also written to `<output_dir>/result.json`."""
    task = get_task(args.task_name)
    for flag in ("batch_size", "dev_batch_size", "max_len", "epochs", "log_interval"):
        if getattr(args, flag) is not None and getattr(args, flag) <= 0:
            raise BortError(f"--{flag}: must be positive, got {getattr(args, flag)}")
    if args.max_len is not None and args.max_len < 8:
        raise BortError(f"--max_len: must be at least 8, got {args.max_len}")
    check_finetune_inputs(args, tokenizer)  # bort.validation: --max_len and vocabulary against the model
    dist = Distributed(use_horovod=launched_by_horovodrun() and not args.no_distributed)
    ctx = context(args, dist)
    set_seed(args.seed)
    only_inference = args.only_inference or not task.dev_segments
    if only_inference and not args.model_parameters:
        raise BortError(f"--model_parameters: required with --only_inference (and for {task.name}, which has no "
                        "training data); pass a checkpoint written by finetune_bort.py")
    data = Data(task, args, tokenizer, train=not only_inference)
    if dist.is_root:  # only rank 0 writes; bort.locking: one run per --output_dir; the old result.json goes first
        hold_directory(args.output_dir, "--output_dir")
        retract_result(args.output_dir)
        os.makedirs(args.output_dir, exist_ok=True)
    logger = JsonlLogger(os.path.join(args.output_dir, "metrics.jsonl") if dist.is_root else None)
    ckpt = os.path.join(args.output_dir, f"model_bort_{task.name}.params")
    result = {"task": task.name, "checkpoint": None, "dev": {}, "submissions": []}
    if only_inference:
        model = load_task_checkpoint(args.model_parameters, task, ctx, args.dropout)
        ckpt = os.path.abspath(args.model_parameters)
    else:
        model = pretrained_model(task, args, tokenizer, ctx)
        if args.model_parameters:
            load_parameters(model, args.model_parameters)
        best = train(task, model, data, args, dist, ctx, tokenizer.pad_id, logger, ckpt)
        result.update(best)
        if dist.is_root:
            model = load_task_checkpoint(ckpt, task, ctx, args.dropout)
    if args.dtype == "float16":
        model.cast("float16")
    if not dist.is_root:
        dist.shutdown()  # waits for rank 0's predictions, then ends Horovod before interpreter exit
        return result
    result["checkpoint"] = os.path.abspath(ckpt)
    dev_metrics = write_dev_predictions(task, model, data.dev, tokenizer.pad_id, args, ctx)
    if only_inference:
        result["dev"].update(dev_metrics)
        for segment, metrics in dev_metrics.items():
            log.info("%s %s: %s", task.name, segment, _fmt(metrics))
        result["score"] = main_score(task, result["dev"]) if result["dev"] else None
    for (name, segment), (examples, instances) in data.test.items():
        target = get_task(name)
        outputs = predict_outputs(target, model, instances, tokenizer.pad_id, args.dev_batch_size, ctx,
                                  args.dtype, progress=True)
        preds = target.predict(examples, instances, outputs)
        path = target.write_submission(preds, examples, args.output_dir, segment, **submission_options(args))
        result["submissions"].append(path)
        metrics = target.metrics(preds, target.gold(examples))
        if metrics:  # AX-b / AX-g ship labels
            result["dev"][f"{name}:{segment}"] = metrics
        log.info("wrote %s (%d predictions)", path, len(preds))
    result["args"] = {k: v for k, v in vars(args).items() if isinstance(v, (str, int, float, bool, type(None)))}
    result["files"] = file_digests(args.output_dir, [ckpt, os.path.splitext(ckpt)[0] + ".json", task_meta_path(ckpt)]
                                   + result["submissions"])  # result.json is written last: the set's manifest
    write_json(os.path.join(args.output_dir, "result.json"), result)
    dist.shutdown()
    return result


def write_dev_predictions(task, model, dev, pad_id, args, ctx):
    """`<output_dir>/dev_predictions.jsonl`: one line per dev example of the final (best) model, with its
    segment, row number, gold label, prediction and raw scores (what Agora reads to find the mistakes).
    Returns the metrics of each dev segment."""
    metrics, lines = {}, []
    for segment, (examples, instances) in dev.items():
        outputs = predict_outputs(task, model, instances, pad_id, args.dev_batch_size, ctx, args.dtype)
        preds = task.predict(examples, instances, outputs)
        gold = task.gold(examples)
        metrics[segment] = task.metrics(preds, gold)
        per_example = [[] for _ in examples]
        for inst, row in zip(instances, outputs):
            per_example[inst.example].append(np.asarray(row, dtype=np.float64).ravel().tolist())
        for row, (example, pred) in enumerate(zip(examples, preds)):
            lines.append({"segment": segment, "row": row, "idx": example.get("idx"), "where": example["where"],
                          "label": None if gold is None else gold[row], "prediction": pred,
                          "scores": per_example[row][0] if len(per_example[row]) == 1 else per_example[row]})
    with atomic_write(os.path.join(args.output_dir, "dev_predictions.jsonl")) as handle:
        for line in lines:
            handle.write(json.dumps(line) + "\n")
    return metrics


def _fmt(metrics):
    return ", ".join(f"{k}={v:.4f}" for k, v in metrics.items())


def train(task, model, data, args, dist, ctx, pad_id, logger, ckpt):
    from tqdm import tqdm

    examples, instances = data.train
    instances = [inst for inst in instances if inst.target is not None]
    if args.dtype == "float16":
        model.cast("float16")
    model.bort.hybridize(static_alloc=True)
    params = trainable_parameters(model)
    dist.broadcast_parameters(model.collect_params())
    trainer = create_trainer(params, dist, "bertadam", lr=args.lr, weight_decay=args.weight_decay,
                             epsilon=args.epsilon, multi_precision=args.dtype == "float16")
    accumulate = args.accumulate or 1
    if accumulate > 1:
        for param in params.values():
            param.grad_req = "add"
    step = GradientStep(trainer, params, max_norm=1.0,
                        loss_scaler=DynamicLossScaler() if args.dtype == "float16" else None)
    step_size = args.batch_size * accumulate * dist.size
    total_steps = args.training_steps or max(1, int(len(instances) / step_size * args.ramp_up_epochs))
    epochs = 10 ** 6 if args.training_steps else args.epochs
    schedule = LinearWarmupDecay(args.lr, total_steps, int(total_steps * args.warmup_ratio))
    loss_fn = gluon.loss.L2Loss() if task.kind == REGRESS else gluon.loss.SoftmaxCrossEntropyLoss()
    lengths = [max(len(s) for s in inst.seqs) for inst in instances]
    log.info("%s: %d training instances, %d steps of %d, %d warmup", task.name, len(instances), total_steps,
             step_size, schedule.warmup_steps)
    best = {"best_epoch": None, "score": -math.inf, "dev": {}}
    patience = args.early_stop
    num_update, stop = 0, False
    for epoch in range(epochs):
        rng = np.random.RandomState(args.seed * 1000 + epoch)
        batches = make_batches(lengths, args.batch_size, shuffle=True, rng=rng)
        per_rank = len(batches) // dist.size
        batches = batches[dist.rank * per_rank:(dist.rank + 1) * per_rank] if dist.size > 1 else batches
        tic, seen, loss_sum, loss_count = time.time(), 0, 0.0, 0
        bar = tqdm(batches, desc=f"{task.name} epoch {epoch + 1}", unit="batch", disable=not dist.is_root,
                   leave=False)
        step.zero_grad()
        for batch_id, idx in enumerate(bar):
            batch = [instances[i] for i in idx]
            inputs = batchify(batch, pad_id, ctx, args.dtype)
            step_seed(args.seed, num_update * accumulate + batch_id % accumulate, dist.rank)
            with mx.autograd.record():
                out = scores(task, model, inputs, len(batch))
                target = inputs[3].reshape((-1, 1)) if task.kind == REGRESS else inputs[3]
                loss = loss_fn(out, target).mean()
                scaled = loss * step.loss_scale if step.loss_scale != 1.0 else loss
            scaled.backward()
            loss_sum += float(loss.asscalar())
            loss_count += 1
            seen += len(batch)
            if (batch_id + 1) % accumulate == 0:
                num_update += 1
                trainer.set_learning_rate(schedule(num_update))
                step(accumulate)
                if accumulate > 1:
                    step.zero_grad()
                if num_update % args.log_interval == 0 and dist.is_root:
                    rate = seen / max(time.time() - tic, 1e-9)
                    bar.set_postfix(loss=f"{loss_sum / loss_count:.4f}", lr=f"{trainer.learning_rate:.2e}")
                    logger.log(kind="train", epoch=epoch + 1, step=num_update, loss=loss_sum / loss_count,
                               lr=trainer.learning_rate, samples_per_s=rate)
                if args.training_steps and num_update >= total_steps:
                    stop = True
                    break
        bar.close()
        mx.nd.waitall()
        elapsed = time.time() - tic
        improved = 0.0
        if dist.is_root:
            dev = {}
            for segment, (dev_examples, dev_instances) in data.dev.items():
                _, dev[segment] = evaluate(task, model, dev_examples, dev_instances, pad_id, args.dev_batch_size,
                                           ctx, args.dtype)
            score = main_score(task, dev)
            record = {"kind": "dev", "epoch": epoch + 1, "step": num_update, "score": score,
                      "train_loss": loss_sum / max(1, loss_count), "train_samples_per_s": seen / max(elapsed, 1e-9),
                      "epoch_time_s": elapsed}
            for segment, metrics in dev.items():
                record.update({f"{segment}.{k}": v for k, v in metrics.items()})
            logger.log(**record)
            log.info("epoch %d: loss %.4f, %s, %.1f samples/s", epoch + 1, record["train_loss"],
                     "; ".join(f"{s}: {_fmt(m)}" for s, m in dev.items()), record["train_samples_per_s"])
            if not math.isnan(score) and score >= best["score"]:
                best.update(best_epoch=epoch + 1, score=score, dev=dev)
                save_task_checkpoint(model, ckpt, task, {"epoch": epoch + 1, "score": score, "dev": dev})
                improved = 1.0
        improved = dist.allreduce_sum([improved])[0]
        if args.early_stop is not None:
            patience = args.early_stop if improved else patience - 1
            if patience <= 0:
                log.info("early stop after epoch %d", epoch + 1)
                break
        if stop:
            break
    dist.barrier()
    if dist.is_root and best["best_epoch"] is None:
        save_task_checkpoint(model, ckpt, task, {"epoch": None, "score": None})
    return best
