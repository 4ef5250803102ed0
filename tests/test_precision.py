"""float16 training pieces (bort.train.precision): opt-in CPU float16, loss scaler, clipping of float16 gradients,
overflow skipping, float16 inputs of the masked-LM helpers."""
import bort  # noqa: F401
import gluonnlp  # noqa: F401  (registers 'bertadam')
import mxnet as mx
import numpy as np
import pytest

from bort.errors import BortError
from bort.model import build_model, get_config
from bort.train.precision import CPU_FLOAT16_ENV, DynamicLossScaler, GradientStep, choose_context, enable_cpu_float16
from bort.train.distributed import Distributed
from bort.train.optim import create_trainer, trainable_parameters


def test_float16_on_cpu_needs_the_opt_in(monkeypatch):
    monkeypatch.delenv(CPU_FLOAT16_ENV, raising=False)
    with pytest.raises(BortError, match="BORT_CPU_FLOAT16=1") as err:
        choose_context("float16", use_gpu=False)
    assert "\n" not in str(err.value)
    assert choose_context("float32", use_gpu=False) == (mx.cpu(), "float32")
    monkeypatch.setenv(CPU_FLOAT16_ENV, "1")
    assert choose_context("float16", use_gpu=False) == (mx.cpu(), "float16")


def test_gpu_of_a_rank_wraps_around_the_visible_gpus(monkeypatch):
    """A scheduler that shows each rank one GPU: local rank 3 must use gpu(0), not gpu(3)."""
    monkeypatch.setattr(mx.context, "num_gpus", lambda: 1)
    assert choose_context("float16", local_rank=3)[0] == mx.gpu(0)
    monkeypatch.setattr(mx.context, "num_gpus", lambda: 4)
    assert choose_context("float16", local_rank=6)[0] == mx.gpu(2)


def test_loss_scaler_halves_doubles_floors_and_gives_up():
    scaler = DynamicLossScaler(init_scale=8.0, window=3, min_scale=2.0, max_skips=5)
    scaler.update(True)
    assert scaler.scale == 4.0 and scaler.clean_steps == 0
    for _ in range(2):
        scaler.update(False)
    assert scaler.scale == 4.0 and scaler.clean_steps == 2
    scaler.update(False)
    assert scaler.scale == 8.0 and scaler.clean_steps == 0
    for _ in range(4):
        scaler.update(True)
    assert scaler.scale == 2.0  # never below the floor
    with pytest.raises(BortError, match="5 consecutive float16 steps had non-finite gradients"):
        scaler.update(True)
    again = DynamicLossScaler()
    again.load_state_dict(dict(scaler.state_dict(), clean_steps=1))
    assert (again.scale, again.clean_steps, again.window) == (2.0, 1, 2000)
    assert DynamicLossScaler().window == 2000


def _float16_dense(seed=0):
    enable_cpu_float16()
    mx.random.seed(seed)
    net = mx.gluon.nn.Dense(3, in_units=4)
    net.initialize(mx.init.Normal(0.5))
    net.cast("float16")
    return net


def _trainer(net, optimizer="sgd", lr=0.1):
    params = {name: p for name, p in net.collect_params().items()}
    trainer = create_trainer(params, Distributed(False), optimizer=optimizer, lr=lr, weight_decay=0.0,
                             multi_precision=True)
    return params, trainer


def test_clipping_float16_gradients_updates_by_the_clipped_gradient(monkeypatch):
    """gluon-nlp's clip_grad_global_norm rescales float16 gradients in place with a float32 scalar and crashes;
    the step must clip in the update instead, exactly by max_norm / norm."""
    monkeypatch.setenv(CPU_FLOAT16_ENV, "1")
    net = _float16_dense()
    params, trainer = _trainer(net)
    x = np.array([[1.0, 2.0, -1.0, 0.5], [0.5, -2.0, 3.0, 1.0]], dtype=np.float16)
    before = {n: p.data().asnumpy().astype(np.float64) for n, p in params.items()}
    scaler = DynamicLossScaler(init_scale=128.0)
    step = GradientStep(trainer, params, max_norm=1.0, loss_scaler=scaler)
    with mx.autograd.record():
        loss = net(mx.nd.array(x, dtype="float16")).astype("float32").sum() * scaler.scale
    loss.backward()
    norm, applied = step(1.0)
    assert applied
    grad_w = np.tile(x.astype(np.float64).sum(0), (3, 1))
    grad_b = np.full(3, 2.0)
    expected_norm = np.sqrt((grad_w ** 2).sum() + (grad_b ** 2).sum())
    assert norm == pytest.approx(expected_norm, rel=1e-3)
    clip = 1.0 / expected_norm
    weight, bias = (params[n].data().asnumpy().astype(np.float64) for n in sorted(params, reverse=True))
    names = sorted(params, reverse=True)  # weight, bias
    np.testing.assert_allclose(weight, before[names[0]] - 0.1 * clip * grad_w, atol=2e-3)
    np.testing.assert_allclose(bias, before[names[1]] - 0.1 * clip * grad_b, atol=2e-3)


