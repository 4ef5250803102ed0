"""HF <-> Gluon conversion: parity against transformers on padded batches, exact round trips, the CLI.

These tests are the proof that our encoder is right: tiny random HF models (every parameter
perturbed, so a swapped bias or layer norm shows) must give the same hidden states and MLM logits.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import bort  # noqa: F401
import mxnet as mx

from bort.weights import convert, hf_files
from bort.weights.checkpoint import load_arrays, save_parameters
from bort.weights.parity import verify_parity
from bort.errors import BortError
from bort.model import build_model, get_config

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from helpers import ROOT
CLI = os.path.join(ROOT, "scripts", "convert_checkpoint.py")
TOL = 1e-4
SIZES = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48)


def _randomize(model, seed=0):
    """Perturb every parameter (HF initializes biases to 0 and norms to 1, which would hide swaps)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn(param.shape, generator=gen) * 0.1)
    return model.eval()


def _roberta_mlm(tmp_path, **overrides):
    config = transformers.RobertaConfig(vocab_size=120, max_position_embeddings=40, type_vocab_size=1,
                                        pad_token_id=1, bos_token_id=0, eos_token_id=2, layer_norm_eps=1e-5,
                                        **dict(SIZES, **overrides))
    model = _randomize(transformers.RobertaForMaskedLM(config))
    model.save_pretrained(tmp_path)
    return model


def _bert(tmp_path, cls, **overrides):
    config = transformers.BertConfig(vocab_size=110, max_position_embeddings=36, type_vocab_size=2,
                                     layer_norm_eps=1e-12, **dict(SIZES, **overrides))
    model = _randomize(cls(config), seed=1)
    model.save_pretrained(tmp_path)
    return model


def _padded_batch(vocab_size, pad_id, lengths=(11, 7, 3), seq_len=11, seed=0):
    rng = np.random.RandomState(seed)
    ids = rng.randint(0, vocab_size, size=(len(lengths), seq_len))
    ids[ids == pad_id] = pad_id + 1
    mask = (np.arange(seq_len)[None, :] < np.array(lengths)[:, None]).astype(np.int64)
    return np.where(mask == 1, ids, pad_id), mask, np.array(lengths)


def _our_model(hf_dir):
    config, arrays = convert.hf_to_gluon(hf_dir)
    model = build_model(config, use_decoder=any(n.startswith("decoder.") for n in arrays))
    load_arrays(model, arrays, str(hf_dir))
    return config, arrays, model


def _run_ours(model, ids, lengths, token_types=None):
    positions = mx.nd.array(np.tile(np.arange(ids.shape[1]), (ids.shape[0], 1)))
    out = model(mx.nd.array(ids), mx.nd.array(lengths), positions if model.has_decoder else None,
                None if token_types is None else mx.nd.array(token_types))
    if model.has_decoder:
        return out[0].asnumpy(), out[1].asnumpy()
    return out.asnumpy(), None


def _run_hf(model, ids, mask, token_types=None):
    with torch.no_grad():
        out = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                    token_type_ids=None if token_types is None else torch.tensor(token_types),
                    output_hidden_states=True)
    logits = out.logits.numpy() if hasattr(out, "logits") else None
    return out.hidden_states[-1].numpy(), logits


def _max_diff(a, b, mask):
    keep = mask.astype(bool)
    return float(np.abs(a[keep] - b[keep]).max())


