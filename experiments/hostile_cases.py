"""The cases of `experiments/hostile_sweep.py`: malformed, out-of-range and concurrent inputs built in a work
directory, each the command line of a CLI as a user would run it, with what must hold after a refusal.

`CASE_CLASSES` maps each class name (what --only/--skip take) to the function that adds its cases to a `Sweep`.
The inputs the classes share (an HF directory, good shards, an SST-2 checkpoint) are built on first use, so a
sweep of one class builds only what that class needs.
"""
import collections
import functools
import json
import os
import shutil
import struct
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

VOCAB_DIR = os.path.join(ROOT, "test_data", "vocab")
VOCAB = ["--vocab_json", os.path.join(VOCAB_DIR, "vocab.json"), "--merges", os.path.join(VOCAB_DIR, "merges.txt")]
GPT2_VOCAB = ["--encoder_json", os.path.join(VOCAB_DIR, "encoder.json"), "--vocab_bpe",
              os.path.join(VOCAB_DIR, "vocab.bpe")]
SAMPLE = os.path.join(ROOT, "test_data", "sample_text.txt")
TINY_FT = ["--pretrained_parameters", "none", "--model_config", "bort_tiny", "--gpu", "999", "--max_len", "32",
           "--epochs", "1", "--batch_size", "8", "--no_distributed"]
CONVERT = ["scripts/convert_checkpoint.py", "hf2gluon", "--output"]
PRETRAIN = ["run_pretraining_distillation_hvd.py", "--model", "bort_tiny", "--teacher_model", "roberta_tiny",
            "--random_teacher", "--dtype", "float32", "--num_steps", "1", "--batch_size", "4", "--no_progress"]
FINETUNE = ["finetune_bort.py", "--task_name", "SST-2", "--data_dir", os.path.join(ROOT, "test_data/glue/SST-2")]
TOKENIZE = ["-m", "bort.text.tokenizer", SAMPLE]

# argv: the command line after `python`; absent: paths that must not exist afterwards; forbid: text the error
# must not contain; reader: a dataset-reader case (reported apart); holder: a directory another process holds;
# lines: {path: number of lines} for a valid input that must be handled (exit 0, those files written); pending:
# the change that fixes the case when it lands on another branch (None: fixed on this one).
Case = collections.namedtuple("Case", "cls name argv absent forbid reader holder lines pending")


class Sweep:
    """The cases of a sweep and the work directory their inputs are built in."""

    def __init__(self, work):
        self.work = work
        self.cases = []
        self.mounts = []
        self.mount_refused = False

    def path(self, *parts):
        return os.path.join(self.work, *parts)

    def out(self, name):
        """Where a case's run writes (it must not exist after a refusal)."""
        return self.path("out", name)

    def add(self, cls, name, argv, absent=(), forbid=(), reader=False, holder=None, lines=None, pending=None):
        self.cases.append(Case(cls, name, argv, tuple(absent), tuple(forbid), reader, holder, lines, pending))

    def disk(self, name, size="64k", read_only=False, leave=None):
        """A tmpfs of `size` mounted at <work>/disks/<name> (read-only, or filled to `leave` free bytes when
        asked); None where mounting is not allowed. `close` unmounts it."""
        path = self.path("disks", name)
        os.makedirs(path, exist_ok=True)
        options = f"size={size}" + (",ro" if read_only else "")
        if shutil.which("mount") is None or subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", path],
                                                           capture_output=True).returncode:
            self.mount_refused = True
            return None
        self.mounts.append(path)
        if leave is not None:
            stat = os.statvfs(path)
            with open(os.path.join(path, "filler"), "wb") as handle:
                handle.write(b"\0" * max(stat.f_bavail * stat.f_frsize - leave, 0))
        return path

    def close(self):
        for path in self.mounts:
            subprocess.run(["umount", "-l", path], capture_output=True)
        self.mounts = []

    @functools.cached_property
    def hf(self):
        """A good HF directory (bort_tiny as RoBERTa with its MLM head)."""
        return _hf_dir(self.path("hf", "good"))

    @functools.cached_property
    def shards(self):
        """A directory of good shards of the sample text."""
        return _shards(self.path("shards", "good"))

    @functools.cached_property
    def ckpt(self):
        """A fine-tuned SST-2 checkpoint of bort_tiny."""
        return _sst2_checkpoint(self.path("sst2", "model_bort_SST-2.params"))

    @functools.cached_property
    def teacher(self):
        """A random roberta_tiny teacher (.params + .json) of the test vocabulary."""
        return save_random_model(self.path("teacher", "teacher.params"), "roberta_tiny")

    @functools.cached_property
    def mlm(self):
        """A random bort_tiny with its MLM head (.params + .json) of the test vocabulary."""
        return save_random_model(self.path("mlm", "bort_tiny.params"), "bort_tiny")

    @property
    def predict(self):
        return ["scripts/predict.py", "--task_name", "SST-2", "--model_parameters", self.ckpt, "--data_dir",
                os.path.join(ROOT, "test_data/glue/SST-2")]


