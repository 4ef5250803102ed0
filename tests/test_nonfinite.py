"""NaN must not train silently (issue #24): weights read from any file are checked for finite values, a float32 run
stops at the first non-finite loss or gradient with a one-line error naming the step, and metrics.jsonl stays JSON."""
import json

import bort  # noqa: F401
import mxnet as mx
import numpy as np
import pytest

from bort.errors import BortError
from bort.io import JsonlLogger
from bort.model import build_model, get_config
from bort.pretrain.distill import load_teacher
from bort.pretrain.loop import pretrain
from bort.train.distributed import Distributed
from bort.train.optim import create_trainer
from bort.train.precision import GradientStep
from bort.weights.checkpoint import finish_deferred_init, save_parameters
from helpers import tiny_config
from pretrain_faults import inf_gradient_at


def _strict_json_lines(path):
    def refuse(constant):
        raise AssertionError(f"{path}: bare {constant} is not JSON")
    return [json.loads(line, parse_constant=refuse) for line in open(path, encoding="utf-8")]


def _params_with_nan(config, path, name_part):
    model = finish_deferred_init(build_model(config))
    name = next(n for n in model._collect_params_with_prefix() if name_part in n)
    param = model._collect_params_with_prefix()[name]
    value = param.data().asnumpy()
    value.flat[3] = np.nan
    param.set_data(mx.nd.array(value))
    save_parameters(model, path, config)
    return name


def test_a_student_checkpoint_with_a_nan_weight_is_refused(shards, vocab_size, tmp_path):
    """Before: trained to exit 0 with ordinary-looking checkpoints."""
    path = str(tmp_path / "student.params")
    name = _params_with_nan(get_config("bort_tiny", vocab_size=vocab_size), path, "encoder")
    with pytest.raises(BortError) as error:
        pretrain(tiny_config(shards, tmp_path / "ck", student_params=path, num_steps=2))
    message = str(error.value)
    assert message.startswith(f"{path}: parameter {name} holds 1 non-finite value") and "\n" not in message


def test_a_teacher_with_a_nan_weight_is_refused(tmp_path):
    path = str(tmp_path / "teacher.params")
    config = get_config("roberta_tiny", vocab_size=50)
    name = _params_with_nan(config, path, "word_embed")
    with pytest.raises(BortError, match=f"teacher.params: parameter {name} holds 1 non-finite"):
        load_teacher(path)


def test_a_nan_gradient_stops_a_float32_run_naming_the_step(shards, tmp_path):
    """Before: the float32 step was skipped without a word, and the run went on."""
    config = tiny_config(shards, tmp_path / "ck", num_steps=6, log_interval=1, ckpt_interval=100)
    with inf_gradient_at(3, value=float("nan")), pytest.raises(BortError) as error:
        pretrain(config)
    assert str(error.value).startswith("step 3: non-finite loss or gradient") and "\n" not in str(error.value)
    assert [r["step"] for r in _strict_json_lines(tmp_path / "ck" / "metrics.jsonl")] == [1, 2]


def test_a_nan_loss_with_finite_gradients_stops_float32_and_leaves_the_weights():
    net = mx.gluon.nn.Dense(2, in_units=3)
    net.initialize()
    params = dict(net.collect_params().items())
    step = GradientStep(create_trainer(params, Distributed(False), lr=0.1), params)
    with mx.autograd.record():
        loss = net(mx.nd.ones((2, 3))).sum()
    loss.backward()
    before = {n: p.data().asnumpy().copy() for n, p in params.items()}
    with pytest.raises(BortError, match="^step 7: non-finite loss or gradient"):
        step(1.0, step=7, loss=loss * np.nan)
    for name, param in params.items():
        np.testing.assert_array_equal(param.data().asnumpy(), before[name])


def test_metrics_log_writes_null_for_nan(tmp_path):
    path = tmp_path / "metrics.jsonl"
    JsonlLogger(str(path)).log(step=1, grad_norm=float("inf"), loss=float("nan"), dev={"f1": float("nan")}, ok=0.5)
    assert _strict_json_lines(path) == [{"step": 1, "grad_norm": None, "loss": None, "dev": {"f1": None}, "ok": 0.5}]
