"""Using a model's masked-LM head: fill '<mask>' tokens in a text, top-k accuracy on masked positions."""
import bort  # noqa: F401
import mxnet as mx
import numpy as np

from bort.errors import BortError
from bort.train.precision import block_dtype
from bort.pretrain.batches import to_nd


MASK_TEXT = "<mask>"


def encode_with_masks(tokenizer, text):
    """Token ids of `text` with every '<mask>' replaced by the mask id, wrapped in <s> ... </s>.

    As in RoBERTa, the space before a mask belongs to the masked word ("The <mask> sat" → 'The', <mask>, 'Ġsat').
    Returns (ids, mask positions)."""
    if MASK_TEXT not in text:
        raise BortError(f"the text has no {MASK_TEXT} token to fill: {text!r}")
    if tokenizer.mask_id is None:
        raise BortError("the vocabulary has no <mask> token")
    pieces = text.split(MASK_TEXT)
    ids = [tokenizer.bos_id] if tokenizer.bos_id is not None else []
    positions = []
    for i, piece in enumerate(pieces):
        if i < len(pieces) - 1:
            piece = piece.rstrip(" ")
        ids.extend(tokenizer.encode(piece) if piece else [])
        if i < len(pieces) - 1:
            positions.append(len(ids))
            ids.append(tokenizer.mask_id)
    if tokenizer.eos_id is not None:
        ids.append(tokenizer.eos_id)
    return ids, positions


def fill_mask(model, tokenizer, text, top_k=5):
    """For each '<mask>' in `text`: the `top_k` (token text, probability) pairs the MLM head predicts."""
    if model.config.vocab_size != tokenizer.vocab_size:
        raise BortError(f"the model's vocabulary size {model.config.vocab_size} differs from the tokenizer's "
                        f"{tokenizer.vocab_size}")
    ids, positions = encode_with_masks(tokenizer, text)
    if len(ids) > model.config.max_length:
        raise BortError(f"the text is {len(ids)} tokens long; the model takes at most {model.config.max_length}")
    ctx = model.collect_params().list_ctx()[0]
    with mx.autograd.pause(train_mode=False):
        _, logits = model(mx.nd.array([ids], ctx=ctx), mx.nd.array([len(ids)], ctx=ctx, dtype=block_dtype(model)),
                          mx.nd.array([positions], ctx=ctx))
    probs = mx.nd.softmax(logits.astype("float32"), axis=-1)[0].asnumpy()
    results = []
    for row in probs:
        top = np.argsort(-row)[:top_k]
        results.append([(tokenizer.decode([int(t)]), float(row[t])) for t in top])
    return results


def topk_accuracy(model, batches, ctx, k=5):
    """Weighted fraction of masked positions whose label is among the model's top-k predictions."""
    hits = total = 0.0
    for arrays in batches:
        inputs, valid_length, positions, _, _ = to_nd(arrays, ctx, block_dtype(model))
        with mx.autograd.pause(train_mode=False):
            _, logits = model(inputs, valid_length, positions)
        top = np.argsort(-logits.astype("float32").asnumpy(), axis=-1)[..., :k]
        weights = arrays["masked_weights"]
        hits += float(((top == arrays["masked_ids"][..., None]).any(-1) * weights).sum())
        total += float(weights.sum())
    return hits / max(total, 1e-8)

