"""Bort and its relatives as Gluon blocks: named configurations, the encoder, the MLM head.

Parameter names follow gluon-nlp 0.x `BERTModel`/`RoBERTaModel` (`word_embed.0.weight`,
`encoder.position_weight`, `encoder.transformer_cells.N.attention_cell.proj_query.weight`, ...,
`decoder.0/2/3.*`), so the released `bort.params` and gluon-nlp's RoBERTa parameters load unchanged.
Nothing here knows about files or tasks.

    python -m bort.model --summary bort_4_8_768_1024 [--vocab_size 50265]
"""
import argparse
import dataclasses
import json

import bort  # noqa: F401  (sets thread counts before mxnet is imported)
import mxnet as mx
from gluonnlp.model.bert import BERTEncoder
from mxnet.gluon import HybridBlock, nn

from bort.errors import BortError
from bort.io import read_json

ROBERTA_VOCAB_SIZE = 50265


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Architecture of a BERT-family encoder. `units` is the hidden size, `hidden_size` the FFN size
    (gluon-nlp's names)."""

    num_layers: int
    units: int
    hidden_size: int
    num_heads: int
    vocab_size: int = ROBERTA_VOCAB_SIZE
    max_length: int = 512
    embed_size: int = 0  # 0: same as units
    token_type_vocab_size: int = 0  # 0: no token-type embeddings (Bort, RoBERTa)
    dropout: float = 0.1
    embed_dropout: float = 0.0  # dropout on the word embeddings, before positions are added (Bort: 0.1)
    layer_norm_eps: float = 1e-5
    activation: str = "gelu"  # erf-based GELU, as gluon-nlp and HF "gelu"
    family: str = "roberta"  # "roberta" (ids start at 0 after conversion) or "bert"
    pad_id: int = 1

    def __post_init__(self):
        for name in ("num_layers", "units", "hidden_size", "num_heads", "vocab_size", "max_length"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise BortError(f"config: {name} must be a positive integer, got {value!r}")
        if self.units % self.num_heads:
            raise BortError(f"config: units={self.units} is not divisible by num_heads={self.num_heads}")
        if not self.embed_size:
            object.__setattr__(self, "embed_size", self.units)
        if self.embed_size != self.units:
            raise BortError("config: embed_size must equal units (the encoder adds positions to embeddings)")

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)

    def to_dict(self):
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values, source="config"):
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - fields)
        if unknown:
            raise BortError(f"{source}: unknown config fields {unknown}; expected some of {sorted(fields)}")
        try:
            return cls(**values)
        except TypeError as err:
            raise BortError(f"{source}: {err}") from None


CONFIGS = {
    # The Bort architecture: depth 4, 8 heads, FFN 768, hidden 1024 (names: layers_heads_ffn_units). The original
    # applies dropout 0.1 to the word embeddings (its embed_dropout) on top of the encoder's own dropout.
    "bort_4_8_768_1024": ModelConfig(num_layers=4, units=1024, hidden_size=768, num_heads=8, embed_dropout=0.1),
    # The original's second configuration: depth 2, 16 heads, FFN 512, hidden 1024.
    "bort_2_16_512_1024": ModelConfig(num_layers=2, units=1024, hidden_size=512, num_heads=16, embed_dropout=0.1),
    # The teacher.
    "roberta_24_1024_16": ModelConfig(num_layers=24, units=1024, hidden_size=4096, num_heads=16),
    "roberta_12_768_12": ModelConfig(num_layers=12, units=768, hidden_size=3072, num_heads=12),
    "bert_12_768_12": ModelConfig(num_layers=12, units=768, hidden_size=3072, num_heads=12, vocab_size=30522,
                                  token_type_vocab_size=2, layer_norm_eps=1e-12, family="bert", pad_id=0),
    # Small models for tests and the TEST launcher modes.
    "bort_tiny": ModelConfig(num_layers=2, units=64, hidden_size=48, num_heads=4, max_length=128),
    "roberta_tiny": ModelConfig(num_layers=2, units=64, hidden_size=256, num_heads=4, max_length=128),
    "bert_tiny": ModelConfig(num_layers=2, units=64, hidden_size=256, num_heads=4, max_length=128, vocab_size=1000,
                             token_type_vocab_size=2, layer_norm_eps=1e-12, family="bert", pad_id=0),
}