# ---- fixtures ---------------------------------------------------------------------------------------------------
def write_json(path, obj):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(obj, handle)


def _hf_dir(path):
    """A random bort_tiny with its MLM head as an HF RoBERTa directory (as tests/test_convert_hostile.py's)."""
    import mxnet as mx

    from bort.model import build_model
    from bort.weights.checkpoint import finish_deferred_init
    from bort.weights.convert import gluon_to_hf

    mx.random.seed(0)
    model = finish_deferred_init(build_model("bort_tiny"))
    gluon_to_hf(model, model.config, path, arch="roberta")
    return path


def _hf_variant(sweep, good, name, config_edit=None, header_edit=None, index=None):
    dest = sweep.path("hf", name)
    os.makedirs(dest)
    with open(os.path.join(good, "config.json"), encoding="utf-8") as handle:
        config = json.load(handle)
    write_json(os.path.join(dest, "config.json"), config_edit(config) if config_edit else config)
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
        write_json(os.path.join(dest, "model.safetensors.index.json"), index)
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


def shard_variant(sweep, good, name, edit=None, meta=None):
    from data.pretraining_format import load_shard, write_shard

    shard = load_shard(os.path.join(good, "part-000.npz"))
    batch = shard.batch
    if edit:
        edit(batch)
    dest = sweep.path("shards", name)
    os.makedirs(dest)
    write_shard(os.path.join(dest, "part-000.npz"), batch, dict(shard.metadata, **(meta or {})))
    return dest


def save_random_model(path, name, vocab_size=1005):
    import mxnet as mx

    from bort.model import build_model, get_config
    from bort.weights.checkpoint import finish_deferred_init, save_parameters

    mx.random.seed(0)
    config = get_config(name, vocab_size=vocab_size)
    save_parameters(finish_deferred_init(build_model(config)), path, config)
    return path


def _sst2_checkpoint(path):
    import mxnet as mx

    from bort.finetune.checkpoints import build_task_model, save_task_checkpoint
    from bort.model import get_config
    from bort.finetune.tasks import get_task

    mx.random.seed(0)
    task = get_task("SST-2")
    save_task_checkpoint(build_task_model(task, get_config("bort_tiny", vocab_size=1005)), path, task)
    return path


def copy_task(sweep, src, name, edit_file, edit):
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
    write_json(os.path.join(dest, "vocab.json"), vocab_edit(vocab) if vocab_edit else vocab)
    with open(VOCAB[3], encoding="utf-8") as handle:
        lines = handle.read().rstrip("\n").split("\n")
    with open(os.path.join(dest, "merges.txt"), "w", encoding="utf-8") as handle:
        handle.write("\n".join(lines[:len(lines) - merges_drop]) + "\n")
    return ["--vocab_json", os.path.join(dest, "vocab.json"), "--merges", os.path.join(dest, "merges.txt")]


def patched(patch, script, argv):
    """argv for `python -c`: apply a monkeypatch (e.g. a full disk), then run a CLI's main under run_cli."""
    code = (f"import runpy\n{patch}\nmain = runpy.run_path({os.path.join(ROOT, script)!r})['main']\n"
            f"from bort.errors import run_cli\nrun_cli(main)({argv!r})")
    return ["-c", code]


ENOSPC = ("import errno, os\n"
          "def full(*a, **k):\n    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))\n")


