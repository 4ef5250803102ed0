"""Hugging Face checkpoints <-> our gluon-nlp parameter names: one name table, used both ways.

Import (`hf_to_gluon`) reads a local HF directory (`config.json` + `model.safetensors`, sharded
safetensors, or `pytorch_model.bin`) of a BERT or RoBERTa model, with or without its MLM head.
Export (`gluon_to_hf`) writes `config.json` + `model.safetensors` that `transformers.BertModel` /
`BertForMaskedLM` (or, with arch="roberta", `RobertaModel` / `RobertaForMaskedLM`) load.
The files themselves are read and written by `bort.weights.hf_files` (no torch or safetensors package at run
time); only `pytorch_model.bin` files and `bort.weights.parity` need torch/transformers.

What does not map one-to-one:
- HF RoBERTa numbers positions from pad_token_id + 1 (514 rows for 512 positions); ours start at 0.
  Import drops the first pad_id + 1 rows, export puts them back (as zeros: HF uses the row at pad_id
  only for padding tokens, whose outputs are ignored).
- HF RoBERTa adds a one-row token_type_embeddings to every token; Bort/RoBERTa here have no token
  types, so import adds that row into every position row (the sum is the same). Export writes a
  one-row all-zero token_type_embeddings when the model has no token types.
- GELU: ours is the erf form (HF "gelu"). HF "gelu_new"/"gelu_pytorch_tanh"/"gelu_fast" (tanh form)
  map to gluon-nlp's "approx_gelu" in the encoder; the MLM head always uses erf GELU here, as HF
  RoBERTa's does, so a BERT MLM head with another activation is refused. Other activations are refused.
- The pooler (and BERT's next-sentence head) is not part of our model: dropped on import, listed
  in the log. Exported `BertModel` directories have no pooler: transformers initializes it randomly
  and says so; `BertForMaskedLM` has none.
- Layer-norm epsilon, vocabulary size, sizes and dropout come from/go to config.json.
"""
import logging
import os
import re

import numpy as np