def get_config(name_or_path, **overrides):
    """A named configuration, or one read from a JSON file, with fields overridden (None values ignored)."""
    if name_or_path in CONFIGS:
        config = CONFIGS[name_or_path]
    elif str(name_or_path).endswith(".json"):
        values = read_json(name_or_path, "a model config")
        config = ModelConfig.from_dict(values.get("model", values), source=name_or_path)
    else:
        raise BortError(f"unknown model config {name_or_path!r}; expected one of {sorted(CONFIGS)} or a .json file")
    overrides = {k: v for k, v in overrides.items() if v is not None}
    return config.replace(**overrides) if overrides else config


class BortModel(HybridBlock):
    """Embeddings + gluon-nlp `BERTEncoder` (post-layer-norm) + optional MLM head.

    Inputs: `inputs` (batch, length) token ids; `valid_length` (batch,); `masked_positions`
    (batch, num_masked) when the MLM head is used; `token_types` (batch, length) for BERT configs only.
    Output: the last hidden state (batch, length, units), and with `masked_positions` also the MLM logits
    (batch, num_masked, vocab). Once hybridized, a model must be called with the same set of inputs each time.
    """

    def __init__(self, config, use_decoder=True, prefix=None, params=None):
        super().__init__(prefix=prefix, params=params)
        self.config = config
        self._use_decoder = use_decoder
        with self.name_scope():
            self.word_embed = nn.HybridSequential(prefix="word_embed_")
            with self.word_embed.name_scope():
                self.word_embed.add(nn.Embedding(config.vocab_size, config.embed_size,
                                                 weight_initializer=mx.init.Normal(0.02)))
                if config.embed_dropout:  # no parameters: the names stay word_embed.0.*
                    self.word_embed.add(nn.Dropout(config.embed_dropout))
            if config.token_type_vocab_size:
                self.token_type_embed = nn.HybridSequential(prefix="token_type_embed_")
                with self.token_type_embed.name_scope():
                    self.token_type_embed.add(nn.Embedding(config.token_type_vocab_size, config.embed_size,
                                                           weight_initializer=mx.init.Normal(0.02)))
            self.encoder = BERTEncoder(
                num_layers=config.num_layers, units=config.units, hidden_size=config.hidden_size,
                max_length=config.max_length, num_heads=config.num_heads, dropout=config.dropout,
                weight_initializer=mx.init.Normal(0.02), activation=config.activation,
                layer_norm_eps=config.layer_norm_eps, prefix="encoder_")
            if use_decoder:
                self.decoder = nn.HybridSequential(prefix="decoder_")
                with self.decoder.name_scope():
                    self.decoder.add(nn.Dense(config.units, flatten=False, weight_initializer=mx.init.Normal(0.02)))
                    self.decoder.add(nn.GELU())
                    self.decoder.add(nn.LayerNorm(in_channels=config.units, epsilon=config.layer_norm_eps))
                    # Tied to the word embeddings; only its bias is its own.
                    self.decoder.add(nn.Dense(config.vocab_size, flatten=False,
                                              params=self.word_embed[0].collect_params()))

    @property
    def has_decoder(self):
        return self._use_decoder

    def hybrid_forward(self, F, inputs, valid_length=None, masked_positions=None, token_types=None):
        embedding = self.word_embed(inputs)
        if self.config.token_type_vocab_size:
            if token_types is None:
                token_types = F.zeros_like(inputs)
            embedding = embedding + self.token_type_embed(token_types)
        hidden, _ = self.encoder(F.transpose(embedding, axes=(1, 0, 2)), valid_length=valid_length)
        hidden = F.transpose(hidden, axes=(1, 0, 2))
        if masked_positions is None or not self._use_decoder:
            return hidden
        return hidden, self.decoder(gather_positions(F, hidden, masked_positions))


def gather_positions(F, hidden, positions):
    """hidden (batch, length, units), positions (batch, k) -> (batch, k, units)."""
    positions = positions.astype("int32")
    batch_idx = F.broadcast_like(F.expand_dims(F.contrib.arange_like(positions, axis=0), axis=1), positions)
    index = F.stack(batch_idx.astype("int32").reshape(-1), positions.reshape(-1), axis=0)
    gathered = F.gather_nd(hidden, index)
    return gathered.reshape_like(positions, lhs_begin=0, lhs_end=1, rhs_begin=0, rhs_end=2)


