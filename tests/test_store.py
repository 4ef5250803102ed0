"""gluon-nlp's model store (the pretrained teacher, offline) and the original Bort's checkpoint layout."""
import dataclasses
import json
import os

import bort  # noqa: F401
import mxnet as mx
import numpy as np
import pytest

import create_pretraining_data
import run_pretraining_distillation_hvd as cli
from bort.weights import store
from bort.pretrain.distill import load_teacher
from bort.errors import BortError
from bort.model import CONFIGS, build_model, get_config
from bort.pretrain.loop import PretrainConfig, pretrain
from bort.text.gluonnlp_files import file_sha1
from bort.train.distributed import Distributed
from bort.train.optim import create_trainer, trainable_parameters

from helpers import ROOT, VOCAB_FLAGS


def _inputs(vocab_size):
    ids = mx.nd.array(np.random.RandomState(0).randint(3, vocab_size, (2, 9)))
    return ids, mx.nd.array([9, 6]), mx.nd.array([[1, 4], [0, 5]])


# --- the pretrained teacher from gluon-nlp's model store -----------------------------------------------------------

@pytest.fixture
def store_home(tmp_path, monkeypatch):
    """An empty $MXNET_HOME, and no network: any fetch fails the way an offline one does."""
    home = tmp_path / "mxnet_home"
    (home / "models").mkdir(parents=True)
    monkeypatch.setenv("MXNET_HOME", str(home))
    fetched = []

    def offline(name, root):
        fetched.append(name)
        raise OSError("[Errno 101] Network is unreachable")

    monkeypatch.setattr(store, "_fetch", offline)
    return home / "models", fetched


def test_teacher_from_gluonnlp_store_without_network(store_home, monkeypatch):
    models, fetched = store_home
    config = get_config("roberta_tiny", vocab_size=60, dropout=0.0)
    monkeypatch.setitem(CONFIGS, "roberta_store_test", config)
    # A file laid out as gluon-nlp keeps it: <model>_<dataset>-<sha1[:8]>.params, saved by gluon itself.
    original = build_model(config)
    ids, valid, positions = _inputs(60)
    _, want = original(ids, valid, positions)
    tmp = models / "download.tmp"
    original.save_parameters(str(tmp))
    sha1 = file_sha1(tmp)
    name = "roberta_store_test_test_corpus"
    os.replace(tmp, models / f"{name}-{sha1[:8]}.params")
    monkeypatch.setitem(store._registered_sha1(), name, sha1)

    teacher = load_teacher(None, config="roberta_store_test", dataset_name="test_corpus")
    np.testing.assert_allclose(teacher(ids, valid, positions).asnumpy(), want.asnumpy(), rtol=1e-5, atol=1e-6)
    assert teacher.source.endswith(f"{name}-{sha1[:8]}.params") and fetched == []
    # A damaged file is fetched again; offline that is a one-line error saying what to do.
    with open(models / f"{name}-{sha1[:8]}.params", "r+b") as handle:
        handle.seek(100)
        handle.write(b"\x00\x01\x02")
    with pytest.raises(BortError) as err:
        load_teacher(None, config="roberta_store_test", dataset_name="test_corpus")
    assert fetched == [name] and "\n" not in str(err.value)


def test_missing_pretrained_teacher_offline_is_one_line(store_home):
    models, fetched = store_home
    with pytest.raises(BortError) as err:
        load_teacher(None, config="roberta_24_1024_16")
    message = str(err.value)
    expected = models / "roberta_24_1024_16_openwebtext_ccnews_stories_books_cased-d1b7163e.params"
    assert message.startswith(str(expected)) and "\n" not in message
    assert "Network is unreachable" in message and "--teacher_ckpt_dir" in message and "pretrained=True" in message
    assert fetched == ["roberta_24_1024_16_openwebtext_ccnews_stories_books_cased"]
    # A config gluon-nlp never published: no fetch, a clear message.
    with pytest.raises(BortError, match="gluon-nlp has no pretrained parameters for 'roberta_tiny'"):
        load_teacher(None, config="roberta_tiny")
    # A random teacher only on request (and a checkpoint always wins over the request).
    assert load_teacher(None, config="roberta_tiny", random_init=True, vocab_size=40).config.vocab_size == 40


