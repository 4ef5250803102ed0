"""Hostile-input sweep: build malformed, out-of-range and concurrent inputs in a temporary directory, run every
CLI on them as a user would, and classify each outcome.

    python -m experiments.hostile_sweep [--json sweep.json] [--keep DIR] [--only CLASS] [--trials 5]

Outcomes: `one-line error` (non-zero exit, one `error: ...` line, no traceback, nothing left behind that the
case forbids), `traceback`, `silently accepted` (exit 0 on input that must be refused), `left output` (an empty
output directory or a partial file stayed behind), `bad message` (e.g. passes on torch's weights_only=False
advice), `hang` (timeout). Cases of the dataset readers (owned by another change) are reported in their own rows.
Then SIGTERM and kill -9 trials of create_pretraining_data count surviving workers and leftover shards.
Prints a table and writes JSON.
"""
import argparse
import collections
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

VOCAB_DIR = os.path.join(ROOT, "test_data", "vocab")
VOCAB = ["--vocab_json", os.path.join(VOCAB_DIR, "vocab.json"), "--merges", os.path.join(VOCAB_DIR, "merges.txt")]
GPT2_VOCAB = ["--encoder_json", os.path.join(VOCAB_DIR, "encoder.json"), "--vocab_bpe",
              os.path.join(VOCAB_DIR, "vocab.bpe")]
SAMPLE = os.path.join(ROOT, "test_data", "sample_text.txt")
TINY_FT = ["--pretrained_parameters", "none", "--model_config", "bort_tiny", "--gpu", "999", "--max_len", "32",
           "--epochs", "1", "--batch_size", "8", "--no_distributed"]
Case = collections.namedtuple("Case", "cls name argv absent forbid reader holder")


class Sweep:
    def __init__(self, work):
        self.work = work
        self.cases = []

    def path(self, *parts):
        return os.path.join(self.work, *parts)

    def add(self, cls, name, argv, absent=(), forbid=(), reader=False, holder=None):
        self.cases.append(Case(cls, name, argv, tuple(absent), tuple(forbid), reader, holder))


# ---- fixtures ---------------------------------------------------------------------------------------------------
def _write_json(path, obj):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(obj, handle)


def _hf_dir(path):
    import mxnet as mx

    from bort.weights import convert
    from bort.model import build_model, get_config

    mx.random.seed(0)
    model = build_model("bort_tiny", use_decoder=True)
    model(mx.nd.zeros((1, 2)), mx.nd.array([2]), mx.nd.zeros((1, 1)))
    convert.gluon_to_hf(model, get_config("bort_tiny"), path, arch="roberta")
    return path


def _hf_variant(sweep, good, name, config_edit=None, header_edit=None, index=None):
    dest = sweep.path("hf", name)
    os.makedirs(dest)
    with open(os.path.join(good, "config.json"), encoding="utf-8") as handle:
        config = json.load(handle)
    _write_json(os.path.join(dest, "config.json"), config_edit(config) if config_edit else config)
    with open(os.path.join(good, "model.safetensors"), "rb") as handle:
        data = handle.read()
    if header_edit:
        (length,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8:8 + length])
        header_edit(header)
        raw = json.dumps(header).encode()
        data = struct.pack("<Q", len(raw)) + raw + data[8 + length:]
    weights = "model-1.safetensors" if index is not None else "model.safetensors"
    with open(os.path.join(dest, weights), "wb") as handle:
        handle.write(data)
    if index is not None:
        _write_json(os.path.join(dest, "model.safetensors.index.json"), index)
    return dest


def _first(header):
    return header[sorted(k for k in header if k != "__metadata__")[0]]


def _shards(out, max_seq_length=32):
    from bort.text.tokenizer import load_tokenizer
    from data.pretraining import create_pretraining_data
    from data.pretraining_instances import InstanceOptions

    tokenizer = load_tokenizer(vocab_json=VOCAB[1], merges=VOCAB[3])
    create_pretraining_data(SAMPLE, out, tokenizer, InstanceOptions(max_seq_length=max_seq_length), progress=False)
    return out


