"""The distillation loss against an independent numpy implementation (values and gradients), and the teacher."""
import os

import bort  # noqa: F401
import mxnet as mx
import numpy as np
import pytest

from bort.weights.checkpoint import save_parameters
from bort.pretrain.distill import DistillationLoss, load_teacher, prediction_counts
from bort.errors import BortError
from bort.model import build_model, get_config


def np_log_softmax(x):
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def np_loss(s, t, y, w, mlm_weight, kd_weight, T, legacy=False):
    """Reference: float64 numpy, written from the formula in the bort.pretrain.distill docstring."""
    s, t = s.reshape(-1, s.shape[-1]).astype(np.float64), t.reshape(-1, t.shape[-1]).astype(np.float64)
    y, w = y.reshape(-1), w.reshape(-1).astype(np.float64)
    ce = -np_log_softmax(s)[np.arange(len(y)), y]
    p = np.exp(np_log_softmax(t / T))
    if legacy:
        q = np.exp(np_log_softmax(s / T))
        kd = T * T * np.mean(p * (np.log(p + 1e-12) - np_log_softmax(q)), axis=-1)
    else:
        kd = T * T * np.sum(p * (np.log(p) - np_log_softmax(s / T)), axis=-1)
    n = w.sum() + 1e-8
    return (mlm_weight * (w * ce).sum() + kd_weight * (w * kd).sum()) / n, (w * ce).sum() / n, (w * kd).sum() / n


def mx_loss_and_grad(s, t, y, w, **kwargs):
    loss_fn = DistillationLoss(**kwargs)
    student = mx.nd.array(s)
    student.attach_grad()
    with mx.autograd.record():
        out = loss_fn(student, mx.nd.array(t), mx.nd.array(y), mx.nd.array(w))
    out["loss"].backward()
    return {k: float(v.asscalar()) for k, v in out.items()}, student.grad.asnumpy()


@pytest.fixture
def batch():
    rng = np.random.RandomState(0)
    B, K, V = 3, 4, 11
    s = rng.randn(B, K, V).astype(np.float32) * 2
    t = rng.randn(B, K, V).astype(np.float32) * 3
    y = rng.randint(0, V, size=(B, K))
    w = np.ones((B, K), np.float32)
    w[1, 2:] = 0  # padding positions
    w[2, 3] = 0
    return s, t, y, w


@pytest.mark.parametrize("legacy", [False, True])
@pytest.mark.parametrize("T", [1.0, 2.0, 0.5])
def test_values_and_gradients_match_numpy(batch, legacy, T):
    s, t, y, w = batch
    kw = dict(mlm_weight=0.1, teacher_ce_weight=0.5, temperature=T, legacy=legacy)
    got, grad = mx_loss_and_grad(s, t, y, w, **kw)
    want, want_mlm, want_kd = np_loss(s, t, y, w, 0.1, 0.5, T, legacy)
    assert got["loss"] == pytest.approx(want, rel=1e-5, abs=1e-7)
    assert got["mlm"] == pytest.approx(want_mlm, rel=1e-5)
    assert got["kd"] == pytest.approx(want_kd, rel=1e-4, abs=1e-8)
    assert got["num_masks"] == w.sum()
    # Central finite differences of the float64 reference.
    eps = 1e-4
    s64 = s.astype(np.float64)
    num = np.zeros_like(s64)
    for idx in np.ndindex(*s.shape):
        plus, minus = s64.copy(), s64.copy()
        plus[idx] += eps
        minus[idx] -= eps
        num[idx] = (np_loss(plus, t, y, w, 0.1, 0.5, T, legacy)[0] - np_loss(minus, t, y, w, 0.1, 0.5, T, legacy)[0]) / (2 * eps)
    scale = np.abs(num).max()
    assert scale > 0
    np.testing.assert_allclose(grad, num, atol=2e-4 * scale, rtol=1e-3)
    # Padding positions get no gradient at all.
    assert np.all(grad[w == 0] == 0)


