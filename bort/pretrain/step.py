"""The pieces of a distillation step: student and teacher, forward/backward of one micro-batch, running totals,
evaluation."""
import dataclasses

import bort  # noqa: F401
import mxnet as mx

from bort.weights.checkpoint import finish_deferred_init, load_parameters, read_config
from bort.pretrain.distill import load_teacher
from bort.pretrain.topk_distill import prediction_counts, teacher_from_batch
from bort.errors import BortError
from bort.model import build_model, disable_cudnn_dropout, get_config
from bort.pretrain.batches import to_nd
from bort.weights.store import student_params_path


def build_student(config, vocab_size, ctx):
    model_config = get_config(config.model, vocab_size=vocab_size, dropout=config.dropout,
                              embed_dropout=config.dropout)
    config = dataclasses.replace(config, student_params=student_params_path(config.student_params,
                                                                            config.pretrained))
    if config.student_params:
        model_config = read_config(config.student_params, model_config)
        if model_config.vocab_size != vocab_size:
            raise BortError(f"{config.student_params}: student vocabulary size {model_config.vocab_size} differs "
                            f"from the data's {vocab_size}")
    model = finish_deferred_init(build_model(model_config, ctx=ctx))
    if config.dropout_cudnn_off:
        disable_cudnn_dropout(model)
    if config.student_params:
        load_parameters(model, config.student_params)
    return model, model_config


def build_teacher(config, vocab_size, ctx, dtype):
    """The frozen teacher, or None with --teacher_model none (plain masked-LM pretraining)."""
    spec = config.teacher_ckpt_dir
    if spec is None and str(config.teacher_model).lower() in ("none", ""):
        if config.teacher_ce_weight:
            raise BortError("--teacher_model none: no teacher, so --teacher_ce_weight must be 0")
        return None
    teacher = load_teacher(spec, config=config.teacher_model, ctx=ctx, dtype=dtype,
                           vocab_size=vocab_size if spec is None else None, random_init=config.random_teacher,
                           dataset_name=config.dataset_name)
    teacher.check_student(get_config(config.model, vocab_size=vocab_size), source=spec or config.teacher_model)
    return teacher



class Totals:
    """Running sums of the quantities logged; summed over ranks when reported."""

    KEYS = ("mlm_sum", "kd_sum", "num_masks", "correct", "agree", "tokens", "micro_batches")

    def __init__(self):
        self.reset()

    def reset(self):
        self.values = {k: 0.0 for k in self.KEYS}
        self._pending = []

    def add(self, out, correct, agree, tokens):
        self._pending.append((out["mlm_sum"], out["kd_sum"], out["num_masks"], correct, agree))
        self.values["tokens"] += tokens
        self.values["micro_batches"] += 1

    def collect(self, dist=None):
        for mlm, kd, n, c, a in self._pending:
            self.values["mlm_sum"] += float(mlm.asscalar())
            self.values["kd_sum"] += float(kd.asscalar())
            self.values["num_masks"] += float(n.asscalar())
            self.values["correct"] += float(c.asscalar())
            self.values["agree"] += float(a.asscalar())
        self._pending = []
        values = [self.values[k] for k in self.KEYS]
        if dist is not None:
            values = dist.allreduce_sum(values)
        return dict(zip(self.KEYS, values))


def summarize(sums):
    n = max(sums["num_masks"], 1e-8)
    return {"mlm_loss": sums["mlm_sum"] / n, "kd_loss": sums["kd_sum"] / n, "mlm_acc": sums["correct"] / n,
            "teacher_agreement": sums["agree"] / n, "num_masks": int(sums["num_masks"]),
            "tokens": int(sums["tokens"])}


def forward_backward(student, teacher, loss_fn, batch, scale=1.0, before_student=None, cached_teacher=None):
    """One micro-batch: teacher forward (no gradients), student forward, loss, backward of loss × `scale`.
    `before_student()` runs between the two forwards (the per-step reseeding: a hybridized teacher's first call
    draws from MXNet's RNG, so the seed must be set after it for dropout to be reproducible across a resume).
    `cached_teacher` (a bort.pretrain.topk_distill.CachedTopK, --teacher_cache) replaces the teacher forward.
    Returns (loss dict, student logits, teacher logits, labels, weights)."""
    inputs, valid_length, positions, labels, weights = batch
    if cached_teacher is not None:
        teacher_logits = cached_teacher
    else:
        teacher_logits = teacher(inputs, valid_length, positions) if teacher else None
    if before_student is not None:
        before_student()
    with mx.autograd.record():
        _, logits = student(inputs, valid_length, positions)
        out = loss_fn(logits, teacher_logits, labels, weights)
        scaled = out["loss"] * scale
    scaled.backward()
    return out, logits, teacher_logits, labels, weights


def evaluate(model, teacher, loss_fn, batches, ctx, dtype, dist=None, is_teacher=False):
    """Masked-LM loss/accuracy (and KD loss, agreement with the teacher) of `model` over `batches`."""
    totals = Totals()
    for arrays in batches:
        inputs, valid_length, positions, labels, weights = to_nd(arrays, ctx, dtype)
        teacher_logits = teacher_from_batch(arrays, ctx)  # --teacher_cache; None without a cache
        if teacher_logits is None:
            teacher_logits = teacher(inputs, valid_length, positions) if teacher else None
        if is_teacher:
            logits = teacher_logits
        else:
            with mx.autograd.pause(train_mode=False):
                _, logits = model(inputs, valid_length, positions)
        out = loss_fn(logits, teacher_logits, labels, weights)
        correct, agree = prediction_counts(logits, teacher_logits, labels, weights)
        totals.add(out, correct, agree, float(arrays["valid_length"].sum()))
    return summarize(totals.collect(dist))

