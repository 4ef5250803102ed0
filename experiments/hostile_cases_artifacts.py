"""The third round's cases of `experiments/hostile_sweep.py` (issue #24): damaged artifacts, faults in the middle of
a run, the environment (full and read-only disks, outputs that are files), inference inputs.

Full and read-only disks are real: small tmpfs mounts under the work directory (`Sweep.disk`), unmounted when the
sweep ends; where mounting is not allowed those cases are left out (the tests inject the errno instead).
"""
import os
import re
import shutil

from experiments.hostile_cases import FINETUNE, PRETRAIN, ROOT, TINY_FT, VOCAB, shard_variant

CACHE_TEACHER = ["scripts/cache_teacher.py", "--cpu_only", "--no_progress", "--topk", "4"]


def _cache(sweep):
    """The teacher cache of the good shards (top-4 at T = 2), built once."""
    out = sweep.path("cache", "good")
    if not os.path.isdir(out):
        from bort.pretrain.teacher_cache import build_cache

        build_cache(sweep.shards, out, sweep.teacher, topk=4, temperature=2.0, cpu_only=True, progress=False)
    return out


def _cache_variant(sweep, name, edit):
    """A copy of the good cache whose part-000 has `edit(meta, arrays)` applied."""
    from bort.pretrain.teacher_cache import ARRAYS, read_cache, write_cache

    good, dest = _cache(sweep), sweep.path("cache", name)
    shutil.copytree(good, dest)
    path = os.path.join(dest, "part-000.npz.topk")
    meta, arrays = read_cache(path)
    arrays = {n: a.copy() for n, a in arrays.items()}
    edit(meta, arrays)
    write_cache(path, meta, *(arrays[n] for n in ARRAYS))
    return dest


def _nan_params(sweep):
    """bort_tiny's parameters with one NaN weight (and its JSON)."""
    import mxnet as mx

    src = sweep.mlm
    dest = sweep.path("nan", "bort_tiny.params")
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    arrays = mx.nd.load(src)
    name = sorted(arrays)[0]
    arrays[name][0] = float("nan")
    mx.nd.save(dest, arrays)
    shutil.copy(os.path.splitext(src)[0] + ".json", os.path.splitext(dest)[0] + ".json")
    return dest


def corrupted_artifacts(sweep, cls):
    shards, out = sweep.shards, sweep.out
    cached = PRETRAIN + ["--data", shards, "--distillation_temperature", "2.0", "--teacher_cache"]

    def set_row(name, value, row=3):
        def edit(meta, arrays):
            arrays[name][row] = value
        return edit

    for name, edit in (("teacher cache: token id >= vocabulary", set_row("topk_ids", 60000)),
                       ("teacher cache: NaN log_normalizer", set_row("log_normalizer", float("nan"))),
                       ("teacher cache: log_normalizer below its top-k", set_row("log_normalizer", -80.0)),
                       ("teacher cache: rest mass 1.5", set_row("rest_mass", 1.5)),
                       ("teacher cache: meta k a string", lambda meta, arrays: meta.update(k="4"))):
        slug = re.sub(r"[^A-Za-z0-9]+", "_", name.split(": ")[1].split(" (")[0])
        sweep.add(cls, name, cached + [_cache_variant(sweep, slug, edit), "--ckpt_dir", out(slug)],
                  absent=[out(slug)])
    student, no_model = sweep.mlm, PRETRAIN[:1] + PRETRAIN[3:]  # PRETRAIN without its --model bort_tiny
    sweep.add(cls, "--student_params JSON of another architecture than --model",
              no_model + ["--model", "bort_4_8_768_1024", "--data", shards, "--student_params", student,
                          "--ckpt_dir", out("arch")], absent=[out("arch")])
    sweep.add(cls, "the teacher's checkpoint as --student_params (its file)",
              [a for a in no_model if a != "--random_teacher"] + [
                  "--data", shards, "--student_params", sweep.teacher, "--teacher_ckpt_dir", sweep.teacher,
                  "--ckpt_dir", out("teacher_file")], absent=[out("teacher_file")])
    sweep.add(cls, "the teacher's checkpoint as --student_params (its architecture)",
              no_model + ["--data", shards, "--student_params", sweep.teacher, "--ckpt_dir", out("teacher_arch")],
              absent=[out("teacher_arch")])
    sweep.add(cls, "--pretrained_parameters JSON of another architecture than --model_config",
              FINETUNE + TINY_FT[4:] + VOCAB + ["--pretrained_parameters", student, "--model_config",
                                                "bort_4_8_768_1024", "--output_dir", out("ft_arch")],
              absent=[out("ft_arch")])
    tasks = sweep.path("tasks", "axg_odd")
    for name in ("RTE", "AX-g"):
        shutil.copytree(os.path.join(ROOT, "test_data", "superglue", name), os.path.join(tasks, name))
    axg = os.path.join(tasks, "AX-g", "AX-g.jsonl")
    with open(axg, encoding="utf-8") as handle:
        lines = handle.read().splitlines()[:3]
    with open(axg, "w", encoding="utf-8") as handle:
        handle.write("\n".join(lines) + "\n")
    sweep.add(cls, "AX-g.jsonl with an odd number of lines (valid: every line predicted)",
              ["finetune_bort.py", "--task_name", "SuperGLUE-RTE", "--data_dir", os.path.join(tasks, "RTE"),
               "--output_dir", out("axg")] + TINY_FT + VOCAB, lines={os.path.join(out("axg"), "AX-g.jsonl"): 3})
    sweep.add(cls, "student checkpoint with a NaN weight",
              PRETRAIN + ["--data", shards, "--student_params", _nan_params(sweep), "--ckpt_dir", out("nan")],
              absent=[os.path.join(out("nan"), "step_0000001" + ext) for ext in (".params", ".state.json")])
    pad = shard_variant(sweep, shards, "pad_id_outside", meta={"pad_id": 5000})
    sweep.add(cls, "shard pad_id outside the vocabulary", PRETRAIN + ["--data", pad, "--ckpt_dir", out("pad")],
              absent=[out("pad")])