def test_analytic_gradient_of_correct_loss(batch):
    """d/ds [a·CE + b·T²·KL] / n = (a (softmax(s) − onehot) + b·T (softmax(s/T) − softmax(t/T))) · w / n."""
    s, t, y, w = batch
    a, b, T = 0.3, 0.7, 2.5
    _, grad = mx_loss_and_grad(s, t, y, w, mlm_weight=a, teacher_ce_weight=b, temperature=T)
    onehot = np.eye(s.shape[-1])[y]
    want = a * (np.exp(np_log_softmax(s)) - onehot) + b * T * (np.exp(np_log_softmax(s / T)) - np.exp(np_log_softmax(t / T)))
    want = want * w[..., None] / w.sum()
    np.testing.assert_allclose(grad, want, atol=1e-6)


def test_weights_and_temperature_act_as_documented(batch):
    s, t, y, w = batch
    base, _ = mx_loss_and_grad(s, t, y, w, mlm_weight=1.0, teacher_ce_weight=0.0, temperature=2.0)
    kd_only, _ = mx_loss_and_grad(s, t, y, w, mlm_weight=0.0, teacher_ce_weight=1.0, temperature=2.0)
    mixed, _ = mx_loss_and_grad(s, t, y, w, mlm_weight=0.1, teacher_ce_weight=0.5, temperature=2.0)
    assert base["loss"] == pytest.approx(base["mlm"], rel=1e-6)
    assert kd_only["loss"] == pytest.approx(kd_only["kd"], rel=1e-6)
    assert mixed["loss"] == pytest.approx(0.1 * base["mlm"] + 0.5 * kd_only["kd"], rel=1e-5)
    # The KD term is T² · KL of tempered distributions: zero when the student equals the teacher, and
    # at T → large, T²·KL → Σ(var of logit differences)/2 (finite, not vanishing like plain KL).
    same, _ = mx_loss_and_grad(t, t, y, w, mlm_weight=0.0, teacher_ce_weight=1.0, temperature=3.0)
    assert abs(same["loss"]) < 1e-6
    big_T = 200.0
    far, _ = mx_loss_and_grad(s, t, y, w, mlm_weight=0.0, teacher_ce_weight=1.0, temperature=big_T)
    d = (t - s).reshape(-1, s.shape[-1])
    limit = (0.5 * d.var(axis=-1) * w.reshape(-1)).sum() / w.sum()
    assert far["loss"] == pytest.approx(limit, rel=2e-2)
    # Padding positions do not count: changing their logits or labels changes nothing.
    s2, y2 = s.copy(), y.copy()
    s2[w == 0] += 5.0
    y2[w == 0] = 0
    again, _ = mx_loss_and_grad(s2, t, y2, w, mlm_weight=0.1, teacher_ce_weight=0.5, temperature=2.0)
    assert again["loss"] == pytest.approx(mixed["loss"], rel=1e-6)


def test_legacy_loss_barely_sees_the_teacher(batch):
    """Why the original was wrong: its gradient is orders of magnitude smaller and nearly ignores the teacher."""
    s, t, y, w = batch
    _, g_right = mx_loss_and_grad(s, t, y, w, mlm_weight=0.0, teacher_ce_weight=1.0, temperature=2.0)
    _, g_legacy = mx_loss_and_grad(s, t, y, w, mlm_weight=0.0, teacher_ce_weight=1.0, temperature=2.0, legacy=True)
    assert np.abs(g_legacy).max() < np.abs(g_right).max() / 20


def test_prediction_counts():
    s = mx.nd.array([[[0, 5, 1], [3, 0, 0]], [[0, 0, 9], [1, 2, 3]]])
    t = mx.nd.array([[[0, 5, 1], [0, 3, 0]], [[0, 0, 9], [9, 2, 3]]])
    y = mx.nd.array([[1, 0], [0, 2]])
    w = mx.nd.array([[1, 1], [1, 0]])
    correct, agree = prediction_counts(s, t, y, w)
    assert correct.asscalar() == 2  # positions (0,0), (0,1); (1,1) is padding
    assert agree.asscalar() == 2  # positions (0,0), (1,0)


