"""float16 training, in one place for the pretrainer and the fine-tuner: the device and dtype of a run, dynamic
loss scaling, and the gradient step (all-reduce, overflow check, global-norm clipping, multi-precision update).

GPU runs use float16 weights and activations, a float32 master copy of the weights inside the optimizer
(`multi_precision=True`), and a dynamic loss scale. `BORT_CPU_FLOAT16=1` runs the same code on CPU, for testing:
MXNet 1.9's CPU build has no float16 kernels for FullyConnected and the fused attention matmuls, and only slow
scalar ones for layer norm, GELU and softmax, so in that mode these few operators compute in float32 and return
float16 (as cuBLAS and MXNet's GPU kernels do: float16 in and out, float32 accumulation). Everything else - the loss scaler, the optimizer, clipping, checkpoints, resume - is the
GPU run's code.
"""
import logging
import math
import os
import threading

import bort  # noqa: F401
import mxnet as mx
import numpy as np
from gluonnlp.optimizer import BERTAdam

from bort.errors import BortError
from bort.train.distributed import rank_device

log = logging.getLogger(__name__)

CPU_FLOAT16_ENV = "BORT_CPU_FLOAT16"
# Without CPU float16 kernels: the matrix products. With scalar CPU float16 kernels that dominated a CPU float16 step
# (6x a float32 step; layer norm, GELU and softmax were 80 % of it): the normalizations and the activation, which
# MXNet's GPU kernels also compute with float32 accumulation from float16 in and out.
_FLOAT32_OPS = ("FullyConnected", "contrib.interleaved_matmul_selfatt_qk", "contrib.interleaved_matmul_selfatt_valatt",
                "contrib.interleaved_matmul_encdec_qk", "contrib.interleaved_matmul_encdec_valatt",
                "LayerNorm", "LeakyReLU", "softmax", "log_softmax")
_INTEGER_INPUTS = {"softmax": ("length",), "log_softmax": ("length",)}  # inputs that keep their dtype


def cpu_float16_allowed():
    return os.environ.get(CPU_FLOAT16_ENV, "").strip() == "1"


def choose_context(dtype, use_gpu=True, local_rank=0, gpu=None, flag="--dtype"):
    """(context, dtype) of a run: the rank's device (bort.train.distributed.rank_device); float16 without a GPU only
    with BORT_CPU_FLOAT16=1."""
    ctx = rank_device(local_rank, use_gpu, gpu)
    if ctx.device_type == "gpu":
        return ctx, dtype
    if dtype == "float16":
        if not cpu_float16_allowed():
            raise BortError(f"{flag} float16 needs a GPU ({'none found' if use_gpu else 'CPU chosen'}); use {flag} "
                            f"float32, or set {CPU_FLOAT16_ENV}=1 to run the float16 code path on CPU (slow, for "
                            f"testing)")
        enable_cpu_float16()
    return mx.cpu(), dtype


_patched = []


def enable_cpu_float16():
    """Let float16 models run on CPU: the operators without CPU float16 kernels compute in float32."""
    if _patched:
        return
    log.warning("%s=1: float16 on CPU, for testing the GPU code path; slow, and FullyConnected/attention matmuls "
                "compute in float32 (as cuBLAS accumulates)", CPU_FLOAT16_ENV)
    for F in (mx.nd, mx.sym):
        for path in _FLOAT32_OPS:
            owner = F
            *parents, name = path.split(".")
            for parent in parents:
                owner = getattr(owner, parent)
            original = getattr(owner, name)
            setattr(owner, name, _computed_in_float32(F, original, _INTEGER_INPUTS.get(name, ())))
            _patched.append((owner, name, original))
    block = mx.gluon.HybridBlock
    _patched.append((block, "_get_graph", block._get_graph))
    block._get_graph = _get_graph_with_dtype(block._get_graph)


_graph_float16 = threading.local()


def _get_graph_with_dtype(original):
    # A symbol carries no dtype while a graph is built, but the block being traced knows its parameters'.
    def _get_graph(self, *args):
        outer = getattr(_graph_float16, "value", None)
        if outer is None:
            _graph_float16.value = any(p.dtype in (np.float16, "float16") for p in self.collect_params().values())
        try:
            return original(self, *args)
        finally:
            if outer is None:
                _graph_float16.value = None
    return _get_graph


def _is_float16(value):
    if isinstance(value, mx.nd.NDArray):
        return value.dtype == np.float16
    return bool(getattr(_graph_float16, "value", False))


def _computed_in_float32(F, op, keep=()):
    """`op` on float32 copies of its float16 inputs, its output cast back to float16; the inputs named in `keep`
    (integer lengths, also when passed positionally after the data) pass through unchanged."""
    tensor = (mx.nd.NDArray, mx.sym.Symbol)

    def wrapped(*args, **kwargs):
        inputs = [a for a in list(args) + list(kwargs.values()) if isinstance(a, tensor)]
        if not any(_is_float16(a) for a in inputs):
            return op(*args, **kwargs)
        args = [F.cast(a, dtype="float32") if isinstance(a, tensor) and (i == 0 or not keep) else a
                for i, a in enumerate(args)]
        kwargs = {k: F.cast(v, dtype="float32") if isinstance(v, tensor) and k not in keep else v
                  for k, v in kwargs.items()}
        return F.cast(op(*args, **kwargs), dtype="float16")

    wrapped.__name__ = getattr(op, "__name__", "op")
    return wrapped


