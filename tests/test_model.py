"""The model: exact parameter counts, shapes, hybridization, dropout, gluon-nlp name compatibility, golden values."""
import os
import subprocess
import sys

import numpy as np
import pytest

import bort  # noqa: F401
import mxnet as mx

from bort.weights.checkpoint import load_parameters, read_params_file
from bort.errors import BortError
from bort.model import CONFIGS, ModelConfig, build_model, get_config, parameter_shapes, parameter_summary

from helpers import ROOT
BORT_PARAMS = os.path.join(ROOT, "model", "bort.params")


def _expected_counts(config, with_head):
    """Counted from the architecture, independently of the Gluon blocks."""
    u, f, v = config.units, config.hidden_size, config.vocab_size
    layer = 3 * (u * u + u) + (u * u + u) + 2 * u + (u * f + f) + (f * u + u) + 2 * u
    counts = {"word_embeddings": v * u, "position_embeddings": config.max_length * u,
              "token_type_embeddings": config.token_type_vocab_size * u,
              "encoder": config.num_layers * layer + 2 * u,  # + the embedding layer norm
              "mlm_head": (u * u + u) + 2 * u + v if with_head else 0}
    return counts


def test_bort_parameter_counts_are_exact():
    config = get_config("bort_4_8_768_1024", vocab_size=50265)
    encoder = parameter_summary(config, use_decoder=False)
    with_head = parameter_summary(config, use_decoder=True)
    assert encoder == _expected_counts(config, False)
    assert with_head == _expected_counts(config, True)
    assert sum(encoder.values()) == 75_106_304
    assert sum(with_head.values()) == 76_208_217
    assert encoder["word_embeddings"] == 51_471_360 and encoder["position_embeddings"] == 524_288


@pytest.mark.parametrize("name", sorted(n for n in CONFIGS if n.endswith("_tiny")))
def test_summary_matches_allocated_model(name):
    model = build_model(name)
    model(mx.nd.zeros((1, 2)), mx.nd.array([2]), mx.nd.zeros((1, 1)))  # finish deferred shapes
    params = model._collect_params_with_prefix()
    allocated = sum(int(np.prod(p.shape)) for n, p in params.items() if n != "decoder.3.weight")
    assert allocated == sum(parameter_summary(CONFIGS[name], use_decoder=True).values())
    assert {n: tuple(p.shape) for n, p in params.items()} == parameter_shapes(CONFIGS[name])