from bort.errors import BortError
from bort.io import write_json
from bort.locking import owned_directory
from bort.model import ModelConfig, get_config, parameter_shapes
from bort.weights.hf_files import read_hf_json, read_hf_weights, write_safetensors

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------
# The name table. HF names are relative to the encoder prefix ("bert.", "roberta." or none);
# head names are absolute. "{i}" is the layer number.
# ---------------------------------------------------------------------------------------------
EMBEDDING_NAMES = [
    ("word_embed.0.weight", "embeddings.word_embeddings.weight"),
    ("token_type_embed.0.weight", "embeddings.token_type_embeddings.weight"),
    ("encoder.position_weight", "embeddings.position_embeddings.weight"),
    ("encoder.layer_norm.gamma", "embeddings.LayerNorm.weight"),
    ("encoder.layer_norm.beta", "embeddings.LayerNorm.bias"),
]
LAYER_NAMES = [
    ("attention_cell.proj_query.weight", "attention.self.query.weight"),
    ("attention_cell.proj_query.bias", "attention.self.query.bias"),
    ("attention_cell.proj_key.weight", "attention.self.key.weight"),
    ("attention_cell.proj_key.bias", "attention.self.key.bias"),
    ("attention_cell.proj_value.weight", "attention.self.value.weight"),
    ("attention_cell.proj_value.bias", "attention.self.value.bias"),
    ("proj.weight", "attention.output.dense.weight"),
    ("proj.bias", "attention.output.dense.bias"),
    ("layer_norm.gamma", "attention.output.LayerNorm.weight"),
    ("layer_norm.beta", "attention.output.LayerNorm.bias"),
    ("ffn.ffn_1.weight", "intermediate.dense.weight"),
    ("ffn.ffn_1.bias", "intermediate.dense.bias"),
    ("ffn.ffn_2.weight", "output.dense.weight"),
    ("ffn.ffn_2.bias", "output.dense.bias"),
    ("ffn.layer_norm.gamma", "output.LayerNorm.weight"),
    ("ffn.layer_norm.beta", "output.LayerNorm.bias"),
]
HEAD_NAMES = {
    "bert": [
        ("decoder.0.weight", "cls.predictions.transform.dense.weight"),
        ("decoder.0.bias", "cls.predictions.transform.dense.bias"),
        ("decoder.2.gamma", "cls.predictions.transform.LayerNorm.weight"),
        ("decoder.2.beta", "cls.predictions.transform.LayerNorm.bias"),
        ("decoder.3.bias", "cls.predictions.bias"),
    ],
    "roberta": [
        ("decoder.0.weight", "lm_head.dense.weight"),
        ("decoder.0.bias", "lm_head.dense.bias"),
        ("decoder.2.gamma", "lm_head.layer_norm.weight"),
        ("decoder.2.beta", "lm_head.layer_norm.bias"),
        ("decoder.3.bias", "lm_head.bias"),
    ],
}
# HF names that alias ones in the table (older files store the tied decoder separately).
HEAD_ALIASES = {
    "bert": {"weight": "cls.predictions.decoder.weight", "bias": "cls.predictions.decoder.bias"},
    "roberta": {"weight": "lm_head.decoder.weight", "bias": "lm_head.decoder.bias"},
}
ARCHS = {
    "bert": {"model_type": "bert", "prefix": "bert.", "mlm": "BertForMaskedLM", "encoder": "BertModel"},
    "roberta": {"model_type": "roberta", "prefix": "roberta.", "mlm": "RobertaForMaskedLM",
                "encoder": "RobertaModel"},
}
# HF hidden_act -> our activation; and back.
ACTIVATIONS = {"gelu": "gelu", "gelu_python": "gelu", "gelu_new": "approx_gelu",
               "gelu_pytorch_tanh": "approx_gelu", "gelu_fast": "approx_gelu", "relu": "relu"}
HF_ACTIVATIONS = {"gelu": "gelu", "approx_gelu": "gelu_new", "relu": "relu"}


def name_table(num_layers, arch, with_head, hf_prefix):
    """[(our name, HF name)] for a model: the one mapping both directions use."""
    pairs = [(ours, hf_prefix + theirs) for ours, theirs in EMBEDDING_NAMES]
    for i in range(num_layers):
        pairs += [(f"encoder.transformer_cells.{i}.{ours}", f"{hf_prefix}encoder.layer.{i}.{theirs}")
                  for ours, theirs in LAYER_NAMES]
    if with_head:
        pairs += HEAD_NAMES[arch]
    return pairs


def position_offset(arch, pad_id):
    """Rows before position 0 in HF's position table: pad_id + 1 for RoBERTa, none for BERT."""
    return pad_id + 1 if arch == "roberta" else 0


