"""Knowledge distillation for masked-LM pretraining: the loss (correct and legacy) and the teacher.

The loss on the masked positions (weights w_i: 1 for a real prediction, 0 for padding) is

    total = ( mlm_weight · Σ_i w_i CE(s_i, y_i)  +  teacher_ce_weight · Σ_i w_i T² KL(p_i ‖ q_i) ) / Σ_i w_i

with s_i the student logits, t_i the teacher logits, p_i = softmax(t_i / T), q_i = softmax(s_i / T),
KL(p ‖ q) = Σ_v p_v (log p_v − log q_v), and log q computed as log_softmax(s_i / T). The T² keeps the
gradient of the soft term at the same scale for every temperature (Hinton et al., 2015).

`legacy=True` reproduces what the original Bort pretraining computed: its `KLDivLoss(from_logits=False)`
received the student *probabilities* softmax(s/T) and applied another log_softmax to them, and gluon's
loss averages over the vocabulary axis. Per position that is

    T² · (1/V) · Σ_v p_v (log(p_v + 1e-12) − log_softmax(softmax(s_i / T))_v)

Because softmax outputs lie in [0, 1], log_softmax of them is nearly flat (≈ −log V + q_v): the target the
student is pushed towards is almost uniform, the gradient is tiny (divided by V once more), and the
teacher's ranking of tokens barely reaches the student. That is why the released Bort's MLM head was
useless for mask filling. The legacy term is kept only so that original runs can be reproduced.
"""
import logging
import os

import bort  # noqa: F401
import mxnet as mx

from bort.errors import BortError

log = logging.getLogger(__name__)

LEGACY_EPS = 1e-12


def _flatten(logits):
    return logits.reshape((-1, logits.shape[-1])).astype("float32", copy=False)


def per_position_terms(student_logits, teacher_logits, labels, temperature=1.0, legacy=False):
    """(ce, kd) per masked position, shape (N,), for logits (..., V) and labels (...).

    ce = cross-entropy of the student's (untempered) logits with the labels.
    kd = T² · KL(softmax(teacher/T) ‖ softmax(student/T)) (or the legacy term, see the module docstring).
    """
    F = mx.nd
    s = _flatten(student_logits)
    labels = labels.reshape((-1,)).astype("float32", copy=False)
    ce = -F.pick(F.log_softmax(s, axis=-1), labels, axis=-1)
    if teacher_logits is None:
        return ce, F.zeros_like(ce)
    t = _flatten(teacher_logits)
    t2 = temperature * temperature
    if legacy:
        p = F.softmax(t, axis=-1, temperature=temperature)
        q = F.softmax(s, axis=-1, temperature=temperature)
        kd = F.mean(p * (F.log(p + LEGACY_EPS) - F.log_softmax(q, axis=-1)), axis=-1) * t2
    else:
        log_p = F.log_softmax(t / temperature, axis=-1)
        log_q = F.log_softmax(s / temperature, axis=-1)
        kd = F.sum(F.exp(log_p) * (log_p - log_q), axis=-1) * t2
    return ce, kd


class DistillationLoss:
    """Weighted masked-LM + distillation loss; see the module docstring for the formula.

    Calling it returns a dict of NDArrays: `loss` (the scalar to minimize), `mlm` and `kd` (their weighted
    means, before the mixing weights), `num_masks` (Σ w), and the per-position sums used for logging.
    """

    def __init__(self, mlm_weight=0.1, teacher_ce_weight=0.5, temperature=2.0, legacy=False):
        if temperature <= 0:
            raise BortError(f"--distillation_temperature must be positive, got {temperature}")
        self.mlm_weight = mlm_weight
        self.teacher_ce_weight = teacher_ce_weight
        self.temperature = temperature
        self.legacy = legacy

    def __call__(self, student_logits, teacher_logits, labels, weights):
        ce, kd = per_position_terms(student_logits, teacher_logits, labels, self.temperature, self.legacy)
        return self.combine(ce, kd, weights)

    def combine(self, ce, kd, weights):
        """The loss and its parts from per-position masked-LM and KD terms, averaged over the masked positions."""
        weights = weights.reshape((-1,)).astype("float32", copy=False)
        num_masks = weights.sum()
        denom = num_masks + 1e-8
        mlm_sum = (ce * weights).sum()
        kd_sum = (kd * weights).sum()
        loss = (self.mlm_weight * mlm_sum + self.teacher_ce_weight * kd_sum) / denom
        return {"loss": loss, "mlm": mlm_sum / denom, "kd": kd_sum / denom, "mlm_sum": mlm_sum,
                "kd_sum": kd_sum, "num_masks": num_masks}