def _shard_variant(sweep, good, name, edit=None, meta=None):
    from data.pretraining_format import load_shard, write_shard

    shard = load_shard(os.path.join(good, "part-000.npz"))
    batch = shard.batch
    if edit:
        edit(batch)
    dest = sweep.path("shards", name)
    os.makedirs(dest)
    write_shard(os.path.join(dest, "part-000.npz"), batch, dict(shard.metadata, **(meta or {})))
    return dest


def _sst2_checkpoint(path):
    import mxnet as mx

    from bort.finetune.checkpoints import build_task_model, save_task_checkpoint
    from bort.model import get_config
    from bort.finetune.tasks import get_task

    mx.random.seed(0)
    task = get_task("SST-2")
    save_task_checkpoint(build_task_model(task, get_config("bort_tiny", vocab_size=1005)), path, task)
    return path


def _copy_task(sweep, src, name, edit_file, edit):
    dest = sweep.path("tasks", name)
    shutil.copytree(os.path.join(ROOT, src), dest)
    path = os.path.join(dest, edit_file)
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(edit(text))
    return dest


def _edit_first_jsonl(edit):
    def apply(text):
        lines = text.splitlines()
        record = json.loads(lines[0])
        edit(record)
        return "\n".join([json.dumps(record)] + lines[1:]) + "\n"
    return apply


def _vocab_variant(sweep, name, vocab_edit=None, merges_drop=0):
    dest = sweep.path("vocab", name)
    os.makedirs(dest)
    with open(VOCAB[1], encoding="utf-8") as handle:
        vocab = json.load(handle)
    _write_json(os.path.join(dest, "vocab.json"), vocab_edit(vocab) if vocab_edit else vocab)
    with open(VOCAB[3], encoding="utf-8") as handle:
        lines = handle.read().rstrip("\n").split("\n")
    with open(os.path.join(dest, "merges.txt"), "w", encoding="utf-8") as handle:
        handle.write("\n".join(lines[:len(lines) - merges_drop]) + "\n")
    return ["--vocab_json", os.path.join(dest, "vocab.json"), "--merges", os.path.join(dest, "merges.txt")]


def _patched(patch, script, argv):
    """argv for `python -c`: apply a monkeypatch (e.g. a full disk), then run a CLI's main under run_cli."""
    code = (f"import runpy\n{patch}\nmain = runpy.run_path({os.path.join(ROOT, script)!r})['main']\n"
            f"from bort.errors import run_cli\nrun_cli(main)({argv!r})")
    return ["-c", code]


ENOSPC = ("import errno, os\n"
          "def full(*a, **k):\n    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))\n")