def test_roberta_mlm_parity(tmp_path):
    hf_model = _roberta_mlm(tmp_path)
    config, arrays, model = _our_model(tmp_path)
    assert (config.family, config.pad_id, config.max_length, config.token_type_vocab_size) == ("roberta", 1, 38, 0)
    assert config.layer_norm_eps == 1e-5 and config.vocab_size == 120
    # Positions: the two rows before position 0 are dropped, the single token-type row is folded in.
    state = hf_model.state_dict()
    expected = (state["roberta.embeddings.position_embeddings.weight"][2:]
                + state["roberta.embeddings.token_type_embeddings.weight"][0]).numpy()
    np.testing.assert_allclose(arrays["encoder.position_weight"], expected, rtol=0, atol=1e-7)
    ids, mask, lengths = _padded_batch(120, 1)
    hidden, logits = _run_ours(model, ids, lengths)
    hf_hidden, hf_logits = _run_hf(hf_model, ids, mask)
    assert hidden.shape == (3, 11, 32) and logits.shape == (3, 11, 120)
    assert _max_diff(hidden, hf_hidden, mask) <= TOL
    assert _max_diff(logits, hf_logits, mask) <= TOL
    # Outputs at padded positions are zeroed by gluon-nlp's encoder (so only valid ones are compared).
    assert np.all(hidden[~mask.astype(bool)] == 0)


@pytest.mark.parametrize("cls_name", ["BertModel", "BertForMaskedLM"])
def test_bert_parity_with_token_types(tmp_path, cls_name):
    hf_model = _bert(tmp_path, getattr(transformers, cls_name))
    config, arrays, model = _our_model(tmp_path)
    assert (config.family, config.token_type_vocab_size, config.max_length, config.layer_norm_eps) == \
        ("bert", 2, 36, 1e-12)
    assert model.has_decoder == (cls_name == "BertForMaskedLM")
    ids, mask, lengths = _padded_batch(110, 0, seed=3)
    token_types = (np.arange(ids.shape[1])[None, :] >= 5).astype(np.int64) * mask
    hidden, logits = _run_ours(model, ids, lengths, token_types)
    hf_hidden, hf_logits = _run_hf(hf_model, ids, mask, token_types)
    assert _max_diff(hidden, hf_hidden, mask) <= TOL
    if logits is not None:
        assert _max_diff(logits, hf_logits, mask) <= TOL


def test_pooler_is_dropped_explicitly(tmp_path, caplog):
    _bert(tmp_path, transformers.BertModel)
    with caplog.at_level("INFO", logger="bort.weights.convert"):
        _, arrays = convert.hf_to_gluon(tmp_path)
    assert "pooler.dense.weight" in caplog.text
    assert not any("pooler" in name for name in arrays)


def test_gelu_new_maps_to_approx_gelu_in_the_encoder(tmp_path):
    hf_model = _roberta_mlm(tmp_path, hidden_act="gelu_new")
    config, _, model = _our_model(tmp_path)
    assert config.activation == "approx_gelu"
    ids, mask, lengths = _padded_batch(120, 1)
    hidden, logits = _run_ours(model, ids, lengths)
    hf_hidden, hf_logits = _run_hf(hf_model, ids, mask)
    assert _max_diff(hidden, hf_hidden, mask) <= TOL and _max_diff(logits, hf_logits, mask) <= TOL


def test_unsupported_activations_and_heads_are_refused(tmp_path):
    _roberta_mlm(tmp_path / "quick", hidden_act="quick_gelu")
    with pytest.raises(BortError, match="hidden_act 'quick_gelu' is not implemented"):
        convert.hf_to_gluon(tmp_path / "quick")
    # BERT's MLM head applies hidden_act; ours is erf GELU, so a tanh-GELU BERT head is refused.
    _bert(tmp_path / "bert_new", transformers.BertForMaskedLM, hidden_act="gelu_new")
    with pytest.raises(BortError, match="MLM head"):
        convert.hf_to_gluon(tmp_path / "bert_new")