def _shards(out_dir):
    create_pretraining_data.main(["--input_file", os.path.join(ROOT, "test_data/sample_text.txt"), "--output_dir",
                                  str(out_dir), *VOCAB_FLAGS, "--max_seq_length", "32", "--num_workers", "1",
                                  "--no_progress"])
    return str(out_dir)


def test_pretraining_cli_without_teacher_checkpoint_never_uses_a_random_one(store_home, tmp_path, capsys):
    shards = _shards(tmp_path / "shards")
    args = ["--data", shards, "--model", "bort_tiny", "--teacher_model", "roberta_tiny", "--num_steps", "1",
            "--batch_size", "4", "--dtype", "float32", "--ckpt_dir", str(tmp_path / "ck"), "--no_progress"]
    with pytest.raises(SystemExit) as exit_info:
        cli.run_cli(cli.main)(args)
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and err.count("\n") == 0
    assert "gluon-nlp has no pretrained parameters for 'roberta_tiny'" in err and "--random_teacher" in err
    assert not os.path.exists(tmp_path / "ck" / "step_0000001.params")


# --- the original's checkpoint layout ------------------------------------------------------------------------------

def _original_checkpoint(ckpt_dir, step, config, seed=0):
    """What the original pretrainer wrote: gluon-nlp's BERTModel (the original BortModel's base class) saved with
    save_parameters into checkpoint_<step>/<step>.params, and its bertadam Trainer's save_states (a pickle)."""
    from gluonnlp.model import BERTEncoder, BERTModel

    mx.random.seed(seed)
    encoder = BERTEncoder(num_layers=config.num_layers, units=config.units, hidden_size=config.hidden_size,
                          max_length=config.max_length, num_heads=config.num_heads, dropout=0.0,
                          layer_norm_eps=config.layer_norm_eps)
    model = BERTModel(encoder, vocab_size=config.vocab_size, units=config.units, embed_size=config.embed_size,
                      use_pooler=False, use_decoder=True, use_classifier=False, use_token_type_embed=False)
    model.initialize(mx.init.Normal(0.02))
    trainer = mx.gluon.Trainer(model.collect_params(), "bertadam", {"learning_rate": 1e-3, "epsilon": 1e-6,
                                                                     "wd": 0.01})
    ids, valid, positions = _inputs(config.vocab_size)
    with mx.autograd.record():
        _, decoded = model(ids, mx.nd.zeros_like(ids), valid, positions)
        loss = (decoded ** 2).mean()
    loss.backward()
    trainer.step(1)
    folder = os.path.join(ckpt_dir, f"checkpoint_{step}")
    os.makedirs(folder)
    model.save_parameters(os.path.join(folder, f"{step:07d}.params"))
    trainer.save_states(os.path.join(folder, f"{step:07d}.states.00"))
    names = {}
    for name, param in model._collect_params_with_prefix().items():
        names.setdefault(id(param), name)  # decoder.3.weight is word_embed.0.weight
    states = {names[id(trainer._params[i])]: [s.asnumpy() for s in state]
              for i, state in trainer._updaters[0].states.items()}
    _, decoded = model(ids, mx.nd.zeros_like(ids), valid, positions)
    return folder, states, decoded.asnumpy()


def test_original_checkpoint_directory_as_teacher_and_student(tmp_path):
    config = get_config("roberta_tiny", vocab_size=70, dropout=0.0)
    folder, _, want = _original_checkpoint(str(tmp_path), 20, config)
    teacher = load_teacher(folder, config=config)
    ids, valid, positions = _inputs(70)
    np.testing.assert_allclose(teacher(ids, valid, positions).asnumpy(), want, rtol=1e-5, atol=1e-6)
    assert store.resolve_params_path(folder) == os.path.join(folder, "0000020.params")
    assert list(store.original_states_files(os.path.join(folder, "0000020.params"))) == [0]
    with pytest.raises(BortError, match="expected one .params file"):
        store.resolve_params_path(str(tmp_path))
    # Its pickled optimizer state: refused without the opt-in, one line naming the file.
    with pytest.raises(BortError) as err:
        store.read_original_states(os.path.join(folder, "0000020.states.00"))
    assert str(err.value).startswith(os.path.join(folder, "0000020.states.00") + ": ")
    assert "--allow_legacy_pickle" in str(err.value) and "\n" not in str(err.value)


