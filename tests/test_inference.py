"""Inference modes agree with the float32 BortModel; bucketing keeps the caller's order."""
import bort  # noqa: F401
import mxnet as mx
import numpy as np
import pytest

from bort.errors import BortError
from bort.inference.fast_encoder import FastEncoder, interleave_qkv
from bort.inference.modes import MODES, bucket_order, encoder_flops, predict_bucketed, prepare
from bort.model import build_model, get_config
from helpers import MERGES, VOCAB_FLAGS, VOCAB_JSON

# max |mode - fp32| relative to max |fp32| on the tiny models
TOLERANCE = {"fp32": 1e-6, "fused": 1e-5, "bf16": 2e-2, "int8": 5e-2}


def _model(name):
    mx.random.seed(1)
    config = get_config(name, dropout=0.0)
    model = build_model(config, use_decoder=False)
    # non-trivial biases and norms, so a mis-copied parameter shows
    for pname, param in model.collect_params().items():
        if pname.endswith(("bias", "beta")):
            param.set_data(mx.nd.random.normal(0, 0.1, shape=param.shape))
        elif pname.endswith("gamma"):
            param.set_data(1 + mx.nd.random.normal(0, 0.1, shape=param.shape))
    return model


def _batch(rng, config, batch=4, length=16):
    ids = rng.randint(3, config.vocab_size, size=(batch, length)).astype(np.float32)
    valid = rng.randint(3, length + 1, size=(batch,)).astype(np.float32)
    valid[0] = length
    types = (rng.rand(batch, length) > 0.5).astype(np.float32) if config.token_type_vocab_size else None
    return ids, valid, types


def _reference(model, ids, valid, types):
    args = [mx.nd.array(ids), mx.nd.array(valid)]
    if types is not None:
        return model(*args, None, mx.nd.array(types)).asnumpy()
    return model(*args).asnumpy()


@pytest.fixture(scope="module")
def bort_tiny():
    return _model("bort_tiny")


@pytest.mark.parametrize("mode", MODES)
def test_mode_matches_fp32_model(bort_tiny, mode):
    rng = np.random.RandomState(0)
    config = bort_tiny.config
    calib = [_batch(rng, config)[:2] for _ in range(16)]
    ids, valid, types = _batch(rng, config)
    ref = _reference(bort_tiny, ids, valid, types)
    out = prepare(bort_tiny, mode, calib_batches=calib)(ids, valid).asnumpy()
    assert out.dtype == np.float32 and out.shape == ref.shape
    assert np.abs(out - ref).max() <= TOLERANCE[mode] * np.abs(ref).max() + 1e-6
    assert np.all(out[1:][np.arange(16)[None, :] >= valid[1:, None]] == 0)  # padding zeroed, as BortModel does


@pytest.mark.parametrize("mode", ["fp32", "int8"])
def test_bert_config_with_token_types(mode):
    model = _model("bert_tiny")
    rng = np.random.RandomState(1)
    calib = [_batch(rng, model.config) for _ in range(16)]
    ids, valid, types = _batch(rng, model.config)
    ref = _reference(model, ids, valid, types)
    out = prepare(model, mode, calib_batches=calib)(ids, valid, types).asnumpy()
    assert np.abs(out - ref).max() <= TOLERANCE[mode] * np.abs(ref).max() + 1e-6
    # token types matter: zeros give a different answer
    assert np.abs(prepare(model, "fp32")(ids, valid).asnumpy() - ref).max() > 1e-3


def test_fast_encoder_follows_the_model_parameters(bort_tiny):
    rng = np.random.RandomState(2)
    ids, valid, _ = _batch(rng, bort_tiny.config)
    fast = FastEncoder.from_model(bort_tiny)
    before = fast(mx.nd.array(ids), mx.nd.array(valid)).asnumpy()
    model = _model("bort_tiny")
    key = model.collect_params()[model.prefix + "encoder_transformer0_dotproductselfattentioncell0_key_weight"]
    key.set_data(key.data() * 3)
    fast.copy_from(model)
    after = fast(mx.nd.array(ids), mx.nd.array(valid)).asnumpy()
    np.testing.assert_allclose(after, _reference(model, ids, valid, None), atol=1e-5)
    assert np.abs(after - before).max() > 1e-3