# ---------------------------------------------------------------------------------------------
# Configurations.
# ---------------------------------------------------------------------------------------------
def config_from_hf(hf, source="config.json"):
    """(ModelConfig, arch) from an HF config.json dict; refuses what our model does not implement."""
    if not isinstance(hf, dict):
        raise BortError(f"{source}: expected config.json to be a JSON object, found {type(hf).__name__}")
    arch = hf.get("model_type")
    if arch not in ARCHS:
        raise BortError(f"{source}: model_type {arch!r} is not supported; expected 'bert' or 'roberta'")
    needed = ["hidden_size", "intermediate_size", "num_attention_heads", "num_hidden_layers", "vocab_size",
              "max_position_embeddings"]
    absent = [k for k in needed if k not in hf]
    if absent:
        raise BortError(f"{source}: missing fields {absent}")
    _check_hf_numbers(hf, source)
    act = hf.get("hidden_act", "gelu")
    if not isinstance(act, str) or act not in ACTIVATIONS:
        raise BortError(f"{source}: hidden_act {act!r} is not implemented here; supported: {sorted(ACTIVATIONS)}")
    if hf.get("position_embedding_type", "absolute") != "absolute":
        raise BortError(f"{source}: position_embedding_type {hf['position_embedding_type']!r} is not supported; "
                        "expected 'absolute'")
    if hf.get("is_decoder") or hf.get("add_cross_attention"):
        raise BortError(f"{source}: decoder / cross-attention models are not supported")
    if hf.get("embedding_size", hf["hidden_size"]) != hf["hidden_size"]:
        raise BortError(f"{source}: embedding_size != hidden_size is not supported")
    pad_id = hf.get("pad_token_id")
    pad_id = (0 if arch == "bert" else 1) if pad_id is None else pad_id
    offset = position_offset(arch, pad_id)
    max_length = hf["max_position_embeddings"] - offset
    if max_length < 1:
        raise BortError(f"{source}: max_position_embeddings={hf['max_position_embeddings']} leaves no positions "
                        f"after the {offset} reserved rows")
    type_vocab = hf.get("type_vocab_size", 2 if arch == "bert" else 1)
    try:
        config = ModelConfig(
            num_layers=hf["num_hidden_layers"], units=hf["hidden_size"], hidden_size=hf["intermediate_size"],
            num_heads=hf["num_attention_heads"], vocab_size=hf["vocab_size"], max_length=max_length,
            token_type_vocab_size=type_vocab if type_vocab > 1 else 0,
            dropout=float(hf.get("hidden_dropout_prob", 0.1)), layer_norm_eps=float(hf.get("layer_norm_eps", 1e-12)),
            activation=ACTIVATIONS[act], family=arch, pad_id=pad_id)
    except BortError as err:
        raise BortError(f"{source}: {err}") from None
    return config, arch


_POSITIVE_FIELDS = ("hidden_size", "intermediate_size", "num_attention_heads", "num_hidden_layers", "vocab_size",
                    "max_position_embeddings")
_OPTIONAL_COUNTS = ("type_vocab_size", "pad_token_id", "embedding_size")
_OPTIONAL_FLOATS = ("hidden_dropout_prob", "layer_norm_eps")


def _check_hf_numbers(hf, source):
    """Sizes must be positive integers, ids non-negative integers, rates numbers: checked before anything is built."""
    def is_int(value):
        return isinstance(value, int) and not isinstance(value, bool)

    for key in _POSITIVE_FIELDS:
        if not is_int(hf[key]) or hf[key] < 1:
            raise BortError(f"{source}: {key}={hf[key]!r}; expected a positive integer")
    for key in _OPTIONAL_COUNTS:
        if hf.get(key) is not None and (not is_int(hf[key]) or hf[key] < 0):
            raise BortError(f"{source}: {key}={hf[key]!r}; expected a non-negative integer")
    for key in _OPTIONAL_FLOATS:
        value = hf.get(key)
        if value is not None and (not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0
                                  or value != value):
            raise BortError(f"{source}: {key}={value!r}; expected a non-negative number")
    if hf["hidden_size"] % hf["num_attention_heads"]:
        raise BortError(f"{source}: hidden_size={hf['hidden_size']} is not divisible by "
                        f"num_attention_heads={hf['num_attention_heads']}")
    if hf.get("pad_token_id") is not None and hf["pad_token_id"] >= hf["vocab_size"]:
        raise BortError(f"{source}: pad_token_id={hf['pad_token_id']} is outside the vocabulary of "
                        f"{hf['vocab_size']}")


_LAYER_NUMBER = re.compile(r"(?:^|\.)(?:encoder\.layer|transformer_cells)\.(\d+)\.")


def check_layer_count(num_layers, names, source):
    """Refuse a config that claims more layers than the weights hold, before any per-layer table is built (a
    10-byte config claiming 10^8 layers must not allocate gigabytes)."""
    found = {int(m.group(1)) for m in map(_LAYER_NUMBER.search, names) if m}
    held = max(found) + 1 if found else 0
    if num_layers > held:  # fewer layers than the weights: the name check lists the unexpected ones
        raise BortError(f"{source}: the config says {num_layers} layers but the weights hold {held}")


