"""An inference-only twin of `BortModel`'s encoder, laid out for oneDNN graph passes.

gluon-nlp's `DotProductSelfAttentionCell` keeps query/key/value weights apart and interleaves them
(reshape + concat + stack) on every forward call. That costs a copy of the weights per call in fp32, and it
stops the INT8 and bf16 passes from treating the projection weight as a constant: the quantized
fully-connected layer re-quantizes a computed weight each time. `FastEncoder` holds the interleaved
projection as one constant parameter, so the graph is exactly the pattern MXNet's oneDNN backend fuses
(FullyConnected -> interleaved_matmul_selfatt_qk / _valatt) and quantizes. Padding is an additive score bias in
front of a plain softmax instead of gluon-nlp's softmax with `length`, whose CPU kernel took ~30 ms of a 95 ms
INT8 forward (Bort, batch 8, length 128, one thread).

Layer norms (with the residual add in front of them) run as one pass of `bort_add_layer_norm`, and the padding
bias + softmax as one `bort_masked_softmax`, from Bort's C++ operator library (`bort.inference.native_ops`) when it loads;
else as MXNet's `elemwise_add` + `LayerNorm` and `broadcast_add` + `softmax`.

It is built from a `BortModel` (`FastEncoder.from_model`) by copying its parameters, so it reads every
checkpoint `BortModel` reads; it has no parameters of its own to save. Inputs and outputs match
`BortModel(inputs, valid_length, token_types=...)` without the MLM head: hidden states (batch, length, units),
zero at padded positions.
"""
import bort  # noqa: F401  (sets thread counts before mxnet is imported)
import mxnet as mx
import numpy as np
from mxnet.gluon import HybridBlock

from bort.inference import native_ops as _native
from bort.weights.checkpoint import finish_deferred_init

PAD_COLUMNS = 16  # zero columns appended to a GEMM input whose width is a multiple of 512 (pad_gemm_inputs)


def interleave_qkv(query, key, value, num_heads):
    """Stack (units, in) query/key/value weights (or (units,) biases) as rows [q_h, k_h, v_h] per head,
    the layout `interleaved_matmul_selfatt_*` expects."""
    parts = [np.asarray(p).reshape((num_heads, -1) + np.shape(p)[1:]) for p in (query, key, value)]
    return np.concatenate(parts, axis=1).reshape((-1,) + np.shape(query)[1:])