def test_original_optimizer_state_lands_on_the_right_parameters(tmp_path):
    config = get_config("bort_tiny", vocab_size=80, dropout=0.0)
    folder, saved, _ = _original_checkpoint(str(tmp_path), 10, config, seed=3)
    model = build_model(config)
    model(*_inputs(80))
    params = trainable_parameters(model)
    trainer = create_trainer(params, Distributed(), lr=1e-3)
    trainer._init_kvstore()
    count = store.load_original_states(os.path.join(folder, "0000010.states.00"), trainer, params, config,
                                       allow_pickle=True)
    assert count == len(saved) == len(params)
    names = {id(p): n for n, p in params.items()}
    for index, state in trainer._updaters[0].states.items():
        name = names[id(trainer._params[index])]
        for ours, theirs in zip(state, saved[name]):
            np.testing.assert_array_equal(ours.asnumpy(), theirs)
    # A state written for another model is refused.
    other = get_config("bort_tiny", vocab_size=80, hidden_size=32)
    model = build_model(other)
    model(*_inputs(80))
    params = trainable_parameters(model)
    trainer = create_trainer(params, Distributed(), lr=1e-3)
    trainer._init_kvstore()
    with pytest.raises(BortError, match="optimizer state of .* has shapes"):
        store.load_original_states(os.path.join(folder, "0000010.states.00"), trainer, params, other,
                                   allow_pickle=True)


def test_pretrainer_resumes_an_original_checkpoint_only_with_the_opt_in(tmp_path, capsys):
    shards = _shards(tmp_path / "shards")
    config = get_config("bort_tiny", vocab_size=1005, dropout=0.0)
    ckpt = tmp_path / "ck"
    folder, _, _ = _original_checkpoint(str(ckpt), 2, config)
    args = ["--data", shards, "--model", "bort_tiny", "--teacher_model", "none", "--teacher_ce_weight", "0",
            "--mlm_weight", "1", "--num_steps", "3", "--batch_size", "4", "--dtype", "float32", "--dropout", "0",
            "--ckpt_dir", str(ckpt), "--start_step", "2", "--no_progress", "--log_interval", "1"]
    with pytest.raises(SystemExit) as exit_info:
        cli.run_cli(cli.main)(args)
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and err.count("\n") == 0
    assert os.path.join(folder, "0000002.states.00") in err and "--allow_legacy_pickle" in err
    result = pretrain(dataclasses.replace(
        PretrainConfig(), data=shards, model="bort_tiny", teacher_model="none", teacher_ce_weight=0.0,
        mlm_weight=1.0, num_steps=3, batch_size=4, dtype="float32", dropout=0.0, ckpt_dir=str(ckpt),
        start_step="2", allow_legacy_pickle=True, progress=False, log_interval=1))
    assert result["step"] == 3 and os.path.isfile(ckpt / "step_0000003.state.json")
    records = [json.loads(line) for line in open(ckpt / "metrics.jsonl")]
    assert [r["step"] for r in records if r["kind"] == "train"] == [3]


def test_pretrained_flag_needs_the_released_weights(tmp_path, monkeypatch):
    monkeypatch.setattr(store, "RELEASED_BORT", str(tmp_path / "model" / "bort.params"))
    with pytest.raises(BortError, match=r"bort.params: --pretrained starts the student from the released Bort"):
        store.student_params_path(None, pretrained=True)
    assert store.student_params_path(None) is None
    model = build_model(get_config("bort_tiny"))
    model(*_inputs(100))
    os.makedirs(tmp_path / "model")
    model.save_parameters(str(tmp_path / "model" / "bort.params"))
    assert store.student_params_path(None, pretrained=True) == str(tmp_path / "model" / "bort.params")
    assert store.student_params_path(str(tmp_path / "model")) == str(tmp_path / "model" / "bort.params")