def build_cases(sweep):
    hf = _hf_dir(sweep.path("hf", "good"))
    shards = _shards(sweep.path("shards", "good"))
    ckpt = _sst2_checkpoint(sweep.path("sst2", "model_bort_SST-2.params"))
    convert = ["scripts/convert_checkpoint.py", "hf2gluon", "--output"]
    pretrain = ["run_pretraining_distillation_hvd.py", "--model", "bort_tiny", "--teacher_model", "roberta_tiny",
                "--random_teacher", "--dtype", "float32", "--num_steps", "1", "--batch_size", "4", "--no_progress"]
    finetune = ["finetune_bort.py", "--task_name", "SST-2", "--data_dir", os.path.join(ROOT, "test_data/glue/SST-2")]
    predict = ["scripts/predict.py", "--task_name", "SST-2", "--model_parameters", ckpt, "--data_dir",
               os.path.join(ROOT, "test_data/glue/SST-2")]
    tokenize = ["-m", "bort.text.tokenizer", SAMPLE]

    def out(name):
        return sweep.path("out", name)

    # 2. Out-of-range data
    def big_id(batch):
        batch.input_ids[3] = 5000

    def big_label(batch):
        batch.masked_ids[0] = 5000

    cls = "out-of-range data"
    for name, kwargs in (("shard token id >= vocab_size", dict(edit=big_id)),
                         ("shard label >= vocab_size", dict(edit=big_label)),
                         ("shards of two vocabularies", dict(meta={"vocab_size": 1200}))):
        variant = _shard_variant(sweep, shards, name.replace(" ", "_"), **kwargs)
        data = f"{shards},{variant}" if "two" in name else variant
        sweep.add(cls, name, pretrain + ["--data", data, "--ckpt_dir", out(name)], absent=[out(name)])
    long = _shards(sweep.path("shards", "long"), max_seq_length=200)
    sweep.add(cls, "instances longer than the student's positions",
              pretrain + ["--data", long, "--ckpt_dir", out("long")], absent=[out("long")])
    sweep.add(cls, "fine-tuning --max_len above the model's maximum",
              finetune + TINY_FT + VOCAB + ["--max_len", "200", "--output_dir", out("maxlen")], absent=[out("maxlen")])
    sweep.add(cls, "fine-tuned checkpoint vs tokenizer of another size (finetune)",
              finetune + TINY_FT + GPT2_VOCAB + ["--only_inference", "--model_parameters", ckpt, "--output_dir",
                                                 out("vocab_ft")], absent=[out("vocab_ft")])
    sweep.add(cls, "fine-tuned checkpoint vs tokenizer of another size (predict)",
              predict + GPT2_VOCAB + ["--segment", "dev", "--output_dir", out("vocab_pred")],
              absent=[out("vocab_pred")])

    # 3. Concurrent runs
    cls = "concurrent runs"
    sweep.add(cls, "second fine-tuning run into a held --output_dir",
              finetune + TINY_FT + VOCAB + ["--output_dir", out("held")], holder=out("held"))
    sweep.add(cls, "second pretraining run into a held --ckpt_dir",
              pretrain + ["--data", shards, "--ckpt_dir", out("held_ckpt")], holder=out("held_ckpt"))

    # 5. Structure
    cls = "malformed files"
    for name, edit in (("config.json not an object", lambda c: [c]),
                       ("config.json zero heads", lambda c: dict(c, num_attention_heads=0)),
                       ("config.json sizes as strings", lambda c: dict(c, hidden_size="64")),
                       ("config.json layer_norm_eps a string", lambda c: dict(c, layer_norm_eps="tiny")),
                       ("config.json hidden_act a list", lambda c: dict(c, hidden_act=["gelu"]))):
        sweep.add(cls, name, convert + [out(name) + ".params", "--hf_dir",
                                        _hf_variant(sweep, hf, name.replace(" ", "_"), config_edit=edit)],
                  absent=[out(name) + ".params"])
    for name, edit in (("safetensors offsets as strings", lambda h: _first(h).update(data_offsets=["0", "8"])),
                       ("safetensors negative shape", lambda h: _first(h).update(shape=[-4, -16])),
                       ("safetensors dtype a number", lambda h: _first(h).update(dtype=7))):
        sweep.add(cls, name, convert + [out(name) + ".params", "--hf_dir",
                                        _hf_variant(sweep, hf, name.replace(" ", "_"), header_edit=edit)])
    for name, index in (("index.json not an object", ["model-1.safetensors"]),
                        ("index.json outside the HF directory", "outside")):
        if index == "outside":
            from bort.weights.convert import read_safetensors
            names = read_safetensors(os.path.join(hf, "model.safetensors"))
            index = {"weight_map": dict.fromkeys(names, "../good/model.safetensors")}
        sweep.add(cls, name, convert + [out(name) + ".params", "--hf_dir",
                                        _hf_variant(sweep, hf, name.replace(" ", "_"), index=index)])
    sweep.add(cls, "predict unknown --segment", predict + VOCAB + ["--segment", "bogus", "--output_dir", out("seg")],
              absent=[out("seg")])
    sweep.add(cls, "predict --max_len 2", predict + VOCAB + ["--segment", "dev", "--max_len", "2", "--output_dir",
                                                            out("len")], absent=[out("len")])
    state_dir = sweep.path("ckpt_state")
    subprocess.run([sys.executable] + pretrain + ["--data", shards, "--ckpt_dir", state_dir, "--ckpt_interval", "1"],
                   cwd=ROOT, capture_output=True, check=True, timeout=600)
    with open(os.path.join(state_dir, "step_0000001.state.json"), encoding="utf-8") as handle:
        state = json.load(handle)
    state["data_positions"] = "everywhere"
    _write_json(os.path.join(state_dir, "step_0000001.state.json"), state)
    sweep.add(cls, ".state.json with the right JSON but the wrong structure",
              pretrain[:5] + ["--num_steps", "2", "--batch_size", "4", "--no_progress", "--data", shards,
                              "--ckpt_dir", state_dir, "--start_step", "1"])
    sweep.add(cls, "full disk while writing a shard",
              _patched(ENOSPC + "import shutil; shutil.copyfileobj = full", "create_pretraining_data.py",
                       ["--input_file", SAMPLE, "--output_dir", out("enospc_shard"), "--num_workers", "1",
                        "--no_progress"] + VOCAB), absent=[out("enospc_shard")])
    sweep.add(cls, "full disk while writing a checkpoint",
              _patched(ENOSPC + "import bort, mxnet as mx; mx.nd.save = full", "scripts/convert_checkpoint.py",
                       ["hf2gluon", "--hf_dir", hf, "--output", out("enospc_ckpt.params")]),
              absent=[out("enospc_ckpt.params")])

    # 6. Tiny files that would exhaust memory
    cls = "memory bombs"
    sweep.add(cls, "vocabulary with an id of 1e10",
              tokenize + _vocab_variant(sweep, "huge_id", vocab_edit=lambda v: dict(v, **{"<mask>": 10 ** 10})))
    sweep.add(cls, "HF config claiming 1e8 layers",
              convert + [out("layers.params"), "--hf_dir",
                         _hf_variant(sweep, hf, "layers", config_edit=lambda c: dict(c, num_hidden_layers=10 ** 8))])
    params = sweep.path("layers", "bort.params")
    subprocess.run([sys.executable] + convert + [params, "--hf_dir", hf], cwd=ROOT, capture_output=True, check=True)
    with open(os.path.splitext(params)[0] + ".json", encoding="utf-8") as handle:
        config = json.load(handle)
    _write_json(os.path.splitext(params)[0] + ".json", dict(config, num_layers=10 ** 8))
    sweep.add(cls, "params JSON claiming 1e8 layers (export)",
              ["scripts/convert_checkpoint.py", "gluon2hf", "--params", params, "--output", out("export")],
              absent=[out("export")])

    # 7. Smaller leniencies
    cls = "smaller"
    sweep.add(cls, "merges truncated at a line boundary", tokenize + _vocab_variant(sweep, "trunc", merges_drop=20))
    torch_dir = sweep.path("hf", "pickled")
    os.makedirs(torch_dir)
    shutil.copy(os.path.join(hf, "config.json"), torch_dir)
    subprocess.run([sys.executable, "-c", "import os, torch\nclass P:\n    def __reduce__(self):\n"
                    f"        return (os.system, ('touch {sweep.path('pwned')}',))\n"
                    f"torch.save({{'w': P()}}, {os.path.join(torch_dir, 'pytorch_model.bin')!r})"],
                   check=True, capture_output=True)
    sweep.add(cls, "pickled pytorch_model.bin (no weights_only=False advice)",
              convert + [out("torch.params"), "--hf_dir", torch_dir], absent=[sweep.path("pwned")],
              forbid=["weights_only"])
    blank = sweep.path("blank.txt")
    with open(blank, "w", encoding="utf-8") as handle:
        handle.write("\n\n\n")
    sweep.add(cls, "no documents: no empty output directory left",
              ["create_pretraining_data.py", "--input_file", blank, "--output_dir", out("empty_shards"),
               "--no_progress"] + VOCAB, absent=[out("empty_shards")])
    sweep.add(cls, "checkpoint of another task: no empty output directory left",
              ["finetune_bort.py", "--task_name", "CoLA", "--data_dir", os.path.join(ROOT, "test_data/glue/CoLA"),
               "--only_inference", "--model_parameters", ckpt, "--output_dir", out("other_task")] + TINY_FT + VOCAB,
              absent=[out("other_task")])

    # Dataset readers (reported separately: another change owns them)
    reader_ft = ["finetune_bort.py", "--output_dir"]
    for name, task, src, edit_file, edit in (
            ("MultiRC answers as strings", "MultiRC", "test_data/superglue/MultiRC", "train.jsonl",
             _edit_first_jsonl(lambda r: r["passage"]["questions"][0].update(answers=["yes", "no"]))),
            ("MultiRC question without answers", "MultiRC", "test_data/superglue/MultiRC", "val.jsonl",
             _edit_first_jsonl(lambda r: r["passage"]["questions"][0].update(answers=[]))),
            ("ReCoRD entity without end", "ReCoRD", "test_data/superglue/ReCoRD", "train.jsonl",
             _edit_first_jsonl(lambda r: r["passage"]["entities"][0].pop("end"))),
            ("WiC non-integer offsets", "WiC", "test_data/superglue/WiC", "train.jsonl",
             _edit_first_jsonl(lambda r: r.update(start1="nineteen"))),
            ("GLUE row with extra TSV fields", "SST-2", "test_data/glue/SST-2", "train.tsv",
             lambda text: text.replace("\t0\n", "\t0\textra\tfields\n", 1)),
            ("RACE question beyond its options", "RACE", "test_data/race", "train/high/1.txt",
             lambda text: json.dumps(dict(json.loads(text), questions=json.loads(text)["questions"] + ["Why?"])))):
        data = _copy_task(sweep, src, name.replace(" ", "_"), edit_file, edit)
        sweep.add("dataset readers", name, reader_ft + [out(name), "--task_name", task, "--data_dir", data]
                  + TINY_FT + VOCAB, reader=True)


