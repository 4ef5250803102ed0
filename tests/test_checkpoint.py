"""Parameter files: round trips, strict one-line errors, config beside the weights, atomic saves, training state."""
import json
import errno
import os
import re
import subprocess
import sys

import numpy as np
import pytest

import bort  # noqa: F401
import gluonnlp  # noqa: F401  (registers the 'bertadam' optimizer)
import mxnet as mx

from bort.weights import ndarray_file
from bort.weights.checkpoint import (config_path, load_model, load_parameters, load_training_state, read_config,
                             read_params_file, save_parameters, save_training_state)
from bort.errors import BortError
from bort.model import build_model, get_config
from bort.train.precision import enable_cpu_float16

from helpers import ROOT, small_disk


def _inputs(config):
    rng = np.random.RandomState(0)
    return mx.nd.array(rng.randint(3, config.vocab_size, size=(2, 6))), mx.nd.array([6, 3]), \
        mx.nd.array([[1, 2], [0, 2]])


def _saved(tmp_path, name="bort_tiny", use_decoder=True, seed=0, **overrides):
    mx.random.seed(seed)
    config = get_config(name, **overrides)
    model = build_model(config, use_decoder=use_decoder)
    model(*_inputs(config)[:2], _inputs(config)[2] if use_decoder else None)
    path = tmp_path / f"{name}_{seed}_{int(use_decoder)}.params"
    save_parameters(model, path, config)
    return model, config, path


def _one_line_error(func, *args, **kwargs):
    with pytest.raises(BortError) as err:
        func(*args, **kwargs)
    message = str(err.value)
    assert "\n" not in message
    return message


def test_round_trip_and_config_beside_params(tmp_path):
    model, config, path = _saved(tmp_path)
    assert os.path.isfile(config_path(path)) and config_path(path).endswith(".json")
    assert json.loads(open(config_path(path)).read()) == config.to_dict()
    assert read_config(path) == config
    loaded = load_model(path)
    ids, valid, positions = _inputs(config)
    for a, b in zip(model(ids, valid, positions), loaded(ids, valid, positions)):
        np.testing.assert_array_equal(a.asnumpy(), b.asnumpy())
    arrays = read_params_file(path)
    assert np.array_equal(arrays["decoder.3.weight"].asnumpy(), arrays["word_embed.0.weight"].asnumpy())
    encoder_only = load_model(path, use_decoder=False)  # the MLM head in the file is skipped when not wanted
    np.testing.assert_array_equal(encoder_only(ids, valid).asnumpy(), model(ids, valid, positions)[0].asnumpy())


def test_missing_config_needs_a_fallback(tmp_path):
    _, config, path = _saved(tmp_path)
    os.remove(config_path(path))
    message = _one_line_error(read_config, path)
    assert "pass the model config name" in message
    assert read_config(path, "bort_tiny") == config


def test_wrong_shapes_name_both_shapes(tmp_path):
    _, _, path = _saved(tmp_path, vocab_size=600)
    model = build_model("bort_tiny")
    message = _one_line_error(load_parameters, model, path)
    assert "wrong shape" in message and "word_embed.0.weight (file (600, 64) vs model (50265, 64))" in message
    assert str(path) in message


def test_missing_and_unexpected_keys(tmp_path):
    _, _, encoder_path = _saved(tmp_path, use_decoder=False)
    message = _one_line_error(load_parameters, build_model("bort_tiny", use_decoder=True), encoder_path)
    assert "missing" in message and "decoder.0.weight" in message
    _, _, full_path = _saved(tmp_path, use_decoder=True, seed=1)
    message = _one_line_error(load_parameters, build_model("bort_tiny", use_decoder=False), full_path)
    assert "unexpected" in message and "decoder.2.gamma" in message
    # A new task head may start from random only when asked.
    load_parameters(build_model("bort_tiny", use_decoder=True), encoder_path, allow_missing=("decoder.",))