# ---- the cases, one function per class ------------------------------------------------------------------------
def out_of_range_data(sweep, cls):
    shards, pretrain, out = sweep.shards, PRETRAIN, sweep.out

    def big_id(batch):
        batch.input_ids[3] = 5000

    def big_label(batch):
        batch.masked_ids[0] = 5000

    for name, kwargs in (("shard token id >= vocab_size", dict(edit=big_id)),
                         ("shard label >= vocab_size", dict(edit=big_label)),
                         ("shards of two vocabularies", dict(meta={"vocab_size": 1200}))):
        variant = shard_variant(sweep, shards, name.replace(" ", "_"), **kwargs)
        data = f"{shards},{variant}" if "two" in name else variant
        sweep.add(cls, name, pretrain + ["--data", data, "--ckpt_dir", out(name)], absent=[out(name)])
    long = _shards(sweep.path("shards", "long"), max_seq_length=200)
    sweep.add(cls, "instances longer than the student's positions",
              pretrain + ["--data", long, "--ckpt_dir", out("long")], absent=[out("long")])
    sweep.add(cls, "fine-tuning --max_len above the model's maximum",
              FINETUNE + TINY_FT + VOCAB + ["--max_len", "200", "--output_dir", out("maxlen")], absent=[out("maxlen")])
    sweep.add(cls, "fine-tuned checkpoint vs tokenizer of another size (finetune)",
              FINETUNE + TINY_FT + GPT2_VOCAB + ["--only_inference", "--model_parameters", sweep.ckpt, "--output_dir",
                                                 out("vocab_ft")], absent=[out("vocab_ft")])
    sweep.add(cls, "fine-tuned checkpoint vs tokenizer of another size (predict)",
              sweep.predict + GPT2_VOCAB + ["--segment", "dev", "--output_dir", out("vocab_pred")],
              absent=[out("vocab_pred")])


def concurrent_runs(sweep, cls):
    out = sweep.out
    sweep.add(cls, "second fine-tuning run into a held --output_dir",
              FINETUNE + TINY_FT + VOCAB + ["--output_dir", out("held")], holder=out("held"))
    sweep.add(cls, "second pretraining run into a held --ckpt_dir",
              PRETRAIN + ["--data", sweep.shards, "--ckpt_dir", out("held_ckpt")], holder=out("held_ckpt"))


def malformed_files(sweep, cls):
    hf, convert, pretrain, out = sweep.hf, CONVERT, PRETRAIN, sweep.out
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
            from bort.weights.hf_files import read_safetensors
            names = read_safetensors(os.path.join(hf, "model.safetensors"))
            index = {"weight_map": dict.fromkeys(names, "../good/model.safetensors")}
        sweep.add(cls, name, convert + [out(name) + ".params", "--hf_dir",
                                        _hf_variant(sweep, hf, name.replace(" ", "_"), index=index)])
    predict = sweep.predict
    sweep.add(cls, "predict unknown --segment", predict + VOCAB + ["--segment", "bogus", "--output_dir", out("seg")],
              absent=[out("seg")])
    sweep.add(cls, "predict --max_len 2", predict + VOCAB + ["--segment", "dev", "--max_len", "2", "--output_dir",
                                                            out("len")], absent=[out("len")])
    shards = sweep.shards
    state_dir = sweep.path("ckpt_state")
    subprocess.run([sys.executable] + pretrain + ["--data", shards, "--ckpt_dir", state_dir, "--ckpt_interval", "1"],
                   cwd=ROOT, capture_output=True, check=True, timeout=600)
    with open(os.path.join(state_dir, "step_0000001.state.json"), encoding="utf-8") as handle:
        state = json.load(handle)
    state["data_positions"] = "everywhere"
    write_json(os.path.join(state_dir, "step_0000001.state.json"), state)
    sweep.add(cls, ".state.json with the right JSON but the wrong structure",
              pretrain + ["--num_steps", "2", "--data", shards,
                              "--ckpt_dir", state_dir, "--start_step", "1"])
    sweep.add(cls, "full disk while writing a shard",
              patched(ENOSPC + "import shutil; shutil.copyfileobj = full", "create_pretraining_data.py",
                       ["--input_file", SAMPLE, "--output_dir", out("enospc_shard"), "--num_workers", "1",
                        "--no_progress"] + VOCAB), absent=[out("enospc_shard")])
    sweep.add(cls, "full disk while writing a checkpoint",
              patched(ENOSPC + "import bort.weights.ndarray_file as F; F.HashingWriter.write = full", "scripts/convert_checkpoint.py",
                       ["hf2gluon", "--hf_dir", hf, "--output", out("enospc_ckpt.params")]),
              absent=[out("enospc_ckpt.params")])


