"""Data against the model it meets: --max_len, vocabularies, shards, segment names, training-state structure.
Each case used to run silently (MXNet's Embedding clips ids) or end in a traceback; now it is one line, exit 2."""
import json
import os

import pytest

import bort  # noqa: F401
import mxnet as mx

import create_pretraining_data
import finetune_bort
import run_pretraining_distillation_hvd as pretrain_cli
from bort.weights.checkpoint import load_training_state
from bort.errors import BortError, run_cli
from bort.finetune.checkpoints import build_task_model, save_task_checkpoint
from bort.model import get_config
from bort.finetune.tasks import get_task
from bort.validation import validate_training_state
from helpers import ROOT, VOCAB_FLAGS

GPT2_VOCAB = ["--encoder_json", os.path.join(ROOT, "test_data/vocab/encoder.json"),
              "--vocab_bpe", os.path.join(ROOT, "test_data/vocab/vocab.bpe")]  # 1000 tokens, not 1005
SST2 = os.path.join(ROOT, "test_data/glue/SST-2")
TINY = ["--pretrained_parameters", "none", "--model_config", "bort_tiny", "--gpu", "999"]


def _one_line_exit_2(main, argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_cli(main)(argv)
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    return err


@pytest.fixture(scope="module")
def sst2_checkpoint(tmp_path_factory):
    """A fine-tuned SST-2 checkpoint of bort_tiny with the test vocabulary (1005 tokens)."""
    task = get_task("SST-2")
    mx.random.seed(0)
    model = build_task_model(task, get_config("bort_tiny", vocab_size=1005))
    path = str(tmp_path_factory.mktemp("ckpt") / "model_bort_SST-2.params")
    save_task_checkpoint(model, path, task)
    return path


def test_finetune_max_len_above_the_models_positions(tmp_path, capsys):
    err = _one_line_exit_2(finetune_bort.main, ["--task_name", "SST-2", "--data_dir", SST2, "--output_dir",
                                                str(tmp_path / "out"), "--max_len", "200"] + TINY + VOCAB_FLAGS, capsys)
    assert "--max_len 200: longer than the 128 positions of the model (--model_config bort_tiny)" in err
    assert not (tmp_path / "out").exists()


def test_finetune_inference_with_another_vocabulary(sst2_checkpoint, tmp_path, capsys):
    err = _one_line_exit_2(finetune_bort.main, ["--task_name", "SST-2", "--data_dir", SST2, "--output_dir",
                                                str(tmp_path / "out"), "--only_inference", "--max_len", "32",
                                                "--model_parameters", sst2_checkpoint] + TINY + GPT2_VOCAB, capsys)
    assert "has 1005 word embeddings but the tokenizer has 1000 tokens" in err
    assert not (tmp_path / "out").exists()


def _predict(settings, tokenizer_files=VOCAB_FLAGS):
    """scripts/predict.py's library call (bort.inference.task_prediction) as a CLI main: argv is ignored."""
    from bort.inference.task_prediction import PredictConfig, predict_segment
    from bort.text.tokenizer import load_tokenizer

    files = dict(zip((flag[2:] for flag in tokenizer_files[::2]), tokenizer_files[1::2]))
    return lambda argv: predict_segment(PredictConfig(task_name="SST-2", **settings), load_tokenizer(**files))


@pytest.mark.parametrize("flags, message", [
    ({"segment": "bogus"}, "--segment 'bogus': SST-2 has no such segment; expected one of ['train', 'dev', 'test']"),
    ({"segment": "dev", "max_len": 2}, "--max_len: must be at least 8, got 2"),
    ({"segment": "dev", "max_len": 0}, "--max_len: must be a positive integer, got 0"),
    ({"segment": "dev", "batch_size": -1}, "--batch_size: must be a positive integer, got -1"),
    ({"segment": "dev", "calib_segment": "dev_matched"}, "--calib_segment 'dev_matched': SST-2 has no such"),
])
def test_predict_flags(sst2_checkpoint, tmp_path, capsys, flags, message):
    err = _one_line_exit_2(_predict(dict(model_parameters=sst2_checkpoint, data_dir=SST2,
                                         output_dir=str(tmp_path / "p"), **flags)), [], capsys)
    assert message in err


def test_predict_with_another_vocabulary(sst2_checkpoint, tmp_path, capsys):
    err = _one_line_exit_2(_predict(dict(model_parameters=sst2_checkpoint, data_dir=SST2, segment="dev",
                                         output_dir=str(tmp_path / "p")), GPT2_VOCAB), [], capsys)
    assert "1005 word embeddings but the tokenizer has 1000 tokens" in err


# ---- pretraining shards against the student ---------------------------------------------------------------------
def _shards(out_dir, max_seq_length):
    create_pretraining_data.main(["--input_file", os.path.join(ROOT, "test_data/sample_text.txt"), "--output_dir",
                                  str(out_dir), *VOCAB_FLAGS, "--max_seq_length", str(max_seq_length),
                                  "--num_workers", "1", "--no_progress"])
    return str(out_dir)


def _pretrain_args(data, tmp_path):
    return ["--data", data, "--model", "bort_tiny", "--teacher_model", "roberta_tiny", "--num_steps", "1",
            "--batch_size", "4", "--dtype", "float32", "--ckpt_dir", str(tmp_path / "ck"), "--no_progress"]


def test_pretraining_refuses_instances_longer_than_the_student(tmp_path, capsys):
    data = _shards(tmp_path / "long", 200)
    err = _one_line_exit_2(pretrain_cli.main, _pretrain_args(data, tmp_path), capsys)
    assert "part-000.npz: instances of up to 200 tokens (max_seq_length) do not fit the model's 128 positions" in err
    assert not (tmp_path / "ck").exists()


def test_pretraining_refuses_shards_of_two_vocabularies(tmp_path, capsys):
    from data.pretraining_format import load_shard, write_shard

    a = _shards(tmp_path / "a", 32)
    shard = load_shard(os.path.join(a, "part-000.npz"))
    os.makedirs(tmp_path / "b")
    write_shard(tmp_path / "b" / "part-000.npz", shard.batch, dict(shard.metadata, vocab_size=1200))
    err = _one_line_exit_2(pretrain_cli.main, _pretrain_args(f"{a},{tmp_path / 'b'}", tmp_path), capsys)
    assert "b/part-000.npz: vocab_size 1200 differs from" in err and "a/part-000.npz's 1005" in err


# ---- training state structure -----------------------------------------------------------------------------------
GOOD_STATE = {"step": 4, "world_size": 1, "accumulate": 1, "data_positions": [{"0": {"epoch": 0, "shard": 1,
                                                                                     "batch": 3}}],
              "rng": {"python": [3, [1, 2, 3], None], "numpy": ["MT19937", [1, 2], 3, 0, 0.0]},
              "loss_scale": None, "optimizer": {"num_update": 4, "update_count": {"w": 4}, "layout": {"w": [True]}}}


@pytest.mark.parametrize("edit, field", [
    (lambda s: [s], "top level"),
    (lambda s: dict(s, optimizer=[]), "optimizer"),
    (lambda s: dict(s, optimizer=dict(s["optimizer"], layout=["w"])), "optimizer.layout"),
    (lambda s: dict(s, optimizer=dict(s["optimizer"], layout={"w": "yes"})), "optimizer.layout.w"),
    (lambda s: dict(s, optimizer=dict(s["optimizer"], update_count={"w": "4"})), "optimizer.update_count.w"),
    (lambda s: dict(s, optimizer=dict(s["optimizer"], num_update=None)), "optimizer.num_update"),
    (lambda s: dict(s, data_positions={"0": 1}), "data_positions"),
    (lambda s: dict(s, data_positions=[{"0": {"epoch": 0}}]), "data_positions[0].0"),
    (lambda s: dict(s, world_size=2), "data_positions: expected 2 entries"),
    (lambda s: dict(s, rng={"python": 1}), "rng"),
    (lambda s: dict(s, step="4"), "step"),
])
def test_state_json_with_the_wrong_structure(tmp_path, edit, field):
    assert validate_training_state(json.loads(json.dumps(GOOD_STATE)), "x") == GOOD_STATE
    prefix = str(tmp_path / "step_0000004")
    mx.nd.save(prefix + ".states", {"w:0": mx.nd.zeros(2)})
    with open(prefix + ".state.json", "w") as handle:
        json.dump(edit(json.loads(json.dumps(GOOD_STATE))), handle)
    with pytest.raises(BortError) as err:
        load_training_state(prefix, trainer=None)
    message = str(err.value)
    assert message.startswith(prefix + ".state.json: ") and field in message and "\n" not in message


def test_a_config_json_claiming_more_than_its_parameter_file_holds(sst2_checkpoint, tmp_path, capsys):
    import shutil

    params = tmp_path / "model_bort_SST-2.params"
    for suffix in (".params", ".task.json"):
        shutil.copy(sst2_checkpoint.replace(".params", suffix), tmp_path / f"model_bort_SST-2{suffix}")
    config = json.load(open(sst2_checkpoint.replace(".params", ".json")))
    (tmp_path / "model_bort_SST-2.json").write_text(json.dumps(dict(config, num_layers=10 ** 8)))
    err = _one_line_exit_2(_predict(dict(model_parameters=str(params), data_dir=SST2, segment="dev",
                                         output_dir=str(tmp_path / "p"))), [], capsys)
    assert "model_bort_SST-2.json: describes a model of" in err and "can hold" in err