def faults_mid_run(sweep, cls):
    shards, teacher = sweep.shards, sweep.teacher
    step = ("step_0000001.params", "step_0000001.json", "step_0000001.states", "step_0000001.state.json")
    for name, size in (("parameters", "300k"), ("optimizer state", "900k")):
        disk = sweep.disk("ckpt_" + name.split()[0], size)
        if disk:
            ck = os.path.join(disk, "ck")
            sweep.add(cls, f"full disk while writing a pretraining checkpoint's {name}",
                      PRETRAIN + ["--data", shards, "--ckpt_dir", ck, "--ckpt_interval", "1"],
                      absent=[os.path.join(ck, f) for f in step])
    disk = sweep.disk("ft_ckpt", "300k")
    if disk:
        ft = os.path.join(disk, "ft")
        sweep.add(cls, "full disk while writing a fine-tuning checkpoint",
                  FINETUNE + TINY_FT + VOCAB + ["--output_dir", ft],
                  absent=[os.path.join(ft, f) for f in ("model_bort_SST-2.params", "model_bort_SST-2.json",
                                                        "result.json")])
    disk = sweep.disk("cache_full", leave=4096)
    if disk:
        cache = os.path.join(disk, "cache")
        sweep.add(cls, "full disk while writing a teacher cache",
                  CACHE_TEACHER + ["--data", shards, "--teacher_ckpt_dir", teacher, "--cache_dir", cache],
                  absent=[cache])


def environment(sweep, cls):
    shards, teacher, hf, out = sweep.shards, sweep.teacher, sweep.hf, sweep.out
    cache = CACHE_TEACHER + ["--data", shards, "--teacher_ckpt_dir", teacher, "--cache_dir"]
    convert = ["scripts/convert_checkpoint.py", "hf2gluon", "--hf_dir", hf, "--output"]
    predict = sweep.predict + VOCAB + ["--segment", "dev", "--mode", "fp32", "--output_dir"]
    full = sweep.disk("full", leave=0)
    if full:
        sweep.add(cls, "full disk: fine-tuning's lock file", FINETUNE + TINY_FT + VOCAB + ["--output_dir",
                  os.path.join(full, "ft")], absent=[os.path.join(full, "ft")])
        sweep.add(cls, "full disk: pretraining's lock file", PRETRAIN + ["--data", shards, "--ckpt_dir",
                  os.path.join(full, "ck")], absent=[os.path.join(full, "ck")])
        sweep.add(cls, "full disk: convert_checkpoint hf2gluon", convert + [os.path.join(full, "m.params")],
                  absent=[os.path.join(full, "m.params"), os.path.join(full, "m.json")])
    ro = sweep.disk("read_only", read_only=True)
    if ro:
        for name, argv in (("predict.py --output_dir", predict), ("cache_teacher.py --cache_dir", cache),
                           ("convert_checkpoint hf2gluon --output", convert),
                           ("finetune_bort.py --output_dir", FINETUNE + TINY_FT + VOCAB + ["--output_dir"]),
                           ("pretraining --ckpt_dir", PRETRAIN + ["--data", shards, "--ckpt_dir"])):
            target = os.path.join(ro, "out.params" if "hf2gluon" in name else "out")
            sweep.add(cls, f"read-only disk: {name}", argv + [target])
    a_file = sweep.path("a_file")
    with open(a_file, "w", encoding="utf-8") as handle:
        handle.write("x\n")
    sweep.add(cls, "predict.py --output_dir an existing file", predict + [a_file])
    sweep.add(cls, "cache_teacher.py --cache_dir an existing file", cache + [a_file])
    sweep.add(cls, "convert_checkpoint hf2gluon --output an existing directory", convert + [sweep.work])
    sweep.add(cls, "cache_teacher.py into a cache directory another run holds", cache + [out("held_cache")],
              holder=out("held_cache"))


def inference_inputs(sweep, cls):
    fill = ["scripts/fill_mask.py", "--params", sweep.mlm] + VOCAB
    sweep.add(cls, "fill_mask.py --top_k 0 (printed nothing)", fill + ["--top_k", "0", "The <mask> sat."])
    sweep.add(cls, "fill_mask.py --top_k -3 (printed the vocabulary)", fill + ["--top_k", "-3", "The <mask> sat."])
    sweep.add(cls, "fill_mask.py sentence that is not UTF-8", fill + [b"caf\xe9 <mask>"])
    sweep.add(cls, "fill_mask.py --model of another architecture than the JSON",
              fill + ["--model", "bort_4_8_768_1024", "The <mask> sat."])
    sweep.add(cls, "predict.py --calib_size 0: the error is the last line",
              sweep.predict + VOCAB + ["--segment", "dev", "--calib_size", "0", "--output_dir", sweep.out("calib")],
              absent=[sweep.out("calib")])


ARTIFACT_CLASSES = {"corrupted artifacts": corrupted_artifacts, "faults mid-run": faults_mid_run,
                    "environment": environment, "inference inputs": inference_inputs}
