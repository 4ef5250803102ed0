"""Bort's C++ operator library (bort.inference.native_ops): the fused add + layer norm equals MXNet's LayerNorm(x + r), the
masked softmax equals MXNet's softmax of the padding-biased scores, zero-padded GEMM inputs change nothing, every
inference mode gives the same answer with it as without it, and without a compiler everything falls back
to MXNet's operators with one logged line."""
import os
import subprocess
import sys

import bort  # noqa: F401
import mxnet as mx
import numpy as np
import pytest

from bort.inference import native_ops
from bort.inference.modes import MODES, prepare
from bort.model import build_model, get_config

from helpers import ROOT


@pytest.fixture(scope="module")
def loaded():
    if not native_ops.load():
        pytest.skip("bort native ops could not be built here (no C++ compiler?): the fallback tests cover this")
    return True


# (data shape, residual shape): odd widths, one value per row, 2-D, broadcast positions, and sizes that take the
# multi-threaded path (>= 32768 values)
SHAPES = [((128, 1, 1024), (128, 1, 1024)), ((7, 3, 33), (7, 3, 33)), ((5, 1), (5, 1)), ((4, 1023), (4, 1023)),
          ((9, 4, 768), (9, 1, 768)), ((64, 8, 768), (64, 8, 768)), ((40, 16, 129), (40, 1, 129))]


@pytest.mark.parametrize("data_shape,residual_shape", SHAPES)
def test_add_layer_norm_matches_mxnet_layer_norm(loaded, data_shape, residual_shape):
    rng = np.random.RandomState(sum(data_shape))
    x = mx.nd.array(rng.normal(0, 3, size=data_shape))
    r = mx.nd.array(rng.normal(1, 2, size=residual_shape))
    gamma = mx.nd.array(rng.normal(1, 0.5, size=data_shape[-1:]))
    beta = mx.nd.array(rng.normal(0, 0.5, size=data_shape[-1:]))
    for eps in (1e-5, 1e-12):
        expected = mx.nd.LayerNorm(mx.nd.broadcast_add(x, r), gamma, beta, axis=-1, eps=eps).asnumpy()
        got = mx.nd.bort_add_layer_norm(x, r, gamma, beta, eps=eps).asnumpy()
        if data_shape[-1] == 1:  # a one-value row normalizes to beta
            np.testing.assert_allclose(got, np.broadcast_to(beta.asnumpy(), data_shape), atol=1e-5)
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


# (batch, heads, queries, keys): odd lengths, one key, sizes that take the multi-threaded path
SOFTMAX_SHAPES = [(1, 16, 128, 128), (3, 2, 5, 33), (2, 1, 1, 1), (8, 16, 40, 130), (2, 4, 7, 512)]


@pytest.mark.parametrize("batch,heads,queries,keys", SOFTMAX_SHAPES)
def test_masked_softmax_matches_mxnet_softmax(loaded, batch, heads, queries, keys):
    rng = np.random.RandomState(keys)
    scores = mx.nd.array(rng.normal(0, 8, size=(batch * heads, queries, keys)))
    valid = rng.randint(1, keys + 1, size=(batch,)).astype(np.float32)
    valid[0] = keys
    got = mx.nd.bort_masked_softmax(scores, mx.nd.array(valid), heads=heads).asnumpy()
    # what FastEncoder computes without the library: softmax of scores + (valid - 1) * 1e9 on padded keys
    bias = np.repeat(((np.arange(keys)[None, :] < valid[:, None]) - 1.0) * 1e9, heads, axis=0)[:, None, :]
    expected = mx.nd.softmax(scores + mx.nd.array(bias), axis=-1).asnumpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)
    # and MXNet's softmax with lengths (gluon-nlp's masking), whose padded entries are 0 too
    lengths = mx.nd.array(np.repeat(valid, heads)[:, None].repeat(queries, axis=1), dtype="int32")
    with_length = mx.nd.softmax(scores, length=lengths, use_length=True, axis=-1).asnumpy()
    np.testing.assert_allclose(got, with_length, rtol=1e-5, atol=1e-7)


def test_masked_softmax_of_a_fully_masked_row_is_uniform(loaded):
    scores = mx.nd.array(np.random.RandomState(0).normal(size=(2, 3, 6)))
    got = mx.nd.bort_masked_softmax(scores, mx.nd.array([0, 6]), heads=1).asnumpy()
    np.testing.assert_allclose(got[0], np.full((3, 6), 1 / 6), rtol=1e-6)
    np.testing.assert_allclose(got[1], mx.nd.softmax(scores[1], axis=-1).asnumpy(), rtol=1e-5, atol=1e-7)


