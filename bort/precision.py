"""float16 training: dynamic loss scaling, the gradient step (all-reduce, clipping, update) that both the
pretrainer and the fine-tuner use."""
import math

import bort  # noqa: F401
import mxnet as mx
from gluonnlp.utils import clip_grad_global_norm


class DynamicLossScaler:
    """fp16 loss scaling: halve on overflow (and skip the step), double after `window` clean steps."""

    def __init__(self, init_scale=2.0 ** 15, window=2000, min_scale=1.0):
        self.scale = init_scale
        self.window = window
        self.min_scale = min_scale
        self._clean_steps = 0

    def update(self, overflow):
        if overflow:
            self.scale = max(self.min_scale, self.scale / 2)
            self._clean_steps = 0
        else:
            self._clean_steps += 1
            if self._clean_steps >= self.window:
                self.scale *= 2
                self._clean_steps = 0


class GradientStep:
    """All-reduce gradients, clip them by global norm, update; with a loss scaler for fp16.

    `__call__(normalizer)` divides gradients by `normalizer` (e.g. the number of samples or tokens in this
    rank's batch; Horovod additionally averages over ranks). Returns (grad_norm, applied).
    """

    def __init__(self, trainer, params, max_norm=1.0, loss_scaler=None):
        self.trainer = trainer
        self.params = [p for p in params.values() if p.grad_req != "null"]
        self.max_norm = max_norm
        self.loss_scaler = loss_scaler

    @property
    def loss_scale(self):
        return self.loss_scaler.scale if self.loss_scaler else 1.0

    def __call__(self, normalizer=1.0):
        self.trainer.allreduce_grads()
        scale = self.loss_scale * normalizer
        # Horovod without NCCL averaging leaves the sum over ranks in the gradients and folds 1/size into
        # trainer._scale (rescale_grad): measure and clip the gradient that the update will actually apply.
        grad_scale = scale / getattr(self.trainer, "_scale", 1.0)
        max_norm = self.max_norm * grad_scale if self.max_norm else None
        if max_norm:
            norm = clip_grad_global_norm(self.params, max_norm, check_isfinite=True)
            norm = float(norm.asscalar() if hasattr(norm, "asscalar") else norm)
        else:
            norm = float(sum((p.grad().astype("float32").norm() ** 2).asscalar() for p in self.params) ** 0.5)
        finite = math.isfinite(norm)
        if self.loss_scaler:
            self.loss_scaler.update(not finite)
        if finite:
            self.trainer.update(scale)
        return norm / grad_scale, finite

    def zero_grad(self):
        for param in self.params:
            param.zero_grad()