def test_truncated_and_foreign_files(tmp_path):
    _, _, path = _saved(tmp_path)
    data = open(path, "rb").read()
    truncated = tmp_path / "truncated.params"
    truncated.write_bytes(data[: len(data) // 2])
    assert "truncated or corrupt" in _one_line_error(read_params_file, truncated)
    text = tmp_path / "notes.params"
    text.write_text("these are not parameters\n")
    assert "not a valid MXNet parameter file" in _one_line_error(read_params_file, text)
    assert "not found" in _one_line_error(read_params_file, tmp_path / "absent.params")
    unnamed = tmp_path / "list.params"
    mx.nd.save(str(unnamed), [mx.nd.ones(3)])
    assert "unnamed list" in _one_line_error(read_params_file, unnamed)


def test_cli_bad_params_file_exits_non_zero_with_one_line(tmp_path):
    bad = tmp_path / "bad.params"
    bad.write_bytes(b"\x12\x01\x00\x00\x00\x00\x00\x00garbage")
    result = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "convert_checkpoint.py"), "gluon2hf",
                             "--params", str(bad), "--config", "bort_tiny", "--output", str(tmp_path / "out")],
                            capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode != 0
    assert result.stderr.startswith("error: ") and result.stderr.strip().count("\n") == 0
    assert str(bad) in result.stderr
    assert not os.path.exists(tmp_path / "out" / "model.safetensors")


def test_failed_save_leaves_previous_file_intact(tmp_path, monkeypatch):
    model, config, path = _saved(tmp_path)
    before = open(path, "rb").read()

    def broken_write(writer, data):
        writer.handle.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(ndarray_file.HashingWriter, "write", broken_write)
    with pytest.raises(OSError):
        save_parameters(model, path)
    assert open(path, "rb").read() == before
    assert sorted(os.listdir(tmp_path)) == sorted([path.name, os.path.basename(config_path(path))])