def test_native_ops_reject_bad_shapes_and_types_and_backward(loaded):
    x, g = mx.nd.ones((4, 3, 8)), mx.nd.ones((8,))
    with pytest.raises(mx.base.MXNetError, match="residual must have"):
        mx.nd.bort_add_layer_norm(x, mx.nd.ones((4, 2, 8)), g, g).wait_to_read()
    with pytest.raises(mx.base.MXNetError, match="gamma and beta must have shape"):
        mx.nd.bort_add_layer_norm(x, x, mx.nd.ones((7,)), g).wait_to_read()
    with pytest.raises(mx.base.MXNetError, match="must be float32"):
        mx.nd.bort_add_layer_norm(x.astype("float16"), x.astype("float16"), g, g).wait_to_read()
    with pytest.raises(mx.base.MXNetError, match=r"scores must be \(batch \* heads"):
        mx.nd.bort_masked_softmax(mx.nd.ones((6, 4, 4)), mx.nd.ones((4,)), heads=2).wait_to_read()
    with pytest.raises(mx.base.MXNetError, match="heads must be a positive integer"):
        mx.nd.bort_masked_softmax(mx.nd.ones((6, 4, 4)), mx.nd.ones((3,)), heads=0).wait_to_read()
    x.attach_grad()
    with pytest.raises(mx.base.MXNetError, match="inference only"):
        with mx.autograd.record():
            y = mx.nd.bort_add_layer_norm(x, x, g, g)
        y.backward()
        x.grad.wait_to_read()


def _tiny_model(name):
    mx.random.seed(3)
    model = build_model(get_config(name, dropout=0.0), use_decoder=False)
    for pname, param in model.collect_params().items():  # non-trivial norms, so a swapped gamma/beta shows
        if pname.endswith(("bias", "beta")):
            param.set_data(mx.nd.random.normal(0, 0.1, shape=param.shape))
        elif pname.endswith("gamma"):
            param.set_data(1 + mx.nd.random.normal(0, 0.1, shape=param.shape))
    return model


# max |native - stock| relative to max |stock|: the same graph except the layer norms, so float rounding only for
# fp32/fused; bf16 and int8 round the same values and may flip a rounding step (the tolerances of test_inference)
AGREEMENT = {"fp32": 1e-5, "fused": 1e-5, "bf16": 2e-2, "int8": 5e-2}


@pytest.mark.parametrize("name", ["bort_tiny", "bert_tiny"])
@pytest.mark.parametrize("mode", MODES)
def test_every_mode_agrees_with_and_without_native_ops(loaded, name, mode):
    model = _tiny_model(name)
    rng = np.random.RandomState(0)
    config = model.config

    def batch(n=4, length=16):
        ids = rng.randint(3, config.vocab_size, size=(n, length)).astype(np.float32)
        valid = rng.randint(3, length + 1, size=(n,)).astype(np.float32)
        return ids, valid

    calib = [batch() for _ in range(8)]
    ids, valid = batch()
    native = prepare(model, mode, calib_batches=calib)
    stock = prepare(model, mode, calib_batches=calib, native_ops=False)
    assert native.native_ops and not stock.native_ops
    graph = native.net._cached_graph[1].tojson() if native.net._cached_graph else ""
    # every layer norm and softmax is Bort's
    assert "bort_add_layer_norm" in graph and '"LayerNorm"' not in graph
    assert "bort_masked_softmax" in graph and '"softmax"' not in graph
    a, b = native(ids, valid).asnumpy(), stock(ids, valid).asnumpy()
    assert np.abs(a - b).max() <= AGREEMENT[mode] * np.abs(b).max() + 1e-6, mode


@pytest.mark.parametrize("mode", MODES)
def test_padded_gemm_inputs_change_nothing(loaded, mode):
    """Widths that are multiples of 512 get zero columns in float32 modes (bort_pad_last + padded weights)."""
    mx.random.seed(4)
    config = get_config("bort_tiny", units=512, embed_size=512, hidden_size=1024, num_heads=8, num_layers=1,
                        vocab_size=500)
    model = build_model(config, use_decoder=False)
    rng = np.random.RandomState(5)
    ids = rng.randint(3, config.vocab_size, size=(2, 16)).astype(np.float32)
    valid = np.array([16, 9], np.float32)
    ref = model(mx.nd.array(ids), mx.nd.array(valid)).asnumpy()
    encoder = prepare(model, mode, calib_batches=[(ids, valid)] * 4)
    graph = encoder.net._cached_graph[1].tojson()
    padded = mode in ("fp32", "fused")
    assert graph.count('"bort_pad_last"') == (4 if padded else 0)  # QKV, projection, FFN 1 and 2
    out = encoder(ids, valid).asnumpy()
    tolerance = {"fp32": 1e-5, "fused": 1e-5, "bf16": 2e-2, "int8": 5e-2}[mode]
    assert np.abs(out - ref).max() <= tolerance * np.abs(ref).max()


