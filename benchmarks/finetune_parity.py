"""Fine-tuning parity with HF transformers: the same pretrained BERT (all-MiniLM-L6-v2), the same training rows,
the same hyperparameters, on CPU; dev score (the official task score) and training throughput side by side.

    python -m benchmarks.finetune_parity --tasks SST-2 RTE MRPC STS-B --seeds 1 2 3 --threads 2 \
        --output docs/results/json/finetune_parity.json

For each seed, then each task: this repository's `finetune_bort.py --pretrained_parameters <HF dir>` (its own
WordPiece tokenizer through gluon-nlp's BERTTokenizer), then HF's `BertForSequenceClassification` with HF's tokenizer
and a plain PyTorch loop (AdamW, linear warm-up and decay, clipping at 1.0), each in its own process with the same
OMP_NUM_THREADS, one after the other, so both see the same machine load. Training rows: the first --train_rows
rows of the released train.tsv; dev: the official dev file, scored by this repository's metrics for both. The score
reported is the final epoch's (finetune_bort.py also keeps its best epoch; that is in the JSON as `best_score`).
Results are written after every run, so an interrupted sweep keeps what it finished (`--resume` goes on from it);
`--table_only` prints the table of a JSON file.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

from bort.errors import BortError, run_cli
from bort.io import write_json
from bort.paths import REPO_ROOT

GLUE = os.path.join(os.path.dirname(REPO_ROOT), "shared", "real_data", "glue_data")
NO_DECAY = ("bias", "LayerNorm.weight")


def training_copy(task, glue_dir, rows, work_dir):
    """work_dir/<task>: the first `rows` training rows (after the header) and the official dev file, bytes unchanged."""
    out = os.path.join(work_dir, task)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(glue_dir, task, "train.tsv"), "rb") as handle:
        lines = handle.readlines()[:rows + 1]
    with open(os.path.join(out, "train.tsv"), "wb") as handle:
        handle.write(b"".join(lines))
    with open(os.path.join(glue_dir, task, "dev.tsv"), "rb") as src, open(os.path.join(out, "dev.tsv"), "wb") as dst:
        dst.write(src.read())
    return out


def thread_env(threads):
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    env.pop("BORT_THREADS_DEFAULTED", None)
    return env


def run_ours(task, data_dir, model_dir, seed, args, out_dir):
    """finetune_bort.py on the HF directory; (final-epoch score, best score, examples/s of training)."""
    cmd = [sys.executable, os.path.join(REPO_ROOT, "finetune_bort.py"), "--task_name", task, "--data_dir", data_dir,
           "--pretrained_parameters", model_dir, "--output_dir", out_dir, "--seed", str(seed), "--gpu", "999",
           "--epochs", str(args.epochs), "--ramp_up_epochs", str(args.epochs), "--batch_size", str(args.batch_size),
           "--lr", str(args.lr), "--epsilon", str(args.epsilon), "--warmup_ratio", str(args.warmup_ratio),
           "--weight_decay", str(args.weight_decay), "--max_len", str(args.max_len), "--init", "gaussian",
           "--prob", "0.02", "--dev_batch_size", "64", "--log_interval", "1000"]
    proc = subprocess.run(cmd, env=thread_env(args.threads), capture_output=True, text=True, check=False)
    if proc.returncode:
        raise BortError(f"finetune_bort.py failed on {task} seed {seed}: {proc.stderr[-2000:]}")
    with open(os.path.join(out_dir, "metrics.jsonl"), encoding="utf-8") as handle:
        epochs = [r for r in map(json.loads, handle) if r.get("kind") == "dev"]
    seen = sum(r["train_samples_per_s"] * r["epoch_time_s"] for r in epochs)
    seconds = sum(r["epoch_time_s"] for r in epochs)
    return {"score": epochs[-1]["score"], "best_score": max(r["score"] for r in epochs),
            "examples_per_s": seen / seconds, "train_seconds": seconds}


def run_hf(task, data_dir, model_dir, seed, args):
    """The HF side in a child process (torch and MXNet never share one); its result dict."""
    spec = {"task": task, "data_dir": data_dir, "model_dir": model_dir, "seed": seed, "threads": args.threads,
            "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "epsilon": args.epsilon,
            "warmup_ratio": args.warmup_ratio, "weight_decay": args.weight_decay, "max_len": args.max_len}
    proc = subprocess.run([sys.executable, "-m", "benchmarks.finetune_parity", "--hf_worker", json.dumps(spec)],
                          env=thread_env(args.threads), cwd=REPO_ROOT, capture_output=True, text=True, check=False)
    if proc.returncode:
        raise BortError(f"the HF run failed on {task} seed {seed}: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def hf_worker(spec):
    """Fine-tune with HF transformers + PyTorch as a researcher would; prints one JSON line."""
    import torch
    from transformers import AutoTokenizer, BertForSequenceClassification, get_linear_schedule_with_warmup

    from bort.finetune.task_kinds import RegressionTask
    from bort.finetune.tasks import get_task, main_score

    torch.set_num_threads(spec["threads"])
    torch.manual_seed(spec["seed"])
    rng = np.random.RandomState(spec["seed"])
    task = get_task(spec["task"])
    regression = isinstance(task, RegressionTask)
    tokenizer = AutoTokenizer.from_pretrained(spec["model_dir"])  # the checkpoint's tokenizer.json

    def encode(examples):
        pairs = [(ex["text_a"], ex.get("text_b")) for ex in examples]
        return [tokenizer(a, b, truncation=True, max_length=spec["max_len"]) for a, b in pairs]

    def targets(examples):
        return [task.label_index(ex["label"], ex["where"]) for ex in examples]

    train = task.read("train", spec["data_dir"])
    dev = task.read(task.dev_segments[0], spec["data_dir"])
    train_enc, train_y = encode(train), targets(train)
    dev_enc = encode(dev)
    model = BertForSequenceClassification.from_pretrained(spec["model_dir"], num_labels=1 if regression else
                                                          len(task.labels))
    decay = [p for n, p in model.named_parameters() if not n.endswith(NO_DECAY)]
    no_decay = [p for n, p in model.named_parameters() if n.endswith(NO_DECAY)]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": spec["weight_decay"]},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=spec["lr"], eps=spec["epsilon"])
    per_epoch = -(-len(train) // spec["batch_size"])
    total = per_epoch * spec["epochs"]
    schedule = get_linear_schedule_with_warmup(optimizer, int(total * spec["warmup_ratio"]), total)

    def collate(encodings):
        return tokenizer.pad([{k: e[k] for k in ("input_ids", "token_type_ids", "attention_mask")}
                              for e in encodings], return_tensors="pt")

    seconds = 0.0
    for _ in range(spec["epochs"]):
        model.train()
        order = rng.permutation(len(train))
        tic = time.time()
        for start in range(0, len(order), spec["batch_size"]):
            idx = order[start:start + spec["batch_size"]]
            batch = collate([train_enc[i] for i in idx])
            labels = torch.tensor([train_y[i] for i in idx], dtype=torch.float32 if regression else torch.long)
            loss = model(**batch, labels=labels).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad()
        seconds += time.time() - tic
    model.eval()
    outputs = []
    with torch.no_grad():
        for start in range(0, len(dev), 64):
            outputs.append(model(**collate(dev_enc[start:start + 64])).logits.float().numpy())
    outputs = np.concatenate(outputs)
    preds = task.predict(dev, None, outputs)  # one row per example: argmax, or the regression value
    metrics = task.metrics(preds, task.gold(dev))
    print(json.dumps({"score": main_score(task, {"dev": metrics}), "metrics": metrics,
                      "examples_per_s": len(train) * spec["epochs"] / seconds, "train_seconds": seconds}))


def table(results):
    """Markdown table: per task, each seed's dev score of both, their means and the throughputs."""
    lines = ["| task | seed | ours dev | HF dev | ours ex/s | HF ex/s |", "|---|---|---|---|---|---|"]
    for task in dict.fromkeys(r["task"] for r in results):
        rows = [r for r in results if r["task"] == task]
        for r in rows:
            lines.append(f"| {task} | {r['seed']} | {100 * r['ours']['score']:.2f} | {100 * r['hf']['score']:.2f} "
                         f"| {r['ours']['examples_per_s']:.1f} | {r['hf']['examples_per_s']:.1f} |")
        mean = {side: {k: float(np.mean([r[side][k] for r in rows])) for k in ("score", "examples_per_s")}
                for side in ("ours", "hf")}
        lines.append(f"| **{task}** | mean of {len(rows)} | **{100 * mean['ours']['score']:.2f}** | "
                     f"**{100 * mean['hf']['score']:.2f}** | **{mean['ours']['examples_per_s']:.1f}** | "
                     f"**{mean['hf']['examples_per_s']:.1f}** |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", nargs="+", default=["SST-2", "RTE", "MRPC", "STS-B"])
    p.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    p.add_argument("--glue_dir", default=GLUE)
    p.add_argument("--model_dir", default=None, help="HF directory (default: the packaged all-MiniLM-L6-v2)")
    p.add_argument("--train_rows", type=int, default=2000)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--epsilon", type=float, default=1e-6)
    p.add_argument("--warmup_ratio", type=float, default=0.1)
    p.add_argument("--weight_decay", type=float, default=0.01)
    p.add_argument("--max_len", type=int, default=128)
    p.add_argument("--threads", type=int, default=2, help="OMP_NUM_THREADS (and torch threads) of both sides")
    p.add_argument("--output", default="finetune_parity.json")
    p.add_argument("--table_only", action="store_true", help="print the table of --output and stop")
    p.add_argument("--resume", action="store_true",
                   help="keep the runs already in --output (same settings) and do only the missing task/seed pairs")
    p.add_argument("--hf_worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.hf_worker:
        return hf_worker(json.loads(args.hf_worker))
    if args.table_only:
        with open(args.output, encoding="utf-8") as handle:
            print(table(json.load(handle)["runs"]))
        return None
    from bort.weights.packaged import minilm_checkpoint

    model_dir = args.model_dir or minilm_checkpoint()
    settings = {k: v for k, v in vars(args).items() if k not in ("hf_worker", "table_only", "output", "resume")}
    report = {"command": "python -m benchmarks.finetune_parity " + " ".join(argv or sys.argv[1:]),
              "settings": settings, "cpu": os.cpu_count(), "runs": []}
    if args.resume and os.path.isfile(args.output):
        with open(args.output, encoding="utf-8") as handle:
            earlier = json.load(handle)
        if earlier["settings"] | {"tasks": None, "seeds": None} != settings | {"tasks": None, "seeds": None}:
            raise BortError(f"{args.output}: written with other settings ({earlier['settings']}); --resume needs the "
                            "same ones (tasks and seeds may differ)")
        report["runs"] = earlier["runs"]
        report["command"] = earlier["command"] + " ; resumed: " + report["command"]
    done = {(r["task"], r["seed"]) for r in report["runs"]}
    with tempfile.TemporaryDirectory(prefix="finetune_parity.") as work:
        data = {task: training_copy(task, args.glue_dir, args.train_rows, work) for task in args.tasks}
        for seed in args.seeds:
            for task in args.tasks:
                if (task, seed) in done:
                    continue
                ours = run_ours(task, data[task], model_dir, seed, args, os.path.join(work, f"out_{task}_{seed}"))
                hf = run_hf(task, data[task], model_dir, seed, args)
                report["runs"].append({"task": task, "seed": seed, "ours": ours, "hf": hf,
                                       "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
                write_json(args.output, report)
                print(f"{task} seed {seed}: ours {ours['score']:.4f} ({ours['examples_per_s']:.1f} ex/s), "
                      f"HF {hf['score']:.4f} ({hf['examples_per_s']:.1f} ex/s)", flush=True)
    print(table(report["runs"]))
    return report


if __name__ == "__main__":
    run_cli(main)()