def memory_bombs(sweep, cls):
    """Tiny files that would exhaust memory."""
    hf, convert, out = sweep.hf, CONVERT, sweep.out
    sweep.add(cls, "vocabulary with an id of 1e10",
              TOKENIZE + _vocab_variant(sweep, "huge_id", vocab_edit=lambda v: dict(v, **{"<mask>": 10 ** 10})))
    sweep.add(cls, "HF config claiming 1e8 layers",
              convert + [out("layers.params"), "--hf_dir",
                         _hf_variant(sweep, hf, "layers", config_edit=lambda c: dict(c, num_hidden_layers=10 ** 8))])
    params = sweep.path("layers", "bort.params")
    subprocess.run([sys.executable] + convert + [params, "--hf_dir", hf], cwd=ROOT, capture_output=True, check=True)
    with open(os.path.splitext(params)[0] + ".json", encoding="utf-8") as handle:
        config = json.load(handle)
    write_json(os.path.splitext(params)[0] + ".json", dict(config, num_layers=10 ** 8))
    sweep.add(cls, "params JSON claiming 1e8 layers (export)",
              ["scripts/convert_checkpoint.py", "gluon2hf", "--params", params, "--output", out("export")],
              absent=[out("export")])


def smaller(sweep, cls):
    """Smaller leniencies."""
    hf, out = sweep.hf, sweep.out
    sweep.add(cls, "merges truncated at a line boundary", TOKENIZE + _vocab_variant(sweep, "trunc", merges_drop=20))
    torch_dir = sweep.path("hf", "pickled")
    os.makedirs(torch_dir)
    shutil.copy(os.path.join(hf, "config.json"), torch_dir)
    subprocess.run([sys.executable, "-c", "import os, torch\nclass P:\n    def __reduce__(self):\n"
                    f"        return (os.system, ('touch {sweep.path('pwned')}',))\n"
                    f"torch.save({{'w': P()}}, {os.path.join(torch_dir, 'pytorch_model.bin')!r})"],
                   check=True, capture_output=True)
    sweep.add(cls, "pickled pytorch_model.bin (no weights_only=False advice)",
              CONVERT + [out("torch.params"), "--hf_dir", torch_dir], absent=[sweep.path("pwned")],
              forbid=["weights_only"])
    blank = sweep.path("blank.txt")
    with open(blank, "w", encoding="utf-8") as handle:
        handle.write("\n\n\n")
    sweep.add(cls, "no documents: no empty output directory left",
              ["create_pretraining_data.py", "--input_file", blank, "--output_dir", out("empty_shards"),
               "--no_progress"] + VOCAB, absent=[out("empty_shards")])
    sweep.add(cls, "checkpoint of another task: no empty output directory left",
              ["finetune_bort.py", "--task_name", "CoLA", "--data_dir", os.path.join(ROOT, "test_data/glue/CoLA"),
               "--only_inference", "--model_parameters", sweep.ckpt, "--output_dir", out("other_task")] + TINY_FT
              + VOCAB, absent=[out("other_task")])


def dataset_readers(sweep, cls):
    """Reported separately: another change owns the readers."""
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
        data = copy_task(sweep, src, name.replace(" ", "_"), edit_file, edit)
        sweep.add(cls, name, reader_ft + [sweep.out(name), "--task_name", task, "--data_dir", data]
                  + TINY_FT + VOCAB, reader=True)


READER_CLASS = "dataset readers"
CASE_CLASSES = {"out-of-range data": out_of_range_data, "concurrent runs": concurrent_runs,
                "malformed files": malformed_files, "memory bombs": memory_bombs, "smaller": smaller,
                READER_CLASS: dataset_readers}


def build_cases(sweep, only=None, skip=(), classes=None):
    """Build the inputs of every class of `classes` (default CASE_CLASSES; or only `only`, minus `skip`) and add
    their cases to `sweep`."""
    for cls, add_cases in (classes or CASE_CLASSES).items():
        if (only is None or cls == only) and cls not in skip:
            add_cases(sweep, cls)
    return sweep.cases
