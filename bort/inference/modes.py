"""Fast CPU inference for Bort-family encoders: four precision modes and length bucketing.

Modes (all built from a `BortModel`, whose parameters they copy; see `bort.inference.fast_encoder`):

- ``fp32``   the fused-QKV encoder, hybridized with static memory and shapes;
- ``fused``  the same after MXNet's oneDNN graph pass (`optimize_for(backend='MKLDNN')`);
- ``bf16``   oneDNN bfloat16 fully-connected layers via MXNet AMP (attention scores, softmax and layer norm
             stay float32);
- ``int8``   post-training INT8 quantization (MXNet's `quantize_net_v2`, oneDNN backend), calibrated on batches
             the caller provides (a few hundred task sentences).

Layer norms (with their residual add) and the padding-masked softmax run as Bort's C++ operators
(`bort.inference.native_ops`) in every mode when the library builds and loads; `native_ops=False` (or BORT_NATIVE_OPS=0)
keeps MXNet's own operators.

Every mode returns float32 hidden states (batch, length, units) for `(ids, valid_length[, token_types])`.
`bucket_order`/`predict_bucketed` sort inputs by length so short sentences are not padded to the longest.
"""
import logging

import bort  # noqa: F401  (sets thread counts before mxnet is imported)
import mxnet as mx
import numpy as np

from bort.errors import BortError
from bort.finetune.heads import segment_ids
from bort.inference.fast_encoder import FastEncoder

MODES = ("fp32", "fused", "bf16", "int8")
ATTENTION_OPS = ("_contrib_interleaved_matmul_selfatt_qk", "_contrib_interleaved_matmul_selfatt_valatt")
FLOAT32_ONLY_OPS = ATTENTION_OPS + ("bort_add_layer_norm", "bort_masked_softmax")  # CPU kernels without bfloat16
log = logging.getLogger(__name__)


def _example_inputs(config, batch_size=1, seq_len=8):
    ids = mx.nd.full((batch_size, seq_len), 3, dtype="float32")
    args = [ids, mx.nd.full((batch_size,), seq_len, dtype="float32")]
    if config.token_type_vocab_size:
        args.append(mx.nd.zeros((batch_size, seq_len)))
    return args


def _as_inputs(batch, config):
    """(ids, valid_length[, token_types]) as float32 NDArrays, token types zero-filled for BERT configs."""
    arrays = [a.astype("float32", copy=False) if isinstance(a, mx.nd.NDArray) else mx.nd.array(a, dtype="float32")
              for a in batch if a is not None]
    if len(arrays) < 2:
        raise BortError("inference: a batch needs ids (batch, length) and valid_length (batch,)")
    if config.token_type_vocab_size and len(arrays) == 2:
        arrays.append(mx.nd.zeros(arrays[0].shape))
    if not config.token_type_vocab_size:
        arrays = arrays[:2]
    return arrays


class InferenceEncoder:
    """A prepared encoder: call with (ids, valid_length[, token_types]) → float32 (batch, length, units)."""

    def __init__(self, net, mode, config, native_ops=False):
        self.net, self.mode, self.config, self.native_ops = net, mode, config, native_ops

    def __call__(self, ids, valid_length, token_types=None):
        out = self.net(*_as_inputs((ids, valid_length, token_types), self.config))
        return out if out.dtype == np.float32 else out.astype("float32")


def prepare(model, mode="fp32", calib_batches=None, calib_mode="naive", example=None, native_ops=None):
    """Build the inference encoder for `mode` from a `BortModel` (its parameters are copied).

    `calib_batches`: for ``int8``, an iterable of (ids, valid_length[, token_types]) batches of one shape,
    ideally a few hundred real sentences. `example`: inputs used to trace the graph (default: a tiny batch).
    `native_ops`: None uses Bort's C++ operators when they are available, False MXNet's own operators.
    """
    if mode not in MODES:
        raise BortError(f"inference: unknown mode {mode!r}; expected one of {list(MODES)}")
    config = model.config
    # padded GEMM inputs speed up oneDNN's float32 GEMM (FastEncoder); the INT8 and bf16 ones run slower with them
    net = FastEncoder.from_model(model, native_ops=native_ops, pad_gemm_inputs=mode in ("fp32", "fused"))
    uses_native = net.native_ops
    net.hybridize(static_alloc=True, static_shape=True)
    example = _as_inputs(example, config) if example is not None else _example_inputs(config)
    net(*example)
    if mode == "fused":
        net.optimize_for(*example, backend="MKLDNN")
    elif mode == "bf16":
        net = _to_bf16(net)
    elif mode == "int8":
        net = _to_int8(net, config, calib_batches, calib_mode)
    return InferenceEncoder(net, mode, config, native_ops=uses_native)