def test_unexpected_and_missing_hf_weights(tmp_path):
    _roberta_mlm(tmp_path)
    tensors = hf_files.read_safetensors(tmp_path / "model.safetensors")
    hf = json.loads((tmp_path / "config.json").read_text())
    extra = dict(tensors, **{"roberta.encoder.layer.2.output.dense.weight": np.zeros((32, 48), np.float32)})
    with pytest.raises(BortError, match=r"unexpected 1: roberta.encoder.layer.2.output.dense.weight"):
        convert.convert_hf_state(extra, hf, "x")
    partial = {n: v for n, v in tensors.items() if n != "lm_head.dense.bias"}
    with pytest.raises(BortError, match=r"missing 1: lm_head.dense.bias"):
        convert.convert_hf_state(partial, hf, "x")
    with pytest.raises(BortError, match="position_embeddings has 40 rows; config.json says 41"):
        convert.convert_hf_state(tensors, dict(hf, max_position_embeddings=41), "x")


def test_pytorch_bin_gives_the_same_arrays(tmp_path):
    model = _roberta_mlm(tmp_path / "safe")
    os.makedirs(tmp_path / "bin")
    torch.save(model.state_dict(), tmp_path / "bin" / "pytorch_model.bin")
    (tmp_path / "bin" / "config.json").write_text((tmp_path / "safe" / "config.json").read_text())
    config_a, a = convert.hf_to_gluon(tmp_path / "safe")
    config_b, b = convert.hf_to_gluon(tmp_path / "bin")  # includes the tied lm_head.decoder.* aliases
    assert config_a == config_b and a.keys() == b.keys()
    assert all(np.array_equal(a[n], b[n]) for n in a)


def test_safetensors_reader_and_writer_match_the_reference(tmp_path):
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    safetensors_torch = pytest.importorskip("safetensors.torch")
    rng = np.random.RandomState(0)
    tensors = {"a": rng.randn(3, 4).astype(np.float32), "b": rng.randn(5).astype(np.float16),
               "c": np.arange(6, dtype=np.int64).reshape(2, 3), "empty": np.zeros((0, 2), np.float32)}
    hf_files.write_safetensors(tmp_path / "ours.safetensors", tensors, metadata={"format": "pt"})
    theirs = safetensors_numpy.load_file(str(tmp_path / "ours.safetensors"))
    assert theirs.keys() == tensors.keys() and all(np.array_equal(theirs[k], tensors[k]) for k in tensors)
    safetensors_numpy.save_file(tensors, str(tmp_path / "ref.safetensors"))
    ours = hf_files.read_safetensors(tmp_path / "ref.safetensors")
    assert all(np.array_equal(ours[k], tensors[k]) and ours[k].dtype == tensors[k].dtype for k in tensors)
    bf16 = torch.randn(4, 3).to(torch.bfloat16)
    safetensors_torch.save_file({"w": bf16}, str(tmp_path / "bf16.safetensors"))
    np.testing.assert_array_equal(hf_files.read_safetensors(tmp_path / "bf16.safetensors")["w"], bf16.float().numpy())


def test_bad_safetensors_files_give_one_line_errors(tmp_path):
    good = tmp_path / "good.safetensors"
    hf_files.write_safetensors(good, {"w": np.ones((64, 64), np.float32)})
    data = good.read_bytes()
    cases = {"truncated": data[:-100], "short": data[:5], "garbage": b"\x10\x00\x00\x00\x00\x00\x00\x00not json{}..",
             "huge_header": b"\xff" * 8 + b"{}"}
    for name, content in cases.items():
        path = tmp_path / f"{name}.safetensors"
        path.write_bytes(content)
        with pytest.raises(BortError) as err:
            hf_files.read_safetensors(path)
        assert str(path) in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(BortError, match="no model.safetensors or pytorch_model.bin"):
        os.makedirs(tmp_path / "empty")
        (tmp_path / "empty" / "config.json").write_text("{}")
        convert.hf_to_gluon(tmp_path / "empty")