def _built(config):
    model = build_model(config)
    model(mx.nd.zeros((1, 2)), mx.nd.array([2]), mx.nd.zeros((1, 1)))  # finish deferred initialization
    return model


def _tiny(vocab_size=50, **kw):
    return get_config("roberta_tiny", vocab_size=vocab_size, dropout=0.0, **kw)


def test_teacher_loads_params_and_is_frozen(tmp_path):
    model = _built(_tiny())
    path = str(tmp_path / "teacher.params")
    save_parameters(model, path, _tiny())
    teacher = load_teacher(path)
    assert all(p.grad_req == "null" for p in teacher.model.collect_params().values())
    x = mx.nd.array(np.random.RandomState(0).randint(0, 50, (2, 7)))
    vl, pos = mx.nd.array([7, 5]), mx.nd.array([[1, 2], [0, 4]])
    with mx.autograd.record():  # the teacher never records, never uses dropout
        out = teacher(x, vl, pos)
    _, ref = model(x, vl, pos)
    np.testing.assert_allclose(out.asnumpy(), ref.asnumpy(), rtol=1e-5, atol=1e-5)
    # A directory with one .params file (the original --teacher_ckpt_dir) works too.
    assert load_teacher(str(tmp_path)).config == _tiny()
    teacher.check_student(_tiny())
    with pytest.raises(BortError, match="vocabulary size 50 differs from the student's 60"):
        teacher.check_student(_tiny(vocab_size=60))


def test_teacher_with_missing_parameters_is_refused(tmp_path):
    model = _built(_tiny())
    arrays = {n: p.data() for n, p in model._collect_params_with_prefix().items()}
    del arrays["encoder.transformer_cells.1.ffn.ffn_2.weight"]
    path = str(tmp_path / "broken.params")
    mx.nd.save(path, arrays)
    with pytest.raises(BortError, match=r"broken.params: parameters do not match the model; missing 1: "
                                        r"encoder.transformer_cells.1.ffn.ffn_2.weight"):
        load_teacher(path, config=_tiny())
    with pytest.raises(BortError, match="teacher checkpoint not found"):
        load_teacher(os.path.join(str(tmp_path), "nope.params"))


def test_every_flag_of_the_original_pretraining_script_parses():
    """The original run_pretraining_distillation_hvd.py's argument list (utils/pretraining_distillation_utils.py
    get_argparser), as its launcher and users passed it, parses unchanged and lands in the config."""
    import dataclasses

    import run_pretraining_distillation_hvd as cli
    from bort.pretrain.loop import PretrainConfig

    original = ["--num_steps", "4", "--num_eval_steps", "3", "--num_buckets", "20", "--dtype", "float32",
                "--batch_size", "2", "--accumulate", "1", "--use_avg_len", "--batch_size_eval", "2",
                "--dataset_name", "openwebtext_ccnews_stories_books_cased", "--pretrained",
                "--model", "bort_2_16_512_1024", "--teacher_model", "roberta_24_1024_16",
                "--teacher_ckpt_dir=teacher_dir", "--teacher_ce_weight", "0.5", "--distillation_temperature", "2.0",
                "--mlm_weight", "0.1", "--data=shards/*.npz", "--data_eval=shards/*.npz", "--ckpt_dir", "ck",
                "--start_step", "0", "--lr", "1e-4", "--warmup_ratio", "0.01", "--log_interval", "2",
                "--ckpt_interval", "2", "--verbose", "--profile", "prof.json", "--cpu_only"]
    args = cli.build_parser().parse_args(original)
    fields = {f.name for f in dataclasses.fields(PretrainConfig)}
    config = PretrainConfig(**{k: v for k, v in vars(args).items() if k in fields})
    assert (config.pretrained, config.profile, config.dataset_name) == (True, "prof.json",
                                                                          "openwebtext_ccnews_stories_books_cased")
    assert (config.model, config.teacher_ckpt_dir, config.num_eval_steps) == ("bort_2_16_512_1024", "teacher_dir", 3)
    assert get_config(config.model).num_layers == 2 and not config.random_teacher