def _to_bf16(net):
    from mxnet.contrib import amp
    from mxnet.contrib.amp.lists import symbol_bf16

    # MXNet 1.9's bf16 lists omit the fused attention ops, whose CPU kernels are float32 only; without an entry
    # AMP feeds them a bf16 projection and a float32 softmax and stops ("Incompatible attr"). Run them (and Bort's
    # own float32 layer norm) in float32.
    for op in FLOAT32_ONLY_OPS:
        if op not in symbol_bf16.FP32_FUNCS:
            symbol_bf16.FP32_FUNCS.append(op)
    converted = amp.convert_hybrid_block(net, target_dtype="bfloat16", ctx=mx.cpu(), cast_optional_params=True)
    converted.hybridize(static_alloc=True, static_shape=True)
    return converted


def _to_int8(net, config, calib_batches, calib_mode):
    if calib_mode not in ("naive", "entropy"):
        raise BortError(f"inference: calib_mode must be naive or entropy, got {calib_mode!r}")
    if not calib_batches:
        raise BortError("inference: int8 needs calibration batches (a few hundred task sentences)")
    if calib_mode == "entropy":
        import importlib.util
        if importlib.util.find_spec("scipy") is None:
            raise BortError("inference: calib_mode entropy needs scipy (pip install scipy); naive needs nothing")
    columns = [list(col) for col in zip(*(_as_inputs(b, config) for b in calib_batches))]
    shapes = {a.shape for a in columns[0]}
    if len(shapes) != 1:
        raise BortError(f"inference: calibration batches must share one shape, got {sorted(shapes)}")
    batch_size = columns[0][0].shape[0]
    data = {f"data{i}": mx.nd.concat(*col, dim=0) for i, col in enumerate(columns)}
    num = data["data0"].shape[0]
    calib = mx.io.NDArrayIter(data=data, batch_size=batch_size)
    quantized = mx.contrib.quantization.quantize_net_v2(
        net, quantized_dtype="auto", quantize_mode="smart", quantize_granularity="tensor-wise",
        calib_data=calib, calib_mode=calib_mode, num_calib_examples=num, ctx=mx.cpu())
    quantized.hybridize(static_alloc=True, static_shape=True)
    log.info("int8: calibrated on %d sequences (%s)", num, calib_mode)
    return quantized


# ---------------------------------------------------------------- length bucketing


