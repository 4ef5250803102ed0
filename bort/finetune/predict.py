"""Scores and predictions of a task model: batches of instances, raw scores, dev metrics, dev prediction files.

`make_batches` (length bucketing) and `batchify` feed training too; `predict_outputs` (model + instances ->
scores, one row per instance), `evaluate` (-> predictions and metrics) and `write_dev_predictions` are what the
fine-tuning run and Agora use. CPU inference in reduced precision is bort.inference's.
"""
import json
import os

import bort  # noqa: F401
import mxnet as mx
import numpy as np

from bort.io import atomic_write
from bort.progress import Progress
from bort.train.distributed import to_device


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
    """inputs (N*K, L), valid_length (N*K,), spans (N*K, S, 2) or None, targets (N,) or None: NDArrays on `ctx`,
    their copies to a GPU queued, not waited for."""
    seqs = [seq for inst in instances for seq in inst.seqs]
    length = max(len(s) for s in seqs)
    inputs = np.full((len(seqs), length), pad_id, dtype=np.int32)
    for row, seq in enumerate(seqs):
        inputs[row, :len(seq)] = seq
    valid = np.array([len(s) for s in seqs], dtype=np.float32)
    spans = None
    if instances[0].spans is not None:
        spans = to_device(np.array([sp for inst in instances for sp in inst.spans]), ctx, "int32")
    targets = None
    if instances[0].target is not None:
        targets = to_device(np.array([inst.target for inst in instances]), ctx, "float32")
    return to_device(inputs, ctx), to_device(valid, ctx, dtype), spans, targets


def scores(model, batch, num_instances):
    """float32 scores (N, outputs) of a batchified batch of N instances; an instance of K sequences (multiple
    choice) gets one row of K scores."""
    inputs, valid, spans, _ = batch
    return model(inputs, valid, spans).astype("float32").reshape((num_instances, -1))


def predict_outputs(task, model, instances, pad_id, batch_size=8, ctx=None, dtype="float32", progress=False):
    """Scores for each instance (numpy, one row per instance, in order)."""
    ctx = ctx or mx.cpu()
    lengths = [max(len(s) for s in inst.seqs) for inst in instances]
    order = sorted(range(len(instances)), key=lambda i: lengths[i])  # length-sorted batches, restored below
    outputs = [None] * len(instances)
    chunks = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    if progress:
        chunks = Progress(chunks, desc="predict", unit="batch", leave=False)  # a bar on a terminal only
    with mx.autograd.predict_mode():
        for idx in chunks:
            batch = [instances[i] for i in idx]
            out = scores(model, batchify(batch, pad_id, ctx, dtype), len(batch)).asnumpy()
            for i, row in zip(idx, out):
                outputs[i] = row
    return np.stack(outputs) if outputs else np.zeros((0, task.num_outputs))


def evaluate(task, model, examples, instances, pad_id, batch_size, ctx, dtype="float32"):
    """(predictions, metrics) of `model` on labelled examples and their instances."""
    outputs = predict_outputs(task, model, instances, pad_id, batch_size, ctx, dtype)
    preds = task.predict(examples, instances, outputs)
    return preds, task.metrics(preds, task.gold(examples))


def write_dev_predictions(task, model, dev, pad_id, batch_size, ctx, dtype, output_dir):
    """`<output_dir>/dev_predictions.jsonl`: one line per dev example of the final (best) model, with its
    segment, row number, gold label, prediction and raw scores (what Agora reads to find the mistakes).
    `dev`: {segment: (examples, instances)}. Returns the metrics of each dev segment."""
    metrics, lines = {}, []
    for segment, (examples, instances) in dev.items():
        outputs = predict_outputs(task, model, instances, pad_id, batch_size, ctx, dtype)
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
    with atomic_write(os.path.join(output_dir, "dev_predictions.jsonl")) as handle:
        for line in lines:
            handle.write(json.dumps(line) + "\n")
    return metrics
