"""Training utilities shared by the distillation pretrainer and the fine-tuner.

- `create_trainer`: BERTAdam (or LAMB/Adam) with no weight decay on layer-norm parameters and biases.
- `LinearWarmupDecay`: linear warmup to the peak learning rate, then linear decay to zero.
- `prepare_optimizer_state`: create a trainer's optimizer state now, so that a checkpoint can be restored into it.
- `step_seed`: a per-step MXNet seed, which makes dropout reproducible across a resume (MXNet's RNG state
  cannot be saved); `dropout_reseeded`: whether it does anything on a device.
"""
import random

import bort  # noqa: F401
import gluonnlp  # noqa: F401  (registers the 'bertadam' optimizer)
import mxnet as mx
import numpy as np

from bort.errors import BortError

NO_DECAY_SUFFIXES = ("gamma", "beta", "bias")


def set_seed(seed):
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    mx.random.seed(seed)


def step_seed(seed, step, rank=0, ctx=None):
    """Reseed MXNet's RNG for one step so that dropout masks depend only on (seed, step, rank): every device's
    generator, or with a GPU `ctx` only that GPU's (reseeding a GPU generator launches kernels)."""
    value = (seed * 1_000_003 + step * 1_009 + rank) % (2 ** 31)
    if ctx is not None and ctx.device_type == "gpu":
        mx.random.seed(value, ctx=ctx)
    else:
        mx.random.seed(value)


def dropout_reseeded(ctx, cudnn_off=False):
    """Whether reseeding MXNet's generator every step changes the dropout masks on `ctx`: on CPU, and on GPU only
    with dropout computed by MXNet's kernel (bort.model.disable_cudnn_dropout); cuDNN's dropout ignores the seed, so
    there the reseed would cost time and buy nothing."""
    return ctx.device_type != "gpu" or cudnn_off


def trainable_parameters(block):
    """{name: Parameter} of parameters with gradients, tied weights listed once, in a stable order."""
    params, seen = {}, set()
    for name, param in block._collect_params_with_prefix().items():
        if param.grad_req == "null" or id(param) in seen:
            continue
        seen.add(id(param))
        params[name] = param
    return params


def create_trainer(params, dist, optimizer="bertadam", lr=1e-4, weight_decay=0.01, epsilon=1e-6,
                   beta1=0.9, beta2=0.999, multi_precision=False):
    """A trainer over `params` ({name: Parameter}); layer-norm parameters and biases get no weight decay."""
    for name, param in params.items():
        if name.endswith(NO_DECAY_SUFFIXES):
            param.wd_mult = 0.0
    optimizer_params = {"learning_rate": lr, "wd": weight_decay}
    if optimizer in ("bertadam", "adam", "lamb"):
        optimizer_params.update(epsilon=epsilon, beta1=beta1, beta2=beta2)
    elif optimizer not in ("sgd", "nag"):
        raise BortError(f"--optimizer: unknown optimizer {optimizer!r}; expected bertadam, lamb, adam or sgd")
    if multi_precision:
        optimizer_params["multi_precision"] = True
    return dist.make_trainer(list(params.values()), optimizer, optimizer_params)


def prepare_optimizer_state(trainer):
    """Create the kvstore and updaters (the optimizer state) of a gluon `Trainer` now rather than at its first
    step. Restoring a checkpoint writes into them before any step; MXNet 1.x has no public call for this, so the
    private one is used here, and only here."""
    if not trainer._kv_initialized:
        trainer._init_kvstore()


class LinearWarmupDecay:
    """lr(step) for step = 1..total_steps: linear warmup over `warmup_steps`, then linear decay to 0."""

    def __init__(self, base_lr, total_steps, warmup_steps):
        if total_steps <= 0:
            raise BortError(f"the number of training steps must be positive, got {total_steps}")
        self.base_lr = base_lr
        self.total_steps = total_steps
        self.warmup_steps = max(0, min(int(warmup_steps), total_steps))

    def __call__(self, step):
        if step <= self.warmup_steps:
            return self.base_lr * step / max(1, self.warmup_steps)
        remaining = (self.total_steps - step) / max(1, self.total_steps - self.warmup_steps)
        return self.base_lr * max(0.0, remaining)