class FastEncoder(HybridBlock):
    """Embeddings + post-layer-norm transformer layers with a fused QKV projection (inference only, no dropout).

    `native_ops`: use Bort's fused add + layer norm and masked softmax (`bort.inference.native_ops.load()` must have
    succeeded). `pad_gemm_inputs` (with `native_ops`): give fully-connected layers whose input width is a multiple
    of 512 that many zero columns more (`bort_pad_last`, weights padded to match); oneDNN's float32 GEMM runs
    1.6x faster at 128 rows with a 1040- than with a 1024-float row stride (see `PAD_COLUMNS`); INT8 and bf16 encoders
    ran 1-9 % slower with it, so `bort.inference.modes` pads float32 modes only.
    Call as `net(inputs, valid_length)` or, for configs with token types, `net(inputs, valid_length, token_types)`;
    all inputs may be float32 (ids are cast inside). Returns (batch, length, units).
    """

    def __init__(self, config, prefix="fast_", params=None, native_ops=False, pad_gemm_inputs=False):
        super().__init__(prefix=prefix, params=params)
        self.config = config
        self.native_ops = native_ops
        self.pad_gemm_inputs = bool(pad_gemm_inputs and native_ops)
        c = config
        pad_units, pad_hidden = self._pad_for(c.units), self._pad_for(c.hidden_size)
        self._names = []  # (fast name, BortModel name, zero columns appended) in creation order
        with self.name_scope():
            self._param("word_weight", (c.vocab_size, c.units), "word_embed.0.weight")
            if c.token_type_vocab_size:
                self._param("type_weight", (c.token_type_vocab_size, c.units),
                                               "token_type_embed.0.weight")
            self._param("position_weight", (c.max_length, c.units), "encoder.position_weight")
            self._param("embed_gamma", (c.units,), "encoder.layer_norm.gamma")
            self._param("embed_beta", (c.units,), "encoder.layer_norm.beta")
            for i in range(c.num_layers):
                src = f"encoder.transformer_cells.{i}."
                att = src + "attention_cell.proj_"
                self._param(f"l{i}_qkv_weight", (3 * c.units, c.units),
                            tuple(att + f"{p}.weight" for p in ("query", "key", "value")), pad_units)
                self._param(f"l{i}_qkv_bias", (3 * c.units,),
                            tuple(att + f"{p}.bias" for p in ("query", "key", "value")))
                for name, shape, source, pad in (
                        ("proj_weight", (c.units, c.units), "proj.weight", pad_units),
                        ("proj_bias", (c.units,), "proj.bias", 0),
                        ("ln1_gamma", (c.units,), "layer_norm.gamma", 0),
                        ("ln1_beta", (c.units,), "layer_norm.beta", 0),
                        ("ffn1_weight", (c.hidden_size, c.units), "ffn.ffn_1.weight", pad_units),
                        ("ffn1_bias", (c.hidden_size,), "ffn.ffn_1.bias", 0),
                        ("ffn2_weight", (c.units, c.hidden_size), "ffn.ffn_2.weight", pad_hidden),
                        ("ffn2_bias", (c.units,), "ffn.ffn_2.bias", 0),
                        ("ln2_gamma", (c.units,), "ffn.layer_norm.gamma", 0),
                        ("ln2_beta", (c.units,), "ffn.layer_norm.beta", 0)):
                    self._param(f"l{i}_{name}", shape, src + source, pad)

    def _pad_for(self, width):
        return PAD_COLUMNS if self.pad_gemm_inputs and width % 512 == 0 else 0

    def _param(self, name, shape, source, pad=0):
        shape = shape[:-1] + (shape[-1] + pad,)
        param = self.params.get(name, shape=shape, init=mx.init.Zero(), grad_req="null")
        self._names.append((name, source, pad))
        setattr(self, name, param)  # registers it, so hybrid_forward receives it by name
        return param

    @classmethod
    def from_model(cls, model, ctx=None, native_ops=None, pad_gemm_inputs=False):
        """A FastEncoder holding a copy of `model`'s (a `BortModel`) encoder parameters. `native_ops`: None uses
        Bort's C++ operators when they build and load (`bort.inference.native_ops.load()`), False never."""
        use_native = _native.load() if native_ops is None else bool(native_ops and _native.load())
        fast = cls(model.config, native_ops=use_native, pad_gemm_inputs=pad_gemm_inputs)
        fast.initialize(ctx=ctx or mx.cpu())
        fast.copy_from(model)
        return fast

    def copy_from(self, model):
        source = finish_deferred_init(model)._collect_params_with_prefix()
        own = self.params
        for name, src, pad in self._names:
            if isinstance(src, tuple):
                value = interleave_qkv(*(source[s].data().asnumpy() for s in src), self.config.num_heads)
            else:
                value = source[src].data().asnumpy()
            if pad:
                value = np.pad(value, [(0, 0)] * (value.ndim - 1) + [(0, pad)])
            own.get(name).set_data(mx.nd.array(value, dtype="float32"))

    def hybrid_forward(self, F, inputs, valid_length, token_types=None, **p):
        c = self.config
        ids = F.transpose(inputs, axes=(1, 0))  # (length, batch)
        x = F.Embedding(ids, p["word_weight"], input_dim=c.vocab_size, output_dim=c.units)
        if c.token_type_vocab_size:
            types = F.zeros_like(ids) if token_types is None else F.transpose(token_types, axes=(1, 0))
            x = x + F.Embedding(types, p["type_weight"], input_dim=c.token_type_vocab_size, output_dim=c.units)
        steps = F.contrib.arange_like(ids, axis=0)
        positions = F.Embedding(steps, p["position_weight"], input_dim=c.max_length, output_dim=c.units)
        x = self._add_norm(F, x, F.expand_dims(positions, axis=1), p["embed_gamma"], p["embed_beta"], broadcast=True)
        if self.native_ops:  # Bort's masked softmax reads valid_length itself
            bias = valid_length
        else:
            # Padding as an additive score bias (batch * heads, 1, length): 0 on valid keys, -1e9 on padding.
            # MXNet's softmax with `length` (what gluon-nlp uses) is a slow non-oneDNN kernel: ~20x the plain
            # softmax here.
            valid = F.broadcast_lesser(F.reshape(steps, shape=(1, -1)), F.reshape(valid_length, shape=(-1, 1)))
            bias = F.expand_dims(F.expand_dims((valid - 1) * 1e9, axis=1), axis=1)  # (batch, 1, 1, length)
            bias = F.reshape(F.broadcast_axis(bias, axis=1, size=c.num_heads), shape=(-3, -2))  # (b*heads, 1, len)
        for i in range(c.num_layers):
            x = self._layer(F, x, bias, i, p)
        x = F.SequenceMask(x, sequence_length=valid_length, use_sequence_length=True, axis=0)
        return F.transpose(x, axes=(1, 0, 2))

    def _layer(self, F, x, bias, i, p):
        c = self.config
        w = lambda name: p[f"l{i}_{name}"]  # noqa: E731
        qkv = F.FullyConnected(self._pad(F, x, c.units), w("qkv_weight"), w("qkv_bias"), num_hidden=3 * c.units,
                               flatten=False)
        score = F.contrib.interleaved_matmul_selfatt_qk(qkv, heads=c.num_heads)
        if self.native_ops:
            att = F.bort_masked_softmax(score, bias, heads=c.num_heads)  # bias is valid_length here
        else:
            att = F.softmax(F.broadcast_add(score, bias), axis=-1)
        context = F.contrib.interleaved_matmul_selfatt_valatt(qkv, att, heads=c.num_heads)
        out = F.FullyConnected(self._pad(F, context, c.units), w("proj_weight"), w("proj_bias"), num_hidden=c.units,
                               flatten=False)
        x = self._add_norm(F, out, x, w("ln1_gamma"), w("ln1_beta"))
        h = F.FullyConnected(self._pad(F, x, c.units), w("ffn1_weight"), w("ffn1_bias"), num_hidden=c.hidden_size,
                             flatten=False)
        h = _activation(F, h, c.activation)
        h = F.FullyConnected(self._pad(F, h, c.hidden_size), w("ffn2_weight"), w("ffn2_bias"), num_hidden=c.units,
                             flatten=False)
        return self._add_norm(F, h, x, w("ln2_gamma"), w("ln2_beta"))

    def _pad(self, F, x, width):
        pad = self._pad_for(width)
        return F.bort_pad_last(x, pad=pad) if pad else x

    def _add_norm(self, F, x, residual, gamma, beta, broadcast=False):
        """LayerNorm(x + residual) over the last axis; with `broadcast`, residual is (length, 1, units) against
        x's (length, batch, units)."""
        eps = self.config.layer_norm_eps
        if self.native_ops:
            return F.bort_add_layer_norm(x, residual, gamma, beta, eps=eps)
        added = F.broadcast_add(x, residual) if broadcast else x + residual
        return F.LayerNorm(added, gamma, beta, axis=-1, eps=eps)


def _activation(F, x, name):
    if name == "gelu":
        return F.LeakyReLU(x, act_type="gelu")
    if name == "relu":
        return F.relu(x)
    raise ValueError(f"unsupported activation {name!r}")