def test_pad_last_appends_zero_columns(loaded):
    x = mx.nd.array(np.random.RandomState(0).normal(size=(3, 5, 7)))
    got = mx.nd.bort_pad_last(x, pad=9).asnumpy()
    assert got.shape == (3, 5, 16)
    np.testing.assert_array_equal(got[..., :7], x.asnumpy())
    assert not got[..., 7:].any()
    big = mx.nd.ones((64, 8, 1024))  # the multi-threaded path
    assert mx.nd.bort_pad_last(big, pad=16).sum().asscalar() == 64 * 8 * 1024


def _in_child(code, **env_extra):
    env = dict(os.environ, **env_extra)
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)


FALLBACK = ("import logging; logging.basicConfig(level=logging.INFO, format='%(message)s')\n"
            "import numpy as np, mxnet as mx\n"
            "from bort.model import build_model, get_config\n"
            "from bort.inference.modes import prepare\n"
            "m = build_model(get_config('bort_tiny', dropout=0.0), use_decoder=False)\n"
            "enc = prepare(m, 'fp32')\n"
            "out = enc(np.full((2, 8), 5, 'float32'), np.array([8, 5], 'float32')).asnumpy()\n"
            "print('native', enc.native_ops, out.shape, bool(np.isfinite(out).all()))\n")


def test_no_compiler_falls_back_to_mxnet_operators(tmp_path):
    proc = _in_child(FALLBACK, CXX=str(tmp_path / "no-such-g++"), BORT_NATIVE_CACHE=str(tmp_path / "cache"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "native False (2, 8, 64) True" in proc.stdout, proc.stdout
    lines = [line for line in proc.stderr.splitlines() if "native ops" in line]
    assert len(lines) == 1 and "no C++ compiler" in lines[0], proc.stderr
    assert not (tmp_path / "cache").exists()


def test_failing_build_falls_back_and_leaves_no_file(tmp_path):
    fake = tmp_path / "g++"
    fake.write_text("#!/bin/sh\n[ \"$1\" = --version ] && { echo fake 1.0; exit 0; }\n"
                    "echo 'bort_ops.cc:1: error: this compiler is broken' >&2; exit 1\n")
    fake.chmod(0o755)
    proc = _in_child(FALLBACK, CXX=str(fake), BORT_NATIVE_CACHE=str(tmp_path / "cache"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "native False" in proc.stdout
    lines = [line for line in proc.stderr.splitlines() if "native ops" in line]
    assert len(lines) == 1 and "build failed" in lines[0] and "this compiler is broken" in lines[0], proc.stderr
    assert list((tmp_path / "cache").iterdir()) == []  # no half-written library


def test_env_switch_turns_the_library_off(tmp_path):
    proc = _in_child(FALLBACK, BORT_NATIVE_OPS="0", BORT_NATIVE_CACHE=str(tmp_path / "cache"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "native False" in proc.stdout and "BORT_NATIVE_OPS=0" in proc.stderr
    assert not (tmp_path / "cache").exists()


def test_loading_keeps_operator_functions_replaced_before(loaded):
    """mx.library.load regenerates mx.nd/mx.sym; bort.train.precision's CPU float16 wrappers (and any other replaced
    operator function) must survive it, and Bort's operators must still be added."""
    code = ("import mxnet as mx\n"
            "def mine(*a, **k): return 'mine'\n"
            "mx.nd.FullyConnected = mine; mx.sym.FullyConnected = mine; mx.nd.contrib.arange_like = mine\n"
            "from bort.inference import native_ops\n"
            "assert native_ops.load()\n"
            "print(mx.nd.FullyConnected is mine, mx.sym.FullyConnected is mine, mx.nd.contrib.arange_like is mine,\n"
            "      hasattr(mx.nd, 'bort_add_layer_norm'), hasattr(mx.sym, 'bort_masked_softmax'))\n")
    proc = _in_child(code)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["True"] * 5


def test_build_goes_to_the_cache_once(loaded, tmp_path):
    code = ("from bort.inference import native_ops; import os\n"
            "p = native_ops.build(); print(p, os.path.getmtime(p))\n")
    first = _in_child(code, BORT_NATIVE_CACHE=str(tmp_path))
    second = _in_child(code, BORT_NATIVE_CACHE=str(tmp_path))
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    assert first.stdout == second.stdout  # same file, not rebuilt
    path = first.stdout.split()[0]
    assert path.startswith(str(tmp_path)) and os.path.basename(path).startswith("libbort_ops-")
    assert [p.name for p in tmp_path.iterdir()] == [os.path.basename(path)]
