"""Stand-ins for Agora's tests: a fine-tuning run that takes a blink, and an external labeler command.

Imported the ordinary way (`from agora_fakes import fake_finetune`): pytest puts tests/ on sys.path.
"""
import argparse
import os
import sys

import bort  # noqa: F401

from bort.finetune.checkpoints import build_task_model, save_task_checkpoint, task_meta_path
from bort.finetune.tasks import get_task
from bort.io import write_json
from bort.locking import file_digests
from bort.model import get_config


def fake_finetune(argv):
    """finetune_bort.main's stand-in for SST-2: a tiny untrained checkpoint and result.json (its files' digests);
    score = f(lr, seed, training rows), so later rounds (more rows) score higher."""
    p = argparse.ArgumentParser()
    for flag in ("--output_dir", "--data_dir", "--task_name"):
        p.add_argument(flag)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    args, _ = p.parse_known_args(argv)
    task = get_task("SST-2")
    model = build_task_model(task, get_config("bort_tiny", vocab_size=1005))
    ckpt = os.path.join(args.output_dir, "model_bort_SST-2.params")
    save_task_checkpoint(model, ckpt, task)
    rows = len(task.read("train", args.data_dir))
    score = 0.5 + 0.1 * (args.seed % 1000) + (0.2 if args.lr == 1e-3 else 0.0) + rows / 10000
    write_json(os.path.join(args.output_dir, "result.json"), {
        "score": score, "checkpoint": ckpt, "best_epoch": 1, "dev": {"dev": {"accuracy": score}},
        "files": file_digests(args.output_dir, [ckpt, os.path.splitext(ckpt)[0] + ".json", task_meta_path(ckpt)])})


KEYWORD_LABELER = """import json, sys
for line in sys.stdin:
    words = set(json.loads(line)["text_a"].split())
    print(json.dumps({"label": "1" if words & {"wonderful", "good", "lovely", "nice", "happy", "great"} else "0"}))
"""


def keyword_labeler(folder):
    """A --labeler_command that gets the SST-2 fixture right from its keywords."""
    script = os.path.join(folder, "labeler.py")
    with open(script, "w", encoding="utf-8") as handle:
        handle.write(KEYWORD_LABELER)
    return f"{sys.executable} {script}"
