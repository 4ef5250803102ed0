"""What a GPU run does differently, tested on CPU (issue #23): the device of each rank (one choice for every entry
point), dropout by MXNet's kernel (--dropout_cudnn_off) and when the per-step reseeding is done."""
import dataclasses
import json
import types

import bort  # noqa: F401
import mxnet as mx
import numpy as np
import pytest

import bort.pretrain.distill
from bort.model import build_model, disable_cudnn_dropout, get_config
from bort.pretrain import teacher_cache
from bort.pretrain.loop import parameters_digest, pretrain
from bort.train import optim
from bort.train.distributed import rank_device
from bort.train.precision import choose_context
from helpers import tiny_config


@pytest.mark.parametrize("num_gpus, local_rank, gpu, expected", [
    (2, 3, None, mx.gpu(1)),  # more ranks than GPUs
    (1, 1, None, mx.gpu(0)),  # CUDA_VISIBLE_DEVICES shows each rank its own GPU
    (4, 2, None, mx.gpu(2)),
    (4, 2, 3, mx.gpu(3)),  # fine-tuning's --gpu in one process
    (0, 1, None, mx.cpu()),
])
def test_each_rank_gets_a_gpu_it_can_see(monkeypatch, num_gpus, local_rank, gpu, expected):
    monkeypatch.setattr(mx.context, "num_gpus", lambda: num_gpus)
    assert rank_device(local_rank, gpu=gpu) == expected
    assert rank_device(local_rank, use_gpu=False) == mx.cpu()
    assert choose_context("float32", local_rank=local_rank, gpu=gpu) == (expected, "float32")


def test_the_teacher_cache_uses_the_ranks_device(shards, tmp_path, monkeypatch):
    """Before: mx.gpu(local_rank), 'invalid device ordinal' for rank 1 when it sees one GPU."""
    monkeypatch.setattr(mx.context, "num_gpus", lambda: 1)
    seen = {}

    class TeacherLoaded(Exception):
        pass

    def load_teacher(spec, ctx=None, dtype=None, **kwargs):
        seen.update(ctx=ctx, dtype=dtype)
        raise TeacherLoaded

    monkeypatch.setattr(bort.pretrain.distill, "load_teacher", load_teacher)
    rank1 = types.SimpleNamespace(rank=1, size=2, local_rank=1, is_root=False)
    with pytest.raises(TeacherLoaded):
        teacher_cache.build_cache(shards, cache_dir=str(tmp_path), teacher_model="roberta_tiny", dtype="float16",
                                  dist=rank1, progress=False)
    assert seen == {"ctx": mx.gpu(0), "dtype": "float16"}


def _dropout_nodes(model):
    outputs = model(mx.sym.var("inputs"), mx.sym.var("valid_length"), mx.sym.var("positions"))
    nodes = json.loads(mx.sym.Group(list(outputs)).tojson())["nodes"]
    return [node["attrs"] for node in nodes if node["op"] == "Dropout"]


def test_dropout_cudnn_off_reaches_every_dropout():
    config = get_config("bort_tiny", vocab_size=50)
    default = _dropout_nodes(build_model(config))
    assert default and all(attrs["cudnn_off"] == "False" for attrs in default)
    model = build_model(config)
    changed = disable_cudnn_dropout(model)
    nodes = _dropout_nodes(model)
    # the word embeddings' dropout, and every one of gluon-nlp's encoder
    assert changed == len(nodes) == len(default) >= 1 + 2 * config.num_layers
    assert all(attrs["cudnn_off"] == "True" for attrs in nodes)


def test_dropout_cudnn_off_leaves_cpu_training_unchanged(shards, tmp_path):
    """cudnn_off selects a GPU kernel only: on CPU the same masks, the same parameters (so exact resume holds)."""
    config = tiny_config(shards, tmp_path / "a", num_steps=3, ckpt_interval=3)
    plain = parameters_digest(pretrain(config)["student"])
    flagged = parameters_digest(pretrain(dataclasses.replace(config, ckpt_dir=str(tmp_path / "b"),
                                                             dropout_cudnn_off=True))["student"])
    for name in plain:
        np.testing.assert_array_equal(plain[name], flagged[name], err_msg=name)


def test_reseeding_only_where_dropout_reads_mxnets_generator(monkeypatch):
    calls = []
    monkeypatch.setattr(mx.random, "seed", lambda value, ctx="all": calls.append((value, ctx)))
    assert optim.dropout_reseeded(mx.cpu()) and optim.dropout_reseeded(mx.gpu(0), cudnn_off=True)
    assert not optim.dropout_reseeded(mx.gpu(0))  # cuDNN's dropout state ignores mx.random.seed
    optim.step_seed(1, 2, 3, mx.gpu(1))
    optim.step_seed(1, 2, 3, mx.cpu())
    value = (1 * 1_000_003 + 2 * 1_009 + 3) % 2 ** 31
    assert calls == [(value, mx.gpu(1)), (value, "all")]  # a GPU reseeds its own generator only