def hf_config(config, arch="bert", with_head=True):
    """The HF config.json dict that describes our `config` in the given HF architecture."""
    if arch not in ARCHS:
        raise BortError(f"unknown HF architecture {arch!r}; expected one of {sorted(ARCHS)}")
    if config.activation not in HF_ACTIVATIONS:
        raise BortError(f"activation {config.activation!r} has no HF equivalent here")
    if with_head and arch == "bert" and config.activation != "gelu":
        raise BortError(f"BERT's MLM head would use {config.activation!r}, ours uses erf GELU; export with "
                        "arch 'roberta' or without the head")
    info = ARCHS[arch]
    out = {
        "architectures": [info["mlm"] if with_head else info["encoder"]],
        "model_type": info["model_type"],
        "vocab_size": config.vocab_size,
        "hidden_size": config.units,
        "num_hidden_layers": config.num_layers,
        "num_attention_heads": config.num_heads,
        "intermediate_size": config.hidden_size,
        "hidden_act": HF_ACTIVATIONS[config.activation],
        "hidden_dropout_prob": config.dropout,
        "attention_probs_dropout_prob": config.dropout,
        "max_position_embeddings": config.max_length + position_offset(arch, config.pad_id),
        "type_vocab_size": max(1, config.token_type_vocab_size),
        "layer_norm_eps": config.layer_norm_eps,
        "initializer_range": 0.02,
        "pad_token_id": config.pad_id,
        "position_embedding_type": "absolute",
        "tie_word_embeddings": True,
        "dtype": "float32",
    }
    if config.family == "roberta" and config.pad_id == 1:  # RoBERTa's <s>, <pad>, </s> = 0, 1, 2
        out.update(bos_token_id=0, eos_token_id=2)
    return out


# ---------------------------------------------------------------------------------------------
# Import.
# ---------------------------------------------------------------------------------------------
def _encoder_prefix(names):
    for prefix in ("roberta.", "bert."):
        if any(n.startswith(prefix + "embeddings.") for n in names):
            return prefix
    return ""


def _normalize(name):
    """Old TF-converted files call LayerNorm parameters gamma/beta."""
    if ".LayerNorm." in name or ".layer_norm." in name:
        name = name.replace(".gamma", ".weight").replace(".beta", ".bias")
    return name