def test_sharded_safetensors(tmp_path):
    model = _roberta_mlm(tmp_path / "one")
    tensors = hf_files.read_safetensors(tmp_path / "one" / "model.safetensors")
    names = sorted(tensors)
    os.makedirs(tmp_path / "sharded")
    weight_map = {}
    for k, chunk in enumerate((names[::2], names[1::2])):
        shard = f"model-0000{k + 1}-of-00002.safetensors"
        hf_files.write_safetensors(tmp_path / "sharded" / shard, {n: tensors[n] for n in chunk})
        weight_map.update({n: shard for n in chunk})
    (tmp_path / "sharded" / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    (tmp_path / "sharded" / "config.json").write_text((tmp_path / "one" / "config.json").read_text())
    _, a = convert.hf_to_gluon(tmp_path / "one")
    _, b = convert.hf_to_gluon(tmp_path / "sharded")
    assert a.keys() == b.keys() and all(np.array_equal(a[n], b[n]) for n in a)
    del model


def _random_bort_tiny(use_decoder=True, seed=0):
    mx.random.seed(seed)
    model = build_model("bort_tiny", use_decoder=use_decoder)
    rng = np.random.RandomState(seed)
    for name, param in model._collect_params_with_prefix().items():
        if 0 in param.shape:  # deferred Dense shapes: finish with one forward
            model(mx.nd.zeros((1, 2)), mx.nd.array([2]), mx.nd.zeros((1, 1)) if use_decoder else None)
            break
    for name, param in model._collect_params_with_prefix().items():
        if name != "decoder.3.weight":
            param.set_data(param.data() + mx.nd.array(rng.randn(*param.shape) * 0.1))
    return model


@pytest.mark.parametrize("arch", ["bert", "roberta"])
def test_round_trip_gluon_hf_gluon_is_exact(tmp_path, arch):
    model = _random_bort_tiny()
    original = {n: p.data().asnumpy() for n, p in model._collect_params_with_prefix().items()}
    hf = convert.gluon_to_hf(model, get_config("bort_tiny"), tmp_path, arch=arch)
    assert hf["architectures"] == ["BertForMaskedLM" if arch == "bert" else "RobertaForMaskedLM"]
    config, arrays = convert.hf_to_gluon(tmp_path)
    expected = get_config("bort_tiny").replace(family=arch)  # the HF layout decides the family
    assert config == expected
    assert arrays.keys() == original.keys()
    for name in original:
        assert np.array_equal(arrays[name], original[name]), name


def test_exported_bort_tiny_loads_in_transformers_with_same_outputs(tmp_path):
    model = _random_bort_tiny(seed=5)
    params = tmp_path / "bort_tiny.params"
    save_parameters(model, params, get_config("bort_tiny"))
    convert.gluon_to_hf(params, get_config("bort_tiny"), tmp_path / "hf")
    hf_model, info = transformers.BertForMaskedLM.from_pretrained(tmp_path / "hf", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    ids, mask, lengths = _padded_batch(get_config("bort_tiny").vocab_size, 1, lengths=(9, 4), seq_len=9)
    hidden, logits = _run_ours(model, ids, lengths)
    hf_hidden, hf_logits = _run_hf(hf_model.eval(), ids, mask)
    assert _max_diff(hidden, hf_hidden, mask) <= TOL and _max_diff(logits, hf_logits, mask) <= TOL


def test_encoder_only_export_loads_as_bert_model(tmp_path):
    model = _random_bort_tiny(use_decoder=False, seed=2)
    hf = convert.gluon_to_hf(model, get_config("bort_tiny"), tmp_path)
    assert hf["architectures"] == ["BertModel"] and hf["type_vocab_size"] == 1
    hf_model, info = transformers.BertModel.from_pretrained(tmp_path, output_loading_info=True)
    assert set(info["missing_keys"]) == {"pooler.dense.weight", "pooler.dense.bias"}  # we have no pooler
    assert not info["unexpected_keys"]
    ids, mask, lengths = _padded_batch(get_config("bort_tiny").vocab_size, 1, lengths=(6, 2), seq_len=6)
    hidden, _ = _run_ours(model, ids, lengths)
    with torch.no_grad():
        hf_hidden = hf_model.eval()(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).last_hidden_state
    assert _max_diff(hidden, hf_hidden.numpy(), mask) <= TOL


def test_verify_parity_detects_a_wrong_weight(tmp_path):
    hf_model = _roberta_mlm(tmp_path / "a")
    _, _, model = _our_model(tmp_path / "a")
    assert verify_parity(model, tmp_path / "a")["max_abs_diff"] <= TOL
    with torch.no_grad():
        hf_model.roberta.encoder.layer[1].output.LayerNorm.bias[3] += 0.5
    hf_model.save_pretrained(tmp_path / "b")
    diffs = verify_parity(model, tmp_path / "b")
    assert diffs["hidden"] > 0.1 and diffs["max_abs_diff"] > 0.1


def _cli(*args):
    return subprocess.run([sys.executable, CLI, *map(str, args)], capture_output=True, text=True, cwd=ROOT,
                          timeout=300)


def _last_diff(stdout):
    last = stdout.strip().splitlines()[-1]
    assert last.startswith("max_abs_diff=")
    return float(last.split("=", 1)[1])


@pytest.mark.slow
def test_cli_both_directions_with_verify(tmp_path):
    _roberta_mlm(tmp_path / "hf")
    result = _cli("hf2gluon", "--hf_dir", tmp_path / "hf", "--output", tmp_path / "r.params", "--verify")
    assert result.returncode == 0, result.stderr
    assert _last_diff(result.stdout) <= TOL
    saved = json.loads((tmp_path / "r.json").read_text())
    assert saved["family"] == "roberta" and saved["max_length"] == 38
    result = _cli("gluon2hf", "--params", tmp_path / "r.params", "--output", tmp_path / "back", "--verify")
    assert result.returncode == 0, result.stderr
    assert _last_diff(result.stdout) <= TOL
    assert json.loads((tmp_path / "back" / "config.json").read_text())["architectures"] == ["BertForMaskedLM"]
    # A tolerance nothing can meet makes --verify fail with a non-zero exit.
    result = _cli("gluon2hf", "--params", tmp_path / "r.params", "--config", tmp_path / "r.json",
                  "--output", tmp_path / "strict", "--arch", "roberta", "--verify", "--tolerance", "-1")
    assert result.returncode == 1 and "exceeds --tolerance" in result.stderr


def test_roberta_large_and_bert_base_configs_map_to_ours():
    roberta_large = {"model_type": "roberta", "vocab_size": 50265, "hidden_size": 1024, "num_hidden_layers": 24,
                     "num_attention_heads": 16, "intermediate_size": 4096, "max_position_embeddings": 514,
                     "type_vocab_size": 1, "layer_norm_eps": 1e-5, "pad_token_id": 1, "hidden_act": "gelu",
                     "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1}
    assert convert.config_from_hf(roberta_large) == (get_config("roberta_24_1024_16"), "roberta")
    bert_base = dict(roberta_large, model_type="bert", vocab_size=30522, hidden_size=768, num_hidden_layers=12,
                     num_attention_heads=12, intermediate_size=3072, max_position_embeddings=512, type_vocab_size=2,
                     layer_norm_eps=1e-12, pad_token_id=0)
    assert convert.config_from_hf(bert_base) == (get_config("bert_12_768_12"), "bert")
    # Exporting ours and reading it back gives the same config.
    for name, arch in (("roberta_24_1024_16", "roberta"), ("bert_12_768_12", "bert")):
        assert convert.config_from_hf(convert.hf_config(get_config(name), arch)) == (get_config(name), arch)
    for bad, message in (({"model_type": "gpt2"}, "model_type 'gpt2' is not supported"),
                         (dict(roberta_large, position_embedding_type="relative_key"), "position_embedding_type"),
                         (dict(roberta_large, num_attention_heads=5), "not divisible"),
                         ({"model_type": "bert"}, "missing fields")):
        with pytest.raises(BortError, match=message):
            convert.config_from_hf(bad, "cfg.json")