def prediction_counts(student_logits, teacher_logits, labels, weights):
    """(correct, agree) as NDArray scalars: weighted counts of student top-1 == label and == teacher top-1."""
    weights = weights.reshape((-1,)).astype("float32", copy=False)
    pred = mx.nd.argmax(_flatten(student_logits), axis=-1)
    correct = ((pred == labels.reshape((-1,)).astype("float32")) * weights).sum()
    if teacher_logits is None:
        return correct, mx.nd.zeros_like(correct)
    agree = ((pred == mx.nd.argmax(_flatten(teacher_logits), axis=-1)) * weights).sum()
    return correct, agree


class Teacher:
    """A frozen masked-LM model: no gradients, inference mode (no dropout), hybridized."""

    def __init__(self, model, source="teacher"):
        if not getattr(model, "has_decoder", False):
            raise BortError(f"{source}: the teacher needs its MLM head (decoder.* parameters)")
        self.model = model
        self.config = model.config
        self.source = source
        for param in model.collect_params().values():
            param.grad_req = "null"
        model.hybridize(static_alloc=True)

    def check_student(self, student_config, source=None):
        if self.config.vocab_size != student_config.vocab_size:
            raise BortError(f"{source or self.source}: teacher vocabulary size {self.config.vocab_size} differs "
                            f"from the student's {student_config.vocab_size}; both must use the same vocabulary")

    def __call__(self, inputs, valid_length, masked_positions):
        with mx.autograd.pause(train_mode=False):
            _, logits = self.model(inputs, valid_length, masked_positions)
        return logits


def load_teacher(spec, config=None, ctx=None, dtype="float32", vocab_size=None, random_init=False,
                 dataset_name=None):
    """Build the teacher from `spec`:

    - a `.params` file (gluon-nlp names; its JSON config beside it, else `config`, e.g. roberta_24_1024_16),
    - a directory holding one `.params` file (the original's --teacher_ckpt_dir, or its checkpoint_N/), or
    - a local Hugging Face directory (config.json + weights), converted with bort.weights.convert.hf_to_gluon,
    - None: gluon-nlp's pretrained `config` on `dataset_name` from its model store ($MXNET_HOME/models, fetched
      when missing), as the original did; with `random_init`, a randomly initialized `config` (tests only;
      a checkpoint given in `spec` always wins).
    """
    from bort.weights.checkpoint import config_path, load_arrays, load_parameters, read_config  # noqa: PLC0415
    from bort.model import build_model, get_config  # noqa: PLC0415
    from bort.weights.store import pretrained_params, resolve_params_path  # noqa: PLC0415

    ctx = ctx or mx.cpu()
    overrides = {"vocab_size": vocab_size} if vocab_size else {}
    if spec is None and config is None:
        raise BortError("no teacher: pass --teacher_ckpt_dir or --teacher_model")
    if spec is None and random_init:
        model = build_model(get_config(config, **overrides), ctx=ctx)
        log.warning("teacher %s is randomly initialized (--random_teacher)", config)
        source = f"random {config}"
    elif spec is None:
        path = pretrained_params(config, dataset_name)
        model = build_model(get_config(config), ctx=ctx)
        load_parameters(model, path, ignore_extra=("pooler.", "classifier."))
        source = path
    elif os.path.isdir(spec) and os.path.isfile(os.path.join(spec, "config.json")):
        from bort.weights.convert import hf_to_gluon  # noqa: PLC0415

        model_config, arrays = hf_to_gluon(spec)
        if not any(name.startswith("decoder.") for name in arrays):
            raise BortError(f"{spec}: the teacher checkpoint has no MLM head (expected a *ForMaskedLM model)")
        model = build_model(model_config, ctx=ctx)
        load_arrays(model, arrays, spec)
        source = spec
    else:
        if not os.path.exists(spec):
            raise BortError(f"{spec}: teacher checkpoint not found")
        path = resolve_params_path(spec, "teacher checkpoint")
        has_json = os.path.isfile(config_path(path))
        model_config = read_config(path, None if has_json else (config or "roberta_24_1024_16"))
        model = build_model(model_config, ctx=ctx)
        load_parameters(model, path)
        source = path
    if dtype != "float32":
        model.cast(dtype)
    return Teacher(model, source=source)