def test_interleave_qkv_layout():
    heads, dim = 2, 3
    q, k, v = (np.full((heads * dim, 4), value) + np.arange(heads * dim)[:, None] for value in (100, 200, 300))
    out = interleave_qkv(q, k, v, heads)
    assert out.shape == (3 * heads * dim, 4)
    # head 0: q rows 0-2, k rows 0-2, v rows 0-2; then head 1
    expected_rows = [100, 101, 102, 200, 201, 202, 300, 301, 302, 103, 104, 105, 203, 204, 205, 303, 304, 305]
    assert out[:, 0].tolist() == expected_rows
    assert interleave_qkv(q[:, 0], k[:, 0], v[:, 0], heads).tolist() == expected_rows


def test_bad_requests_are_one_line_errors(bort_tiny):
    with pytest.raises(BortError, match="unknown mode"):
        prepare(bort_tiny, "fp8")
    with pytest.raises(BortError, match="calibration"):
        prepare(bort_tiny, "int8")
    import importlib.util
    if importlib.util.find_spec("scipy") is None:  # MXNet's entropy calibration imports scipy deep inside
        with pytest.raises(BortError, match="entropy needs scipy"):
            prepare(bort_tiny, "int8", calib_batches=[_batch(np.random.RandomState(0), bort_tiny.config)[:2]],
                    calib_mode="entropy")
    with pytest.raises(BortError, match="at most 4"):
        predict_bucketed(lambda *a: a[0], [[1] * 5], batch_size=2, pad_id=1, max_length=4)


def test_bucket_order_groups_by_length():
    lengths = [5, 30, 9, 17, 2, 30, 12]
    batches = bucket_order(lengths, batch_size=3, round_to=8)
    assert sorted(i for idx, _ in batches for i in idx) == list(range(len(lengths)))
    assert [len(idx) for idx, _ in batches] == [3, 3, 1]
    for idx, padded in batches:
        assert padded % 8 == 0 and padded >= max(lengths[i] for i in idx)
    assert [padded for _, padded in batches] == [32, 16, 8]


def test_predict_bucketed_returns_the_original_order(bort_tiny):
    rng = np.random.RandomState(3)
    sequences = [list(rng.randint(3, 100, size=n)) for n in (7, 20, 3, 12, 20, 5, 9)]
    encoder = prepare(bort_tiny, "fp32")
    shapes = []

    def first_token(ids, valid, types):
        shapes.append(ids.shape)
        return encoder(ids, valid)[:, 0]

    got = predict_bucketed(first_token, sequences, batch_size=3, pad_id=bort_tiny.config.pad_id)
    assert [s[1] for s in shapes] == [24, 16, 8]  # short sentences were not padded to the longest
    for seq, row in zip(sequences, got):  # each equals encoding the sentence alone, unpadded
        alone = _reference(bort_tiny, np.array([seq], dtype=np.float32), np.array([len(seq)], np.float32), None)
        np.testing.assert_allclose(row, alone[0, 0], atol=1e-5)


def test_encoder_flops_by_hand():
    config = get_config("bort_4_8_768_1024")
    # per layer and token: QKV 3*1024^2 + output 1024^2 + FFN 2*1024*768 multiply-adds, attention 2*128*1024
    per_token = 4 * 2 * ((3 + 1) * 1024 * 1024 + 2 * 1024 * 768 + 2 * 128 * 1024)
    assert encoder_flops(config, batch_size=2, seq_len=128) == 2 * 128 * per_token
    assert 47e6 < per_token < 49e6


# ---------------------------------------------------------------- task prediction (scripts/predict.py)


def _task_setup(name, data_dir, segment):
    from bort.finetune.checkpoints import build_task_model
    from bort.finetune.tasks import get_task
    from bort.text.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(vocab_json=VOCAB_JSON, merges=MERGES)
    task = get_task(name)
    mx.random.seed(4)
    model = build_task_model(task, get_config("bort_tiny", vocab_size=tokenizer.vocab_size, dropout=0.0), dropout=0.0)
    for pname, param in model.collect_params().items():  # a head that separates the classes clearly
        if pname.endswith("weight") and "head" in pname:
            param.set_data(mx.nd.random.normal(0, 1.0, shape=param.shape))
    examples = task.read(segment, data_dir)
    return task, tokenizer, model, examples, task.encode(examples, tokenizer, 64)


@pytest.mark.parametrize("name,data_dir,segment", [("SST-2", "test_data/glue/SST-2", "dev"),
                                                   ("COPA", "test_data/superglue/COPA", "dev")])