def block_dtype(block):
    """The dtype of a block's (first) parameter: what its float inputs such as valid_length must have."""
    for param in block.collect_params().values():
        return np.dtype(param.dtype).name
    return "float32"


class DynamicLossScaler:
    """float16 loss scaling: halve on overflow (and skip the step, never below `min_scale`), double after
    `window` clean steps (a number of steps, the same for any number of ranks), and stop with an error after
    `max_skips` consecutive overflowing steps instead of skipping forever."""

    def __init__(self, init_scale=2.0 ** 15, window=2000, min_scale=1.0, max_skips=50):
        self.scale = float(init_scale)
        self.window = int(window)
        self.min_scale = float(min_scale)
        self.max_skips = max_skips
        self.clean_steps = 0
        self.skips = 0

    def update(self, overflow):
        if overflow:
            self.skips += 1
            self.clean_steps = 0
            if self.max_skips and self.skips >= self.max_skips:
                raise BortError(f"{self.skips} consecutive float16 steps had non-finite gradients (loss scale "
                                f"{self.scale:g}); the model diverged: lower --lr or train in float32")
            self.scale = max(self.min_scale, self.scale / 2)
        else:
            self.skips = 0
            self.clean_steps += 1
            if self.clean_steps >= self.window:
                self.scale *= 2
                self.clean_steps = 0

    def state_dict(self):
        return {"scale": self.scale, "clean_steps": self.clean_steps, "skips": self.skips, "window": self.window}

    def load_state_dict(self, state):
        self.scale = float(state["scale"])
        self.clean_steps = int(state.get("clean_steps", 0))
        self.skips = int(state.get("skips", 0))


def global_norm(params):
    """L2 norm of all gradients: a (1,) float32 NDArray on their device, queued, not read. One multi_sum_sq
    kernel for all gradients (float32 accumulation on GPU; MXNet's CPU kernel accumulates in the input dtype, so on
    CPU float16 gradients are cast first: a float16 sum of squares overflows at 256)."""
    grads = [p.grad() for p in params]
    if grads[0].context.device_type == "cpu" and grads[0].dtype == np.float16:
        grads = [g.astype("float32") for g in grads]
    return mx.nd.add_n(*mx.nd.multi_sum_sq(*grads, num_arrays=len(grads))).sqrt()


class GradientStep:
    """All-reduce gradients, check them for overflow, clip them by global norm, update; with a loss scaler for
    float16.

    `__call__(normalizer, step, loss)` divides gradients by `normalizer` (e.g. the number of samples or tokens in
    this rank's batch; Horovod additionally averages over ranks). Returns (grad_norm, applied).
    Clipping never rescales float16 gradients in place: the clip factor joins the loss scale and the normalizer
    in the optimizer's `rescale_grad`, applied in float32 inside the (multi-precision) update.

    One host synchronisation per step: with BERTAdam (whose update takes `rescale_grad` as an NDArray and skips
    the update when it is not finite, as gluon-nlp's FP16Trainer relies on) the update is queued first and the
    norm read after; with the other optimizers the norm is read before the update. A non-finite norm (or `loss`,
    folded into it) skips the step in float16 (the loss scaler counts it) and stops a float32 run with a BortError
    naming `step`.
    """

    def __init__(self, trainer, params, max_norm=1.0, loss_scaler=None):
        self.trainer = trainer
        self.params = [p for p in params.values() if p.grad_req != "null"]
        self.max_norm = max_norm
        self.loss_scaler = loss_scaler
        self.queue_first = isinstance(trainer.optimizer, BERTAdam)

    @property
    def loss_scale(self):
        return self.loss_scaler.scale if self.loss_scaler else 1.0

    def __call__(self, normalizer=1.0, step=None, loss=None):
        self.trainer.allreduce_grads()
        scale = self.loss_scale * normalizer
        # Horovod without NCCL averaging leaves the sum over ranks in the gradients and folds 1/size into
        # trainer._scale (rescale_grad): measure and clip the gradient that the update will actually apply.
        grad_scale = scale / getattr(self.trainer, "_scale", 1.0)
        norm = global_norm(self.params) / grad_scale
        if loss is not None:
            norm = norm + (loss.astype("float32", copy=False) * 0).sum()  # NaN unless the loss is finite
        if self.queue_first:
            # max(norm / max_norm, 1), NaN or inf when the norm is: then rescale_grad is not finite (or 0) and
            # BERTAdam's kernels leave weights and moments untouched.
            clip = mx.nd.maximum(norm / self.max_norm, 1.0) + norm * 0 if self.max_norm else norm * 0 + 1
            self.trainer.update(clip * scale)
            norm = float(norm.asscalar())
            finite = math.isfinite(norm)
        else:
            norm = float(norm.asscalar())
            finite = math.isfinite(norm)
            if finite:
                if self.max_norm and norm > self.max_norm:
                    scale *= norm / self.max_norm
                self.trainer.update(scale)
        if self.loss_scaler:
            self.loss_scaler.update(not finite)
        elif not finite:
            raise BortError(f"step {step}: non-finite loss or gradient (norm {norm}) in float32; the model diverged "
                            f"or its input holds NaN/inf: lower --lr, or resume from an earlier checkpoint")
        return norm, finite

    def zero_grad(self):
        for param in self.params:
            param.zero_grad()