def test_an_inf_gradient_skips_the_step_and_halves_the_scale(monkeypatch):
    monkeypatch.setenv(CPU_FLOAT16_ENV, "1")
    net = _float16_dense()
    params, trainer = _trainer(net, "bertadam", lr=1e-2)
    scaler = DynamicLossScaler(init_scale=1024.0)
    step = GradientStep(trainer, params, max_norm=1.0, loss_scaler=scaler)
    x = mx.nd.ones((2, 4), dtype="float16")

    def backward():
        with mx.autograd.record():
            loss = net(x).astype("float32").sum() * scaler.scale
        loss.backward()

    backward()
    assert step(1.0)[1]
    weights = {n: p.data().asnumpy().copy() for n, p in params.items()}
    backward()
    next(iter(params.values())).grad()[:] = float("inf")
    norm, applied = step(1.0)
    assert not applied and not np.isfinite(norm) and scaler.scale == 512.0
    for name, param in params.items():
        np.testing.assert_array_equal(param.data().asnumpy(), weights[name])
    backward()
    assert step(1.0)[1]
    assert any(not np.array_equal(p.data().asnumpy(), weights[n]) for n, p in params.items())


def test_masked_lm_helpers_feed_a_float16_model(monkeypatch):
    """fill_mask/topk_accuracy and deferred shape inference passed float32 valid_length into float16 models."""
    from bort.pretrain.mlm import topk_accuracy
    from bort.weights.checkpoint import finish_deferred_init

    monkeypatch.setenv(CPU_FLOAT16_ENV, "1")
    enable_cpu_float16()
    model = build_model(get_config("bort_tiny", vocab_size=50))
    model.cast("float16")
    finish_deferred_init(model)  # shapes unknown until a forward
    model.hybridize()
    batch = {"input_ids": np.array([[0, 5, 6, 7, 2]]), "valid_length": np.array([5]),
             "masked_positions": np.array([[1, 2]]), "masked_ids": np.array([[5, 6]]),
             "masked_weights": np.array([[1.0, 1.0]])}
    accuracy = topk_accuracy(model, [batch], mx.cpu(), k=50)
    assert accuracy == 1.0
    assert trainable_parameters(model)


def test_cpu_float16_operators_compute_in_float32_and_return_float16():
    """BORT_CPU_FLOAT16's wrapped operators: float16 in and out, the float32 result rounded once (what a GPU's
    float32-accumulating kernels give); integer softmax lengths pass through, also inside a hybridized block."""
    enable_cpu_float16()
    rng = np.random.RandomState(0)
    x32 = mx.nd.array(rng.randn(2, 3, 8))
    x16 = x32.astype("float16")
    gamma, beta = mx.nd.ones(8), mx.nd.zeros(8)
    length = mx.nd.array([5, 8], dtype="int32")
    cases = {
        "LayerNorm": (lambda x, g, b: mx.nd.LayerNorm(x, g, b), (gamma, beta)),
        "gelu": (lambda x: mx.nd.LeakyReLU(x, act_type="gelu"), ()),
        "softmax with length": (lambda x: mx.nd.softmax(x.reshape((6, 8)), mx.nd.repeat(length, 3), axis=-1,
                                                         use_length=True), ()),
        "log_softmax": (lambda x: mx.nd.log_softmax(x, axis=-1), ()),
    }
    for name, (op, params) in cases.items():
        out16 = op(x16, *[p.astype("float16") for p in params])
        ref = op(x32.astype("float16").astype("float32"), *params).astype("float16")
        assert out16.dtype == np.float16, name
        np.testing.assert_array_equal(out16.asnumpy(), ref.asnumpy(), err_msg=name)

    class Block(mx.gluon.HybridBlock):
        def __init__(self):
            super().__init__()
            with self.name_scope():
                self.norm = mx.gluon.nn.LayerNorm(in_channels=8)

        def hybrid_forward(self, F, x, lengths):
            return F.softmax(self.norm(x), lengths, axis=-1, use_length=True)

    block = Block()
    block.initialize()
    block.cast("float16")
    block.hybridize()
    out = block(x16.reshape((6, 8)), mx.nd.repeat(length, 3))
    assert out.dtype == np.float16
    probs = out.asnumpy().astype(np.float32)
    np.testing.assert_allclose(probs[:3, :5].sum(-1), 1.0, atol=1e-2)  # length 5
    np.testing.assert_allclose(probs[3:].sum(-1), 1.0, atol=1e-2)  # length 8
    assert (probs[:3, 5:] == 0).all()