def _mxnet_full_disk(monkeypatch, fail_on=""):
    """Without a small tmpfs: the checkpoint writer as it behaves on a full disk (a partial file, then ENOSPC)."""
    write = ndarray_file.HashingWriter.write

    def full(writer, data):
        if fail_on not in os.path.basename(writer.handle.name):
            return write(writer, data)
        writer.handle.write(b"partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(ndarray_file.HashingWriter, "write", full)


def test_a_full_disk_is_one_line_and_leaves_no_checkpoint_file(tmp_path, monkeypatch):
    from bort.pretrain.state import save_checkpoint

    model, config, _ = _saved(tmp_path)  # about 0.5 MB of parameters
    disk = tmp_path / "disk"
    with small_disk(disk, size="256k") as mounted:
        if not mounted:
            _mxnet_full_disk(monkeypatch)
        message = _one_line_error(save_parameters, model, disk / "m.params", config)
        assert message == f"{disk / 'm.params'}: cannot write (No space left on device); nothing was written"
        assert os.listdir(disk) == []  # neither the parameters nor their JSON
    # A pretraining checkpoint whose .states do not fit: none of the step's files stays (no orphan step_N.json).
    net = _net(0)
    trainer = mx.gluon.Trainer(net.collect_params(), "adam")
    _step(net, trainer, (mx.nd.ones((4, 5)), mx.nd.array([0, 1, 2, 0])))
    with small_disk(disk, size="16k") as mounted:
        if not mounted:
            monkeypatch.undo()
            _mxnet_full_disk(monkeypatch, fail_on=".states")
        (disk / "filler").write_bytes(b"\0" * (16384 - 8192))  # the parameters fit, the rest not
        message = _one_line_error(save_checkpoint, str(disk), 1, net, {"units": 8}, trainer, {"step": 1})
        assert re.search(r"step_0000001\.(states|state\.json): cannot write \(", message), message
        assert os.listdir(disk) == ["filler"]


def _net(seed, dtype="float32", ctx=None):
    mx.random.seed(seed)
    # Fixed prefixes: gluon.Trainer orders parameters by name, and the tests compare optimizer states by the
    # trainer's index, so both nets of a test must sort alike whatever blocks earlier tests created.
    net = mx.gluon.nn.HybridSequential(prefix="net_")
    with net.name_scope():
        net.add(mx.gluon.nn.Dense(8, in_units=5, activation="tanh", prefix="hidden_"),
                mx.gluon.nn.LayerNorm(in_channels=8, prefix="norm_"), mx.gluon.nn.Dense(3, in_units=8, prefix="out_"))
    net.initialize(mx.init.Normal(0.5), ctx=ctx or mx.cpu())
    if dtype == "float16":
        enable_cpu_float16()
        net.cast("float16")
    return net


def _step(net, trainer, batch, dtype="float32"):
    x, y = batch
    with mx.autograd.record():
        loss = mx.gluon.loss.SoftmaxCrossEntropyLoss()(net(x.astype(dtype)).astype("float32"), y)
    loss.backward()
    trainer.step(x.shape[0])


@pytest.mark.parametrize("optimizer,dtype,device_id", [
    ("adam", "float32", 0), ("bertadam", "float32", 0),
    # MXNet keeps update counts per device id: a rank on gpu(k), k != 0, must get its bias correction back.
    ("adam", "float32", 1), ("lamb", "float32", 1),
    # multi-precision: nested states holding the float32 master weights.
    ("bertadam", "float16", 0), ("adam", "float16", 0), ("lamb", "float16", 1)])
def test_training_state_resume_matches_uninterrupted_run(tmp_path, optimizer, dtype, device_id):
    ctx = mx.cpu(device_id)
    rng = np.random.RandomState(0)
    batches = [(mx.nd.array(rng.randn(4, 5), ctx=ctx), mx.nd.array(rng.randint(0, 3, size=4), ctx=ctx))
               for _ in range(6)]
    settings = {"learning_rate": 0.05, "wd": 0.01, "multi_precision": dtype == "float16"}

    net = _net(0, dtype, ctx)
    trainer = mx.gluon.Trainer(net.collect_params(), optimizer, settings)
    for batch in batches[:3]:
        _step(net, trainer, batch, dtype)
    net.save_parameters(str(tmp_path / "net.params"))
    save_training_state(str(tmp_path / "ckpt"), trainer, {"step": 3, "data_position": 12},
                        net._collect_params_with_prefix())
    for batch in batches[3:]:
        _step(net, trainer, batch, dtype)
    uninterrupted = [p.data().asnumpy() for p in net.collect_params().values()]
    final_states = {k: v.asnumpy() for k, v in _states(trainer).items()}

    resumed = _net(1, dtype, ctx)  # different random init, overwritten by the checkpoint
    resumed.load_parameters(str(tmp_path / "net.params"), ctx=ctx)
    params = list(resumed.collect_params().values())
    new_trainer = mx.gluon.Trainer(resumed.collect_params(), optimizer, settings)
    state = load_training_state(str(tmp_path / "ckpt"), new_trainer, resumed._collect_params_with_prefix())
    assert state["step"] == 3 and state["data_position"] == 12
    for batch in batches[3:]:
        _step(resumed, new_trainer, batch, dtype)
    for a, b in zip(uninterrupted, [p.data().asnumpy() for p in params]):
        np.testing.assert_array_equal(a, b)
    for key, value in _states(new_trainer).items():  # float32 master weights and moments too
        np.testing.assert_array_equal(value.asnumpy(), final_states[key], err_msg=key)
    if dtype == "float16":
        saved = mx.nd.load(str(tmp_path / "ckpt.states"))
        masters = [v for v in saved.values() if v.dtype == np.float32 and v.shape == (8, 5)]
        weights = net.collect_params()[net[0].weight.name].data().asnumpy()
        assert masters and any(not np.array_equal(m.asnumpy().astype(np.float16), m.asnumpy()) for m in masters)
        assert weights.dtype == np.float16

    # Without the optimizer state the continuation differs (so the check above means something).
    fresh = _net(1, dtype, ctx)
    fresh.load_parameters(str(tmp_path / "net.params"), ctx=ctx)
    fresh_trainer = mx.gluon.Trainer(fresh.collect_params(), optimizer, settings)
    for batch in batches[3:]:
        _step(fresh, fresh_trainer, batch, dtype)
    assert max(np.abs(a.astype(np.float32) - p.data().asnumpy().astype(np.float32)).max()
               for a, p in zip(uninterrupted, fresh.collect_params().values())) > 1e-4


def _states(trainer):
    """{index.path: NDArray} of every optimizer state array (nested tuples flattened)."""
    out = {}

    def walk(value, key):
        if isinstance(value, (tuple, list)):
            for j, part in enumerate(value):
                walk(part, f"{key}.{j}")
        elif value is not None:
            out[key] = value
    for index, value in trainer._updaters[0].states.items():
        walk(value, str(index))
    return out


def test_training_state_files_are_pickle_free_and_checked(tmp_path):
    net = _net(0)
    trainer = mx.gluon.Trainer(net.collect_params(), "adam", {"learning_rate": 0.01})
    _step(net, trainer, (mx.nd.ones((2, 5)), mx.nd.array([0, 1])))
    save_training_state(str(tmp_path / "s"), trainer, {"step": 1})
    assert isinstance(mx.nd.load(str(tmp_path / "s.states")), dict)  # NDArray format, not pickle
    assert json.loads((tmp_path / "s.state.json").read_text())["optimizer"]["num_update"] == 1
    message = _one_line_error(load_training_state, str(tmp_path / "absent"), trainer, [])
    assert "training state not found" in message
    (tmp_path / "s.state.json").write_text("{broken")
    assert "invalid JSON" in _one_line_error(load_training_state, str(tmp_path / "s"), trainer,
                                               list(net.collect_params().values()))
