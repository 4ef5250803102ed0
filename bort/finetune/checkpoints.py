"""Task models and their files: building a TaskModel, a task checkpoint, the pretrained encoder it starts from.

A task checkpoint is `<name>.params`, the architecture `<name>.json` and `<name>.task.json` naming the task (so a
checkpoint is never used for another task by mistake).
"""
import os

import bort  # noqa: F401
import mxnet as mx

from bort.errors import BortError
from bort.finetune.heads import TaskModel
from bort.io import read_json, write_json
from bort.model import get_config
from bort.weights.checkpoint import load_arrays, load_parameters, read_config, save_parameters
from bort.weights.convert import hf_encoder

PRETRAINED_HELP = ("download bort.params as described in the README ('Weights, vocabularies and the teacher') and put it at "
                   "model/bort.params, or pass --pretrained_parameters PATH (or 'none' for a random initialization)")


def build_task_model(task, config, dropout=0.1, ctx=None):
    """A TaskModel for `task` (its outputs and spans) on `config` (a ModelConfig), initialized, shapes known."""
    ctx = ctx or mx.cpu()
    model = TaskModel(config, task.num_outputs, task.num_spans, dropout)
    model.initialize(mx.init.Normal(0.02), ctx=ctx)
    with mx.autograd.pause():  # finish the encoder's deferred shapes
        spans = mx.nd.zeros((1, task.num_spans, 2), ctx=ctx) if task.num_spans else None
        model(mx.nd.zeros((1, 2), ctx=ctx), mx.nd.array([2], ctx=ctx), spans)
    return model


def task_meta_path(params_path):
    return os.path.splitext(os.fspath(params_path))[0] + ".task.json"


def save_task_checkpoint(model, path, task, extra=None):
    """`path` (.params), its config JSON and `<name>.task.json` (task, outputs, spans, `extra`), each atomically."""
    meta = {"task": task.name, "num_outputs": task.num_outputs, "num_spans": task.num_spans}
    meta.update(extra or {})
    save_parameters(model, path, config=model.config)
    write_json(task_meta_path(path), meta)


def load_task_checkpoint(path, task, ctx=None, dropout=0.1):
    """A TaskModel from a fine-tuned checkpoint; one-line error when it was fine-tuned for another task."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise BortError(f"{path}: fine-tuned checkpoint not found (--model_parameters)")
    meta_path = task_meta_path(path)
    if not os.path.isfile(meta_path):
        raise BortError(f"{path}: no {os.path.basename(meta_path)} beside it; expected a checkpoint written by "
                        f"finetune_bort.py (for a pretrained model use --pretrained_parameters)")
    meta = read_json(meta_path, "the task of a fine-tuned checkpoint")
    wanted = {task.name, task.model_task} - {None}
    if meta.get("task") not in wanted:
        raise BortError(f"{path}: checkpoint was fine-tuned for {meta.get('task')!r}, not for "
                        f"{' or '.join(sorted(wanted))}")
    model = build_task_model(task, read_config(path), dropout, ctx)
    load_parameters(model, path)
    return model


def pretrained_model(task, config, tokenizer, ctx):
    """The task model with the encoder from config.pretrained_parameters (random with 'none') and a freshly
    initialized head (config.init, config.prob); `config` is a FinetuneConfig."""
    source = config.pretrained_parameters
    if not source or source.lower() == "none":
        model_config = get_config(config.model_config, vocab_size=tokenizer.vocab_size)
        model = build_task_model(task, model_config, config.dropout, ctx)
        model.head.initialize(head_initializer(config.init, config.prob), ctx=ctx, force_reinit=True)
        return model
    if os.path.isdir(source):
        return hf_pretrained_model(task, config, tokenizer, ctx)
    if not os.path.isfile(source):
        raise BortError(f"{source}: pretrained parameters not found; {PRETRAINED_HELP}")
    model_config = read_config(source, config.model_config)
    if tokenizer.vocab_size > model_config.vocab_size:
        raise BortError(f"{source}: the model has {model_config.vocab_size} word embeddings but the vocabulary has "
                        f"{tokenizer.vocab_size} tokens; pass the vocabulary it was trained with")
    model = build_task_model(task, model_config, config.dropout, ctx)
    load_parameters(model.bort, source, ignore_extra=("decoder.", "pooler.", "classifier."))
    model.head.initialize(head_initializer(config.init, config.prob), ctx=ctx, force_reinit=True)
    return model


def hf_pretrained_model(task, config, tokenizer, ctx):
    """The task model on a local HF checkpoint directory (config.pretrained_parameters): the encoder converted by
    bort.weights.convert, the head's dense (tanh) layer from BERT's pooler when the checkpoint has one."""
    source = config.pretrained_parameters
    model_config, arrays, pooler = hf_encoder(source)
    if tokenizer.vocab_size > model_config.vocab_size:
        raise BortError(f"{source}: the model has {model_config.vocab_size} word embeddings but the vocabulary has "
                        f"{tokenizer.vocab_size} tokens; pass the checkpoint's own vocabulary")
    model = build_task_model(task, model_config, config.dropout, ctx)
    load_arrays(model.bort, arrays, source)
    model.head.initialize(head_initializer(config.init, config.prob), ctx=ctx, force_reinit=True)
    if pooler and not task.num_spans:  # a span head's dense layer reads more than the first token
        model.head.dense.weight.set_data(mx.nd.array(pooler["weight"], ctx=ctx))
        model.head.dense.bias.set_data(mx.nd.array(pooler["bias"], ctx=ctx))
    return model


def check_model_files(config):
    """Fail before any slow setup when the parameter files a run (a FinetuneConfig) needs are missing."""
    if config.only_inference:
        if config.model_parameters and not os.path.isfile(config.model_parameters):
            raise BortError(f"{config.model_parameters}: fine-tuned checkpoint not found (--model_parameters)")
        return
    source = config.pretrained_parameters
    if source and source.lower() != "none" and not os.path.isfile(source) and not os.path.isdir(source):
        raise BortError(f"{source}: pretrained parameters not found; {PRETRAINED_HELP}")


def head_initializer(name, scale):
    """The original's choices for initializing the task head (--init, --prob)."""
    return {"gaussian": lambda: mx.init.Normal(scale), "uniform": lambda: mx.init.Uniform(scale),
            "orthogonal": lambda: mx.init.Orthogonal(scale=scale), "xavier": mx.init.Xavier}[name]()