# ---- running and classifying --------------------------------------------------------------------------------------
def _holder(directory):
    code = (f"import time\nfrom bort.locking import hold_directory\n"
            f"hold_directory({directory!r}); print('held', flush=True); time.sleep(600)")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    proc.stdout.readline()
    return proc


def run_case(case, timeout):
    holder = _holder(case.holder) if case.holder else None
    start = time.time()
    try:
        proc = subprocess.run([sys.executable] + list(case.argv), cwd=ROOT, capture_output=True, text=True,
                              timeout=timeout, env=dict(os.environ, PYTHONPATH=ROOT))
        rc, stderr = proc.returncode, proc.stderr
    except subprocess.TimeoutExpired:
        rc, stderr = None, ""
    finally:
        if holder:
            holder.kill()
            holder.communicate()
    lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    if rc is None:
        outcome = "hang"
    elif "Traceback (most recent call last)" in stderr:
        outcome = "traceback"
    elif rc == 0:
        outcome = "silently accepted"
    elif any(os.path.exists(p) for p in case.absent):
        outcome = "left output"
    elif any(f in stderr for f in case.forbid):
        outcome = "bad message"
    elif len(lines) == 1:
        outcome = "one-line error"
    else:
        outcome = "traceback"  # a non-zero exit without our one line
    return {"class": case.cls, "name": case.name, "reader": case.reader, "outcome": outcome, "exit": rc,
            "error": lines[-1] if lines else (stderr.strip().splitlines() or [""])[-1],
            "seconds": round(time.time() - start, 1)}