def test_predict_task_matches_the_task_model(name, data_dir, segment):
    from bort.finetune.predict import predict_outputs
    from bort.inference.modes import predict_task

    task, tokenizer, model, examples, instances = _task_setup(name, data_dir, segment)
    expected = predict_outputs(task, model, instances, tokenizer.pad_id, batch_size=3)
    got = predict_task(model.head, prepare(model.bort, "fp32"), instances, tokenizer.pad_id, batch_size=4)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_predict_script_fp32_and_int8(tmp_path):
    import json
    from bort.finetune.checkpoints import save_task_checkpoint
    from bort.finetune.predict import predict_outputs
    from bort.inference.task_prediction import PredictConfig, predict_segment

    task, tokenizer, model, examples, instances = _task_setup("SST-2", "test_data/glue/SST-2", "dev")
    ckpt = tmp_path / "sst2.params"
    save_task_checkpoint(model, str(ckpt), task)
    expected = task.predict(examples, instances, predict_outputs(task, model, instances, tokenizer.pad_id))
    for mode in ("fp32", "int8"):
        out = tmp_path / mode
        predict_segment(PredictConfig(task_name="SST-2", model_parameters=str(ckpt), data_dir="test_data/glue/SST-2",
                                      segment="dev", mode=mode, max_len=64, batch_size=8, output_dir=str(out)),
                        tokenizer)
        rows = [json.loads(line) for line in (out / "SST-2.dev.predictions.jsonl").read_text().splitlines()]
        assert [r["idx"] for r in rows] == [ex["idx"] for ex in examples]
        agree = np.mean([r["prediction"] == e for r, e in zip(rows, expected)])
        assert agree == 1.0 if mode == "fp32" else agree >= 0.9, (mode, agree)


def test_predict_script_on_the_naive_engine_matches_the_threaded_one(tmp_path):
    """`--engine naive` (the prediction default) runs MXNet's NaiveEngine in a fresh process; same predictions."""
    import json
    import os
    import subprocess
    import sys

    from bort.finetune.checkpoints import save_task_checkpoint

    task, tokenizer, model, examples, instances = _task_setup("SST-2", "test_data/glue/SST-2", "dev")
    ckpt = tmp_path / "sst2.params"
    save_task_checkpoint(model, str(ckpt), task)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {k: v for k, v in os.environ.items() if k != "MXNET_ENGINE_TYPE"}
    rows = {}
    for engine in ("naive", "threaded"):
        out = tmp_path / engine
        proc = subprocess.run([sys.executable, os.path.join(root, "scripts", "predict.py"), "--task_name", "SST-2",
                               "--model_parameters", str(ckpt), "--data_dir", "test_data/glue/SST-2", "--segment",
                               "dev", "--mode", "fp32", "--max_len", "64", "--batch_size", "8", "--engine", engine,
                               "--output_dir", str(out), *VOCAB_FLAGS], cwd=root, env=env, capture_output=True,
                              text=True)
        assert proc.returncode == 0, proc.stderr[-2000:]
        expected = "NaiveEngine" if engine == "naive" else "ThreadedEnginePerDevice"
        assert f"MXNet engine {expected}" in proc.stderr
        rows[engine] = [json.loads(line) for line in (out / "SST-2.dev.predictions.jsonl").read_text().splitlines()]
    assert rows["naive"] == rows["threaded"] and len(rows["naive"]) == len(examples)


def test_predict_script_errors_are_the_last_line_and_come_before_the_work(tmp_path):
    """MXNet logs "start using engine" when it creates a named engine, lazily, at exit if nothing ran: the
    script creates it first, so that its one-line error ends the output; an unwritable --output_dir is refused
    before the model is loaded."""
    import os
    import subprocess
    import sys

    from bort.finetune.checkpoints import build_task_model, save_task_checkpoint
    from bort.finetune.tasks import get_task
    from helpers import ROOT

    task = get_task("SST-2")
    ckpt = str(tmp_path / "sst2.params")
    save_task_checkpoint(build_task_model(task, get_config("bort_tiny", vocab_size=1005)), ckpt, task)
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    env = {k: v for k, v in os.environ.items() if k != "MXNET_ENGINE_TYPE"}
    for extra, message in ((["--segment", "bogus"], "error: --segment 'bogus': SST-2 has no such segment"),
                           (["--output_dir", str(a_file)],
                            f"error: {a_file}: is an existing file; --output_dir must be a directory")):
        proc = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "predict.py"), "--task_name", "SST-2",
                               "--model_parameters", ckpt, "--data_dir", "test_data/glue/SST-2", "--mode", "fp32",
                               "--segment", "dev", *VOCAB_FLAGS, *extra], cwd=ROOT, env=env, capture_output=True,
                              text=True)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and lines[-1].startswith(message), proc.stderr
        assert sum(line.startswith("error:") for line in lines) == 1 and "ready in" not in proc.stderr