def convert_hf_state(tensors, hf, source="checkpoint"):
    """(config, {our name: float32 array}, [dropped HF names]) from HF tensors and config.json dict."""
    config, arch = config_from_hf(hf, source)
    tensors = {_normalize(n): v for n, v in tensors.items()}
    prefix = _encoder_prefix(tensors)
    head_names = {theirs for _, theirs in HEAD_NAMES[arch]} | set(HEAD_ALIASES[arch].values())
    with_head = any(n in head_names for n in tensors)
    if with_head and arch == "bert" and config.activation != "gelu":
        raise BortError(f"{source}: BERT's MLM head uses {hf.get('hidden_act')!r}; ours uses erf GELU")
    if with_head and hf.get("tie_word_embeddings") is False:
        raise BortError(f"{source}: tie_word_embeddings is false; our MLM decoder is tied to the word embeddings")
    check_layer_count(config.num_layers, tensors, source)
    table = name_table(config.num_layers, arch, with_head, prefix)
    aliases = HEAD_ALIASES[arch]
    if with_head and table[-1][1] not in tensors and aliases["bias"] in tensors:
        tensors[table[-1][1]] = tensors[aliases["bias"]]

    arrays, missing = {}, []
    for ours, theirs in table:
        if theirs in tensors:
            arrays[ours] = np.asarray(tensors[theirs], dtype=np.float32)
        else:
            missing.append(theirs)
    mapped = {theirs for _, theirs in table}
    dropped, unexpected = [], []
    for name in sorted(tensors):
        if name in mapped:
            continue
        if (name.startswith((prefix + "pooler.", "cls.seq_relationship.")) or name.endswith((".position_ids",
                                                                                             ".token_type_ids"))):
            dropped.append(name)
        elif name == aliases["weight"]:
            if "word_embed.0.weight" in arrays and not np.array_equal(tensors[name], arrays["word_embed.0.weight"]):
                raise BortError(f"{source}: {name} differs from the word embeddings; untied MLM decoders are "
                                "not supported")
            dropped.append(name)
        elif name == aliases["bias"]:
            if not np.array_equal(tensors[name], tensors[table[-1][1]]):
                raise BortError(f"{source}: {name} differs from {table[-1][1]}")
            dropped.append(name)
        else:
            unexpected.append(name)
    if missing or unexpected:
        parts = ([f"missing {len(missing)}: {', '.join(missing[:6])}"] if missing else []) + \
                ([f"unexpected {len(unexpected)}: {', '.join(unexpected[:6])}"] if unexpected else [])
        raise BortError(f"{source}: weights do not match a {arch} model of this config.json; " + "; ".join(parts))

    offset = position_offset(arch, config.pad_id)
    positions = arrays["encoder.position_weight"]
    if positions.shape[0] != offset + config.max_length:
        raise BortError(f"{source}: position_embeddings has {positions.shape[0]} rows; config.json says "
                        f"{offset + config.max_length}")
    positions = positions[offset:]
    token_types = arrays.pop("token_type_embed.0.weight")
    if not config.token_type_vocab_size:  # one row added to every token: fold it into the positions
        positions = positions + token_types[0][None, :]
    else:
        arrays["token_type_embed.0.weight"] = token_types
    arrays["encoder.position_weight"] = np.ascontiguousarray(positions)
    if with_head:
        arrays["decoder.3.weight"] = arrays["word_embed.0.weight"]
    _check_shapes(arrays, config, with_head, source)
    return config, arrays, dropped


def _check_shapes(arrays, config, with_head, source, allow_missing=()):
    from bort.weights.checkpoint import check_compatible  # noqa: PLC0415 - avoid an import cycle at module load

    check_compatible(parameter_shapes(config, use_decoder=with_head), {n: a.shape for n, a in arrays.items()},
                     source, allow_missing=allow_missing)


def hf_to_gluon(hf_dir):
    """(ModelConfig, {our parameter name: float32 numpy array}) from a local HF model directory."""
    hf_dir = os.fspath(hf_dir)
    if not os.path.isdir(hf_dir):
        raise BortError(f"{hf_dir}: not a directory (expected an HF model directory with config.json)")
    hf = read_hf_json(os.path.join(hf_dir, "config.json"))
    tensors = read_hf_weights(hf_dir)
    config, arrays, dropped = convert_hf_state(tensors, hf, source=hf_dir)
    if dropped:
        log.info("not part of our model, dropped: %s", ", ".join(dropped))
    return config, arrays


def hf_directory_config(path):
    """The ModelConfig of an HF checkpoint directory's config.json; None when `path` is not a directory."""
    if not path or not os.path.isdir(path):
        return None
    config_json = os.path.join(path, "config.json")
    return config_from_hf(read_hf_json(config_json), config_json)[0]