class CudnnOffDropout(nn.Dropout):
    """gluon's Dropout computed by MXNet's own kernel also on GPU (`cudnn_off=True`): its masks come from MXNet's
    generator, which `mx.random.seed` sets. cuDNN's dropout state (what gluon's Dropout uses on GPU) is seeded once
    per process and never by `mx.random.seed` in MXNet 1.9.1 (docs/gpu.md, 'Reproducibility on GPU')."""

    def hybrid_forward(self, F, x):
        if self._rate > 0:
            return F.Dropout(x, p=self._rate, axes=self._axes, name="fwd", cudnn_off=True)
        return F.identity(x)


def disable_cudnn_dropout(block):
    """Turn every gluon `Dropout` inside `block` (those of gluon-nlp's encoder included) into a `CudnnOffDropout`, in
    place; call before the block is hybridized. Returns the number of dropouts changed. On CPU nothing changes:
    cudnn_off only selects the GPU kernel."""
    changed = []

    def swap(child):
        if type(child) is nn.Dropout:  # noqa: E721  (exactly gluon's, built deep inside gluon-nlp's blocks)
            child.__class__ = CudnnOffDropout
            changed.append(child)

    block.apply(swap)
    return len(changed)


def build_model(config, use_decoder=True, initialize=True, ctx=None, prefix="bort_"):
    """Build (and by default randomly initialize) the model for a config or config name."""
    if isinstance(config, str):
        config = get_config(config)
    model = BortModel(config, use_decoder=use_decoder, prefix=prefix)
    if initialize:
        model.initialize(mx.init.Normal(0.02), ctx=ctx or mx.cpu())
    return model


def parameter_shapes(config, use_decoder=True):
    """{gluon-nlp parameter name: shape} for a config, without allocating the weights."""
    model = BortModel(config, use_decoder=use_decoder, prefix="shapes_")
    shapes = {}
    for name, param in model._collect_params_with_prefix().items():
        shape = param.shape
        if any(d == 0 for d in shape):  # Dense layers with deferred input size
            shape = _deferred_shape(name, config)
        shapes[name] = tuple(shape)
    return shapes


def _deferred_shape(name, config):
    units, ffn = config.units, config.hidden_size
    if name.endswith("proj.weight") or name.startswith("decoder.0.weight"):
        return (units, units)
    if name.endswith("ffn_1.weight"):
        return (ffn, units)
    if name.endswith("ffn_2.weight"):
        return (units, ffn)
    if name.endswith("attention_cell.proj_query.weight") or name.endswith("proj_key.weight") \
            or name.endswith("proj_value.weight"):
        return (units, units)
    raise AssertionError(f"no shape rule for deferred parameter {name}")


def parameter_summary(config, use_decoder=False):
    """Parameter counts per part: word embeddings, positions, token types, encoder, MLM head."""
    parts = {"word_embeddings": 0, "position_embeddings": 0, "token_type_embeddings": 0,
             "encoder": 0, "mlm_head": 0}
    for name, shape in parameter_shapes(config, use_decoder=use_decoder).items():
        if name == "decoder.3.weight":  # tied to word_embed.0.weight, counted there
            continue
        count = 1
        for dim in shape:
            count *= dim
        if name.startswith("word_embed"):
            parts["word_embeddings"] += count
        elif name == "encoder.position_weight":
            parts["position_embeddings"] += count
        elif name.startswith("token_type_embed"):
            parts["token_type_embeddings"] += count
        elif name.startswith("encoder"):
            parts["encoder"] += count
        elif name.startswith("decoder"):
            parts["mlm_head"] += count
    return parts


def main(argv=None):
    parser = argparse.ArgumentParser(description="Model configurations and parameter counts.")
    parser.add_argument("--summary", metavar="CONFIG", required=True, help=f"one of {sorted(CONFIGS)} or a JSON file")
    parser.add_argument("--vocab_size", type=int, default=None)
    parser.add_argument("--with_mlm_head", action="store_true", help="count the MLM head too")
    args = parser.parse_args(argv)
    config = get_config(args.summary, vocab_size=args.vocab_size)
    parts = parameter_summary(config, use_decoder=args.with_mlm_head)
    print(f"config {args.summary}: " + json.dumps(config.to_dict(), sort_keys=True))
    for part, count in parts.items():
        print(f"{part:>24s} {count:>14,d}  ({count / 1e6:.1f} M)")
    print(f"total_params={sum(parts.values())}")


if __name__ == "__main__":
    from bort.errors import run_cli

    run_cli(main)()
