"""Predict a task's segment with a fine-tuned checkpoint on CPU in one of bort.inference.modes' precision modes.

`predict_segment(PredictConfig(...), tokenizer)` is what scripts/predict.py calls: it reads the segment with the
task's reader, encodes it like fine-tuning, runs the encoder in the chosen mode over length buckets, writes the
leaderboard file for a test segment or `<task>.<segment>.predictions.jsonl` otherwise, and returns the metrics when
the segment has labels. INT8 is calibrated on the first `calib_size` sequences of `calib_segment` (default: the
segment being predicted).
"""
import dataclasses
import json
import logging
import os
import time

from bort.finetune.tasks import get_task
from bort.io import atomic_write
from bort.validation import check_max_len, check_positive, check_segment, check_vocab_matches

log = logging.getLogger("predict")


@dataclasses.dataclass
class PredictConfig:
    """The settings of one prediction (scripts/predict.py's flags of the same names)."""

    task_name: str = None  # a name of bort.finetune.tasks.task_names() (required)
    model_parameters: str = None  # a fine-tuned checkpoint of this task (.params; required)
    data_dir: str = None  # the task's data folder (None: the task's usual place)
    segment: str = "test"  # segment to predict (dev, test, dev_matched, ...)
    mode: str = "int8"  # fp32, fused, bf16 or int8 (bort.inference.modes)
    batch_size: int = 32  # sequences per batch
    max_len: int = 512  # maximum sequence length (with special tokens; at most the model's positions)
    calib_segment: str = None  # segment whose sentences calibrate INT8 (None: segment)
    calib_size: int = 256  # sequences used to calibrate INT8
    calib_mode: str = "naive"  # naive or entropy calibration
    output_dir: str = "./predictions"  # where the predictions file goes


def check_config(config, task):
    check_positive({"batch_size": config.batch_size, "max_len": config.max_len, "calib_size": config.calib_size})
    check_segment(task, config.segment)
    if config.calib_segment:
        check_segment(task, config.calib_segment, "--calib_segment")


def predict_segment(config, tokenizer, progress=True):
    """Predict config.segment and write the predictions file. Returns {"path", "metrics" ({} without labels),
    "num_sequences", "seconds", "sequences_per_s", "native_ops"}."""
    from bort.finetune.checkpoints import load_task_checkpoint
    from bort.inference.modes import calibration_batches, predict_task, prepare

    task = get_task(config.task_name)
    check_config(config, task)  # bort.validation: flags, then the model
    model = load_task_checkpoint(config.model_parameters, task)
    check_vocab_matches(model.config, tokenizer, config.model_parameters)
    max_len = min(config.max_len, model.config.max_length)
    check_max_len(max_len, model.config, config.model_parameters)
    examples = task.read(config.segment, config.data_dir)
    instances = task.encode(examples, tokenizer, max_len)
    calib = None
    if config.mode == "int8":
        calib_instances = instances
        if config.calib_segment and config.calib_segment != config.segment:
            calib_instances = task.encode(task.read(config.calib_segment, config.data_dir), tokenizer, max_len)
        calib = calibration_batches(calib_instances, min(config.batch_size, 8), config.calib_size, tokenizer.pad_id,
                                    max_len)
    start = time.time()
    encoder = prepare(model.bort, config.mode, calib_batches=calib, calib_mode=config.calib_mode)
    log.info("mode %s ready in %.1fs (Bort native operators %s)", config.mode, time.time() - start,
             "on" if encoder.native_ops else "off")
    num_seqs = sum(len(inst.seqs) for inst in instances)
    start = time.time()
    from tqdm import tqdm

    with tqdm(total=num_seqs, desc=f"predict {task.name} {config.segment} ({config.mode})", unit="seq",
              disable=not progress) as bar:
        outputs = predict_task(model.head, encoder, instances, tokenizer.pad_id, config.batch_size, max_len,
                               progress=bar.update)
    elapsed = time.time() - start
    log.info("%d sequences in %.1fs: %.1f sequences/s (%s, %s threads)", num_seqs, elapsed,
             num_seqs / max(elapsed, 1e-9), config.mode, os.environ.get("OMP_NUM_THREADS"))
    preds = task.predict(examples, instances, outputs)
    return {"path": write_predictions(task, config, examples, preds),
            "metrics": task.metrics(preds, task.gold(examples)), "num_sequences": num_seqs, "seconds": elapsed,
            "sequences_per_s": num_seqs / max(elapsed, 1e-9), "native_ops": encoder.native_ops}


def write_predictions(task, config, examples, preds):
    """The leaderboard file of a test segment, else `<task>.<segment>.predictions.jsonl` (idx, prediction)."""
    os.makedirs(config.output_dir, exist_ok=True)
    if any(segment == config.segment for segment, _ in task.test_segments):
        return task.write_submission(preds, examples, config.output_dir, config.segment)
    path = os.path.join(config.output_dir, f"{task.name}.{config.segment}.predictions.jsonl")
    with atomic_write(path) as handle:
        for ex, pred in zip(examples, preds):
            handle.write(json.dumps({"idx": ex["idx"], "prediction": pred}) + "\n")
    return path