def hf_encoder(hf_dir):
    """(ModelConfig, {our name: array}, pooler) of a local HF directory, for fine-tuning: `pooler` is
    {"weight": (units, units), "bias": (units,)} of BERT's pooler (dense + tanh on the first token), None when the
    checkpoint has none. The MLM head, if any, is left out."""
    hf_dir = os.fspath(hf_dir)
    if not os.path.isdir(hf_dir):
        raise BortError(f"{hf_dir}: not a directory (expected an HF model directory with config.json)")
    hf = read_hf_json(os.path.join(hf_dir, "config.json"))
    tensors = {_normalize(n): v for n, v in read_hf_weights(hf_dir).items()}
    config, arrays, _ = convert_hf_state(tensors, hf, source=hf_dir)
    arrays = {n: a for n, a in arrays.items() if not n.startswith("decoder.")}
    prefix = _encoder_prefix(tensors)
    pooler = {k: np.asarray(tensors[f"{prefix}pooler.dense.{k}"], np.float32) for k in ("weight", "bias")
              if f"{prefix}pooler.dense.{k}" in tensors}
    if pooler and (len(pooler) != 2 or pooler["weight"].shape != (config.units, config.units)
                   or pooler["bias"].shape != (config.units,)):
        raise BortError(f"{hf_dir}: {prefix}pooler.dense has shapes {[a.shape for a in pooler.values()]}; expected "
                        f"weight ({config.units}, {config.units}) and bias ({config.units},)")
    return config, arrays, pooler or None


# ---------------------------------------------------------------------------------------------
# Export.
# ---------------------------------------------------------------------------------------------
def _as_numpy_arrays(params):
    if isinstance(params, (str, os.PathLike)):
        from bort.weights.checkpoint import read_params_file  # noqa: PLC0415

        params = read_params_file(params)
    elif hasattr(params, "_collect_params_with_prefix"):  # a Gluon block
        params = {n: p.data() for n, p in params._collect_params_with_prefix().items()}
    return {n: (v.asnumpy() if hasattr(v, "asnumpy") else np.asarray(v)).astype(np.float32) for n, v in params.items()}


def gluon_to_tensors(arrays, config, arch="bert", source="parameters"):
    """({HF name: array}, with_head) from our arrays; validates names and shapes strictly."""
    with_head = any(n.startswith("decoder.") for n in arrays)
    check_layer_count(config.num_layers, arrays, source)
    _check_shapes(arrays, config, with_head, source, allow_missing=("decoder.3.weight",))
    if with_head and "decoder.3.weight" in arrays and \
            not np.array_equal(arrays["decoder.3.weight"], arrays["word_embed.0.weight"]):
        raise BortError(f"{source}: decoder.3.weight differs from word_embed.0.weight; expected them tied")
    prefix = ARCHS[arch]["prefix"] if with_head else ""
    arrays = dict(arrays)
    offset = position_offset(arch, config.pad_id)
    units = config.units
    arrays["encoder.position_weight"] = np.concatenate(
        [np.zeros((offset, units), np.float32), arrays["encoder.position_weight"]], axis=0)
    if not config.token_type_vocab_size:
        arrays["token_type_embed.0.weight"] = np.zeros((1, units), np.float32)
    return {theirs: np.ascontiguousarray(arrays[ours])
            for ours, theirs in name_table(config.num_layers, arch, with_head, prefix)}, with_head


def gluon_to_hf(params, config, out_dir, arch="bert"):
    """Write `out_dir/config.json` and `out_dir/model.safetensors` for our parameters.

    params: a .params path, a Gluon block, or {name: array}; config: ModelConfig, name or JSON path.
    arch: "bert" (BertForMaskedLM / BertModel, positions from 0) or "roberta" (RobertaForMaskedLM /
    RobertaModel, positions after pad_id). Returns the HF config dict written.
    """
    if not isinstance(config, ModelConfig):
        config = get_config(config)
    source = os.fspath(params) if isinstance(params, (str, os.PathLike)) else "parameters"
    tensors, with_head = gluon_to_tensors(_as_numpy_arrays(params), config, arch, source)
    out = hf_config(config, arch, with_head)
    with owned_directory(out_dir, "--output"):  # removed again when this call created it and a write fails
        write_safetensors(os.path.join(out_dir, "model.safetensors"), tensors, metadata={"format": "pt"})
        write_json(os.path.join(out_dir, "config.json"), out)
    return out