# ---------------------------------------------------------------- OpenMP wait policy (bort.runtime)


def _wait_policy_in_child(policy, env_extra=None, load=None):
    import os
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env.update(env_extra or {})
    fake_load = f"os.getloadavg = lambda: ({load}, 0.0, 0.0); " if load is not None else ""
    code = ("import os, sys; " + fake_load + "import bort.runtime as r; "
            f"got = r.configure_omp_wait({policy!r}); "
            "print(got, os.environ.get('OMP_WAIT_POLICY'), 'mxnet' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True, check=True)
    return out.stdout.split()


def test_omp_wait_policy_follows_the_request_and_the_load():
    assert _wait_policy_in_child("passive") == ["passive", "PASSIVE", "False"]
    assert _wait_policy_in_child("active") == ["active", "None", "False"]
    assert _wait_policy_in_child("auto", load=1000.0) == ["passive", "PASSIVE", "False"]  # busy: sleep at once
    assert _wait_policy_in_child("auto", load=0.0) == ["active", "None", "False"]  # free cores: spin
    # the user's own setting wins
    assert _wait_policy_in_child("passive", {"OMP_WAIT_POLICY": "ACTIVE"}) == ["active", "ACTIVE", "False"]
    with pytest.raises(Exception):
        _wait_policy_in_child("sometimes")


# ---------------------------------------------------------------- benchmark goal rows (benchmarks/inference.py)


def _row(fw, mode, sec, rounds=None):
    return {"model": "bort", "framework": fw, "mode": mode, "batch": 1, "seq": 128, "median_s": sec,
            "round_medians_s": rounds or [sec, sec]}


def test_goal_rows_pick_the_fastest_accurate_mode_and_the_fastest_peer():
    from benchmarks.inference import goals

    results = [_row("mxnet", "fp32", 0.030), _row("mxnet", "int8", 0.008, [0.008, 0.010]),
               _row("mxnet", "bf16", 0.005),  # fastest, but inaccurate below: must not count
               _row("torch", "int8", 0.012), _row("torch", "fp32", 0.050),  # torch fp32 is no goal peer
               _row("ort", "int8", 0.011, [0.011, 0.020]), _row("ort", "opt_fp32", 0.027)]
    checks = {"bort": {"mxnet": {"fp32": {"mean_cosine": 1.0}, "int8": {"mean_cosine": 0.9999},
                                 "bf16": {"mean_cosine": 0.99}}}}
    rows = goals(results, checks)
    fastest, fp32 = rows
    assert (fastest["ours"], fastest["peer"]) == ("int8", "ort:int8")
    assert fastest["speedup"] == pytest.approx(0.011 / 0.008) and fastest["met"] is True
    assert fastest["paired_speedup"] == pytest.approx((0.011 / 0.008 + 2.0) / 2)
    assert (fp32["ours"], fp32["peer"]) == ("fp32", "ort:opt_fp32")
    assert fp32["speedup"] == pytest.approx(0.9) and fp32["met"] is False


def test_profile_counts_each_operator_once_per_call(tmp_path):
    """benchmarks/profile_inference.py reads MXNet's trace, where most operators are recorded twice (nested): the
    operator counts per call must equal the graph's nodes, and the group shares must add up to one."""
    import json
    import subprocess
    import sys

    out = tmp_path / "profile.json"
    proc = subprocess.run([sys.executable, "benchmarks/profile_inference.py", "--model", "bort_tiny", "--modes", "fp32",
                           "--batch_sizes", "2", "--seq_len", "16", "--calls", "3", "--native_ops", "off",
                           "--output", str(out)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (row,) = json.loads(out.read_text())["rows"]
    per_call = row["operators_per_call"]
    # bort_tiny: 2 layers of 4 fully-connected layers (adjacent ones may touch and merge: at most 8), 5 layer norms
    assert per_call["LayerNorm"] == 5 and per_call["softmax"] == 2 and per_call["LeakyReLU"] == 2
    assert 4 <= per_call["FullyConnected"] <= 8
    assert sum(row["group_share"].values()) == pytest.approx(1.0)
    assert "LayerNorm" in proc.stdout and "ms per call" in proc.stdout


@pytest.mark.slow
def test_ort_peer_matches_the_pytorch_model():
    """The ONNX export the benchmark times computes what the HF PyTorch model computes (tiny config)."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("transformers")
    import json
    import os
    import subprocess
    import sys

    import onnxruntime as ort

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    config = json.dumps(get_config("bort_tiny").to_dict())
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, OMP_NUM_THREADS="1")
        subprocess.run([sys.executable, "benchmarks/inference.py", "--worker", "ort_export", "--model", "bort",
                        "--config_json", config, "--export_dir", tmp], cwd=root, env=env, check=True,
                       capture_output=True)
        code = ("import json, sys, numpy as np, torch; "
                "from benchmarks.inference_workers import hf_bert; "
                f"_, m = hf_bert({config!r}); "
                "ids = torch.tensor(np.load(sys.argv[1])); mask = torch.tensor(np.load(sys.argv[2])); "
                "np.save(sys.argv[3], m(input_ids=ids, attention_mask=mask).last_hidden_state.detach().numpy())")
        rng = np.random.RandomState(0)
        ids = rng.randint(5, 1000, size=(2, 12)).astype(np.int64)
        mask = np.ones_like(ids)
        mask[1, 7:] = 0
        np.save(os.path.join(tmp, "ids.npy"), ids)
        np.save(os.path.join(tmp, "mask.npy"), mask)
        subprocess.run([sys.executable, "-c", code, os.path.join(tmp, "ids.npy"), os.path.join(tmp, "mask.npy"),
                        os.path.join(tmp, "ref.npy")], cwd=root, env=env, check=True, capture_output=True)
        ref = np.load(os.path.join(tmp, "ref.npy"))
        outs = {}
        for mode in ("fp32", "opt_fp32", "int8", "opt_int8"):
            session = ort.InferenceSession(os.path.join(tmp, f"{mode}.onnx"), providers=["CPUExecutionProvider"])
            outs[mode] = session.run(None, {"input_ids": ids, "attention_mask": mask})[0]
    valid = mask.astype(bool)
    for mode, out in outs.items():
        tol = 1e-4 if "fp32" in mode else 0.1 * np.abs(ref).max()
        assert np.abs(out[valid] - ref[valid]).max() <= tol, mode


# ---------------------------------------------------------------- benchmarks/inference_accuracy.py


@pytest.mark.slow
def test_accuracy_script_fine_tunes_and_scores_every_mode(tmp_path):
    """On the bundled SST-2 fixture: fine-tune, predict dev in each mode, write the JSON docs/results/inference.md quotes."""
    import json

    import benchmarks.inference_accuracy as acc
    from bort.errors import run_cli

    out = tmp_path / "acc.json"
    run_cli(acc.main)(["--tasks", "SST-2", "--glue_dir", "test_data/glue", "--work_dir", str(tmp_path / "work"),
                       "--epochs", "3", "--modes", "fp32", "int8", "--calib_size", "64", "--output", str(out)])
    report = json.loads(out.read_text())
    (task,) = report["tasks"]
    assert task["task"] == "SST-2" and task["dev_examples"] == 40 and set(task["modes"]) == {"fp32", "int8"}
    fp32, int8 = task["modes"]["fp32"], task["modes"]["int8"]
    assert fp32["accuracy"] >= 0.8  # the fixture's lexical cues are learnable: the model really trained
    assert fp32["agreement_with_fp32"] == 1.0 and fp32["max_abs_logit_change"] == 0.0
    assert int8["agreement_with_fp32"] >= 0.9 and 0 < int8["max_abs_logit_change"] < 1.0
    assert int8["accuracy_change_points"] == pytest.approx(100 * (int8["accuracy"] - fp32["accuracy"]))


def test_accuracy_script_names_a_missing_task_folder(tmp_path):
    import benchmarks.inference_accuracy as acc
    from bort.errors import BortError

    with pytest.raises(BortError, match=r"RTE: no dev.tsv"):
        acc.main(["--tasks", "RTE", "--glue_dir", str(tmp_path), "--work_dir", str(tmp_path / "w"),
                  "--output", str(tmp_path / "x.json")])
    assert not (tmp_path / "x.json").exists()