def _summary_cli(*args):
    result = subprocess.run([sys.executable, "-m", "bort.model", "--summary", *args], capture_output=True,
                            text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()


def test_summary_cli_last_line():
    lines = _summary_cli("bort_4_8_768_1024", "--vocab_size", "50265")
    assert lines[-1] == "total_params=75106304"
    assert _summary_cli("bort_4_8_768_1024", "--with_mlm_head")[-1] == "total_params=76208217"


def test_summary_cli_bad_config_is_one_line_error():
    result = subprocess.run([sys.executable, "-m", "bort.model", "--summary", "no_such_model"], capture_output=True,
                            text=True, cwd=ROOT, timeout=120)
    assert result.returncode != 0
    assert result.stderr.strip().count("\n") == 0 and result.stderr.startswith("error: ")


def _inputs(vocab, lengths=(7, 4), seq_len=7, seed=0):
    rng = np.random.RandomState(seed)
    ids = rng.randint(3, vocab, size=(len(lengths), seq_len))
    return mx.nd.array(ids), mx.nd.array(lengths), mx.nd.array([[0, 2, 5], [1, 3, 0]])


def test_forward_shapes():
    config = get_config("bort_tiny")
    ids, valid, positions = _inputs(config.vocab_size)
    model = build_model(config)
    hidden, logits = model(ids, valid, positions)
    assert hidden.shape == (2, 7, config.units) and logits.shape == (2, 3, config.vocab_size)
    assert build_model(config, use_decoder=False)(ids, valid).shape == (2, 7, config.units)
    # Bert configs take token types; changing them changes the output.
    bert = build_model("bert_tiny", use_decoder=False)
    ids_b, valid_b, _ = _inputs(1000)
    a = bert(ids_b, valid_b, None, mx.nd.zeros_like(ids_b)).asnumpy()
    b = bert(ids_b, valid_b, None, mx.nd.ones_like(ids_b)).asnumpy()
    assert a.shape == (2, 7, 64) and np.abs(a - b).max() > 1e-3


def test_mlm_logits_are_tied_to_word_embeddings():
    config = get_config("bort_tiny")
    model = build_model(config)
    ids, valid, positions = _inputs(config.vocab_size)
    hidden, logits = model(ids, valid, positions)
    gathered = np.stack([hidden.asnumpy()[b, positions.asnumpy()[b].astype(int)] for b in range(2)])
    head = model.decoder
    h = head[2](head[1](head[0](mx.nd.array(gathered)))).asnumpy()
    expected = h @ model.word_embed[0].weight.data().asnumpy().T + head[3].bias.data().asnumpy()
    np.testing.assert_allclose(logits.asnumpy(), expected, rtol=1e-4, atol=1e-4)


def test_hybridized_equals_imperative():
    config = get_config("bort_tiny")
    model = build_model(config)
    ids, valid, positions = _inputs(config.vocab_size)
    hidden, logits = model(ids, valid, positions)
    model.hybridize(static_alloc=True)
    for _ in range(2):
        hybrid_hidden, hybrid_logits = model(ids, valid, positions)
        np.testing.assert_allclose(hybrid_hidden.asnumpy(), hidden.asnumpy(), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(hybrid_logits.asnumpy(), logits.asnumpy(), rtol=1e-5, atol=1e-5)


def test_dropout_only_in_training():
    config = get_config("bort_tiny", dropout=0.3)
    model = build_model(config, use_decoder=False)
    ids, valid, _ = _inputs(config.vocab_size)
    first, second = model(ids, valid).asnumpy(), model(ids, valid).asnumpy()
    assert np.array_equal(first, second)
    with mx.autograd.record(train_mode=True):
        trained = model(ids, valid).asnumpy()
    assert np.abs(trained - first).max() > 1e-3  # dropout is really there, and off in inference


def test_word_embedding_dropout_as_the_original():
    """Bort's configs drop 10 % of the word-embedding entries in training (the original's embed_dropout 0.1), on
    top of the encoder's dropout; inference and the parameter names are as without it."""
    assert CONFIGS["bort_4_8_768_1024"].embed_dropout == 0.1 and CONFIGS["bort_2_16_512_1024"].embed_dropout == 0.1
    config = get_config("bort_tiny", dropout=0.0, embed_dropout=0.1, vocab_size=50)
    with_dropout = build_model(config, use_decoder=True)
    without = build_model(config.replace(embed_dropout=0.0), use_decoder=True)
    ids, valid, positions = _inputs(config.vocab_size)
    with_dropout(ids, valid, positions)
    assert sorted(with_dropout._collect_params_with_prefix()) == sorted(parameter_shapes(config.replace(
        embed_dropout=0.0)))
    for name, param in without._collect_params_with_prefix().items():
        param.set_data(with_dropout._collect_params_with_prefix()[name].data())
    # Inference: no dropout anywhere, same outputs as the model without it.
    np.testing.assert_allclose(with_dropout(ids, valid, positions)[1].asnumpy(),
                               without(ids, valid, positions)[1].asnumpy(), rtol=1e-6, atol=1e-6)
    # Training: the embedding lookup loses ~10 % of its entries and the rest are scaled by 1/0.9.
    big = mx.nd.array(np.random.RandomState(1).randint(0, 50, size=(64, 100)))
    clean = with_dropout.word_embed(big).asnumpy()
    mx.random.seed(3)
    with mx.autograd.record(train_mode=True):
        dropped = with_dropout.word_embed(big).asnumpy()
    zeroed = (dropped == 0) & (clean != 0)
    assert 0.08 < zeroed.mean() < 0.12
    np.testing.assert_allclose(dropped[~zeroed], clean[~zeroed] / 0.9, rtol=1e-5)
    with mx.autograd.record(train_mode=True):  # the encoder's dropout is off, so only the embeddings differ
        trained = with_dropout(ids, valid, positions)[1].asnumpy()
    assert np.abs(trained - without(ids, valid, positions)[1].asnumpy()).max() > 1e-3


def test_bort_2_16_512_1024_is_the_originals_second_config():
    """The original's `bort_2_16_512_1024`: 2 layers, 16 heads, FFN 512, hidden 1024."""
    config = CONFIGS["bort_2_16_512_1024"]
    assert (config.num_layers, config.num_heads, config.hidden_size, config.units) == (2, 16, 512, 1024)
    assert parameter_summary(config, use_decoder=False) == _expected_counts(config, False)
    assert sum(parameter_summary(config).values()) == 51_471_360 + 524_288 + 2 * (
        4 * (1024 * 1024 + 1024) + 2 * 1024 + (1024 * 512 + 512) + (512 * 1024 + 1024) + 2 * 1024) + 2 * 1024


def test_padding_does_not_change_valid_outputs():
    config = get_config("bort_tiny")
    model = build_model(config, use_decoder=False)
    ids, _, _ = _inputs(config.vocab_size, lengths=(4,), seq_len=4)
    short = model(ids, mx.nd.array([4])).asnumpy()
    padded_ids = mx.nd.concat(ids, mx.nd.ones((1, 3)) * config.pad_id, dim=1)
    padded = model(padded_ids, mx.nd.array([4])).asnumpy()
    np.testing.assert_allclose(padded[:, :4], short, rtol=1e-5, atol=1e-5)
    assert np.all(padded[:, 4:] == 0)


def _gluonnlp_model(config):
    """gluon-nlp 0.10's own BERTModel/RoBERTaModel with the same sizes."""
    from gluonnlp.model import BERTEncoder, BERTModel, RoBERTaModel

    encoder = BERTEncoder(num_layers=config.num_layers, units=config.units, hidden_size=config.hidden_size,
                          max_length=config.max_length, num_heads=config.num_heads, dropout=config.dropout,
                          layer_norm_eps=config.layer_norm_eps)
    if config.token_type_vocab_size:
        model = BERTModel(encoder, vocab_size=config.vocab_size, token_type_vocab_size=config.token_type_vocab_size,
                          units=config.units, embed_size=config.embed_size, use_pooler=False, use_decoder=True,
                          use_classifier=False)
    else:
        model = RoBERTaModel(encoder, vocab_size=config.vocab_size, units=config.units,
                             embed_size=config.embed_size, use_decoder=True)
    model.initialize(mx.init.Normal(0.02))
    return model


@pytest.mark.parametrize("name", ["roberta_tiny", "bert_tiny", "bort_tiny"])
def test_names_and_shapes_equal_gluonnlp_models(name, tmp_path):
    config = CONFIGS[name]
    theirs = _gluonnlp_model(config)
    ids, valid, positions = _inputs(config.vocab_size)
    token_types = mx.nd.zeros_like(ids)
    args = (ids, token_types, valid, positions) if config.token_type_vocab_size else (ids, valid, positions)
    their_out = theirs(*args)
    their_hidden, their_logits = their_out[0], their_out[-1]
    reference = {n: tuple(p.shape) for n, p in theirs._collect_params_with_prefix().items()}
    assert parameter_shapes(config) == reference
    # A file saved by gluon-nlp's own model loads into ours unchanged and gives the same outputs.
    theirs.save_parameters(str(tmp_path / "gluonnlp.params"))
    ours = load_parameters(build_model(config), tmp_path / "gluonnlp.params")
    hidden, logits = ours(ids, valid, positions, token_types if config.token_type_vocab_size else None)
    np.testing.assert_allclose(hidden.asnumpy(), their_hidden.asnumpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(logits.asnumpy(), their_logits.asnumpy(), rtol=1e-5, atol=1e-5)


GOLDEN_IDS = [0, 18077, 4082, 7804, 8606, 6195, 2457, 3321, 11, 10489, 16, 269, 2579, 328, 2]
GOLDEN_SLICE = [[-0.0349, 0.0436, -1.8654], [-0.6964, 0.0835, -1.7393], [-0.9819, 0.2956, -0.2868]]


@pytest.mark.skipif(not os.path.isfile(BORT_PARAMS),
                    reason="model/bort.params is absent (download the released Bort weights to run this check)")
def test_golden_values_from_released_bort_params():
    names = read_params_file(BORT_PARAMS)
    config = get_config("bort_4_8_768_1024", vocab_size=names["word_embed.0.weight"].shape[0])
    use_decoder = any(n.startswith("decoder.") for n in names)
    model = build_model(config, use_decoder=use_decoder)
    load_parameters(model, BORT_PARAMS, ignore_extra=("pooler.", "classifier."))
    hidden = model(mx.nd.array([GOLDEN_IDS]), mx.nd.array([len(GOLDEN_IDS)]))
    hidden = hidden[0] if isinstance(hidden, (list, tuple)) else hidden
    assert hidden.shape == (1, 15, 1024)
    np.testing.assert_allclose(hidden.asnumpy()[0, :3, :3], GOLDEN_SLICE, atol=1e-4)


@pytest.mark.parametrize("field,value", [("num_heads", 0), ("units", "1024"), ("num_layers", -1), ("vocab_size", 2.5)])
def test_impossible_config_values_are_one_line_errors(field, value):
    """A config JSON with zero heads used to raise ZeroDivisionError; sizes as strings a TypeError deep inside."""
    values = dict(get_config("bort_tiny").to_dict(), **{field: value})
    with pytest.raises(BortError, match=f"{field} must be a positive integer"):
        ModelConfig.from_dict(values, "x.json")