def _descendants(pid):
    parents = collections.defaultdict(list)
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z":
            parents[int(fields[1])].append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found += [child]
            todo.append(child)
    return found


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def shutdown_trials(work, trials, sig):
    """create_pretraining_data with 2 workers, interrupted by `sig` once the workers run; survivors after 10 s."""
    corpus = os.path.join(work, "corpus.txt")
    if not os.path.exists(corpus):
        with open(SAMPLE, encoding="utf-8") as handle:
            text = handle.read().strip() + "\n\n"
        with open(corpus, "w", encoding="utf-8") as handle:
            while handle.tell() < 6e6:
                handle.write(text)
    survivors = leftovers = 0
    for trial in range(trials):
        out = os.path.join(work, f"shutdown_{sig}_{trial}")
        proc = subprocess.Popen([sys.executable, "create_pretraining_data.py", "--input_file", corpus, "--output_dir",
                                 out, "--num_workers", "2", "--no_progress", "--dupe_factor", "40"] + VOCAB, cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline, workers = time.time() + 60, []
        while time.time() < deadline and len(workers) < 2 and proc.poll() is None:
            time.sleep(0.2)
            workers = _descendants(proc.pid)
        time.sleep(0.5 + trial * 0.3)
        proc.send_signal(sig)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            survivors += 1
        time.sleep(10)
        alive = [p for p in workers if _alive(p)]
        survivors += len(alive)
        for pid in alive:
            os.kill(pid, signal.SIGKILL)
        if os.path.isdir(out) and any(n.endswith((".npz", ".tmp")) for n in os.listdir(out)):
            leftovers += 1
    return {"signal": signal.Signals(sig).name, "trials": trials, "surviving_workers": survivors,
            "trials_with_shard_files_left": leftovers}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", default="hostile_sweep.json", help="where to write the results")
    parser.add_argument("--keep", default=None, help="build the inputs here and keep them")
    parser.add_argument("--only", default=None, help="run only the cases of this class")
    parser.add_argument("--skip", action="append", default=[], help="skip the cases of this class (repeatable)")
    parser.add_argument("--timeout", type=int, default=300, help="seconds per case")
    parser.add_argument("--trials", type=int, default=3, help="SIGTERM and kill -9 trials each (0: none)")
    args = parser.parse_args(argv)
    work = args.keep or tempfile.mkdtemp(prefix="bort_sweep_")
    os.makedirs(work, exist_ok=True)
    sweep = Sweep(work)
    build_cases(sweep)
    results = []
    for case in sweep.cases:
        if (args.only and case.cls != args.only) or case.cls in args.skip:
            continue
        results.append(run_case(case, args.timeout))
        r = results[-1]
        print(f"{r['outcome']:18} {r['class']:18} {r['name']}: {r['error']}"[:200], flush=True)
    trials = [shutdown_trials(work, args.trials, sig) for sig in (signal.SIGTERM, signal.SIGKILL)] \
        if args.trials else []
    table = collections.OrderedDict()
    for r in results:
        row = table.setdefault(r["class"], collections.Counter())
        row["inputs"] += 1
        row[r["outcome"]] += 1
    print("\n| class | inputs | one-line error | traceback | silently accepted | other |")
    print("|---|---|---|---|---|---|")
    for cls, row in list(table.items()) + [("total (without dataset readers)", sum(
            (c for k, c in table.items() if k != "dataset readers"), collections.Counter()))]:
        other = row["inputs"] - row["one-line error"] - row["traceback"] - row["silently accepted"]
        print(f"| {cls} | {row['inputs']} | {row['one-line error']} | {row['traceback']} | "
              f"{row['silently accepted']} | {other} |")
    for t in trials:
        print(f"{t['signal']} of create_pretraining_data: {t['trials']} trials, {t['surviving_workers']} surviving "
              f"workers, {t['trials_with_shard_files_left']} with shard files left")
    with open(args.json, "w", encoding="utf-8") as handle:
        json.dump({"cases": results, "shutdown": trials, "work_dir": work}, handle, indent=2)
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    bad = [r for r in results if not r["reader"] and r["outcome"] != "one-line error"]
    return 1 if bad or any(t["surviving_workers"] or t["trials_with_shard_files_left"] for t in trials) else 0


if __name__ == "__main__":
    sys.exit(main())