def bucket_order(lengths, batch_size, round_to=8):
    """Group sequence indices into batches of similar length.

    Returns [(indices, padded_length)]: indices sorted by length (longest first) in chunks of `batch_size`,
    each padded to its longest member rounded up to a multiple of `round_to` (fewer distinct shapes to trace).
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    if batch_size < 1:
        raise BortError(f"inference: batch_size must be >= 1, got {batch_size}")
    order = np.argsort(-lengths, kind="stable")
    batches = []
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        longest = int(lengths[idx].max()) if len(idx) else 0
        batches.append((idx, max(round_to, -(-longest // round_to) * round_to)))
    return batches


def predict_bucketed(fn, sequences, batch_size, pad_id, round_to=8, max_length=None, token_types=None,
                     progress=None):
    """Run `fn(ids, valid_length, token_types)` over `sequences` (lists of token ids) in length buckets.

    `fn` returns one row per sequence (a NumPy array or NDArray with batch first). Results come back as a list in
    the original order. `progress`, if given, is called with the number of sequences done in each batch.
    """
    lengths = [len(s) for s in sequences]
    if max_length is not None and lengths and max(lengths) > max_length:
        raise BortError(f"inference: a sequence has {max(lengths)} tokens; the model takes at most {max_length}")
    results = [None] * len(sequences)
    for idx, padded in bucket_order(lengths, batch_size, round_to):
        if max_length is not None:
            padded = min(padded, max_length)
        ids = np.full((len(idx), padded), pad_id, dtype=np.float32)
        types = np.zeros((len(idx), padded), dtype=np.float32) if token_types is not None else None
        for row, i in enumerate(idx):
            ids[row, :lengths[i]] = sequences[i]
            if types is not None:
                types[row, :lengths[i]] = token_types[i]
        valid = np.array([lengths[i] for i in idx], dtype=np.float32)
        out = fn(ids, valid, types)
        out = out.asnumpy() if isinstance(out, mx.nd.NDArray) else np.asarray(out)
        for row, i in enumerate(idx):
            results[i] = out[row]
        if progress is not None:
            progress(len(idx))
    return results


# ---------------------------------------------------------------- cost model


def encoder_flops(config, batch_size, seq_len):
    """Floating-point operations (2 per multiply-add) of one encoder forward pass, embeddings excluded."""
    u, f, L = config.units, config.hidden_size, seq_len
    per_token = 2 * (4 * u * u + 2 * u * f)  # QKV + output projection, FFN
    attention = 2 * 2 * L * u  # scores and weighted values, per token
    return config.num_layers * batch_size * L * (per_token + attention)


# ---------------------------------------------------------------- task prediction


def flatten_instances(instances):
    """(sequences, spans or None, owner instance per sequence) from task instances (K sequences each)."""
    seqs, spans, owner = [], [], []
    for n, inst in enumerate(instances):
        for k, seq in enumerate(inst.seqs):
            seqs.append(seq)
            spans.append(inst.spans[k] if inst.spans is not None else None)
            owner.append(n)
    return seqs, (spans if instances and instances[0].spans is not None else None), owner


def calibration_batches(instances, batch_size, num_sequences, pad_id, max_length):
    """Up to `num_sequences` task sequences as equal-shape (ids, valid_length) batches for INT8 calibration."""
    seqs = flatten_instances(instances)[0][:num_sequences]
    if not seqs:
        raise BortError("inference: no sequences to calibrate INT8 on")
    length = min(max_length, max(8, -(-max(len(s) for s in seqs) // 8) * 8))
    batches = []
    for start in range(0, len(seqs) - batch_size + 1 if len(seqs) >= batch_size else 1, batch_size):
        chunk = seqs[start:start + batch_size]
        chunk = chunk + chunk[:batch_size - len(chunk)] if len(chunk) < batch_size else chunk
        ids = np.full((len(chunk), length), pad_id, dtype=np.float32)
        for row, seq in enumerate(chunk):
            ids[row, :min(len(seq), length)] = seq[:length]
        batches.append((ids, np.array([min(len(s), length) for s in chunk], dtype=np.float32)))
    return batches


def predict_task(head, encoder, instances, pad_id, batch_size=32, max_length=512, progress=None):
    """Raw task scores, one row per instance in order: `encoder` (an InferenceEncoder) + the fine-tuned `head`
    (a `bort.finetune.heads.ClassifierHead`), over length buckets. Multiple-choice instances give one score per option."""
    seqs, spans, owner = flatten_instances(instances)
    lengths = [len(s) for s in seqs]
    rows = [None] * len(seqs)
    with mx.autograd.predict_mode():
        for idx, padded in bucket_order(lengths, batch_size):
            padded = min(padded, max_length)
            ids = np.full((len(idx), padded), pad_id, dtype=np.float32)
            for row, i in enumerate(idx):
                ids[row, :lengths[i]] = seqs[i]
            valid = np.array([lengths[i] for i in idx], dtype=np.float32)
            types = segment_ids(mx.nd.array(ids), mx.nd.array(valid)) if encoder.config.token_type_vocab_size \
                else None  # BERT family: [CLS] A [SEP] B [SEP] has segments, as in fine-tuning
            hidden = encoder(ids, valid, types)
            span_arr = mx.nd.array([spans[i] for i in idx], dtype="int32") if spans is not None else None
            out = head(hidden, span_arr).astype("float32").asnumpy()
            for row, i in enumerate(idx):
                rows[i] = out[row]
            if progress is not None:
                progress(len(idx))
    grouped = [[] for _ in instances]
    for i, row in enumerate(rows):
        grouped[owner[i]].append(row)
    return np.stack([np.concatenate(g) if len(g) > 1 else g[0] for g in grouped]) if instances else np.zeros((0, 1))
