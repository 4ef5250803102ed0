"""Parity of a converted checkpoint: our model and transformers' model from an HF directory on one padded batch.

torch and transformers are test requirements, imported on demand: conversion itself needs neither.
"""
import numpy as np

from bort.errors import BortError


def verify_parity(model, hf_dir, batch_size=3, seq_len=16, seed=0):
    """Run our `model` and transformers' model from `hf_dir` on a padded random batch.

    Returns {"hidden": max abs diff of last hidden states on valid positions, "logits": same for MLM
    logits (when our model has its head), "max_abs_diff": the larger}.
    """
    try:
        import torch  # noqa: PLC0415
        import transformers  # noqa: PLC0415
    except ImportError:
        raise BortError("--verify needs torch and transformers (pip install -r requirements-test.txt)") from None
    import mxnet as mx  # noqa: PLC0415

    config = model.config
    seq_len = min(seq_len, config.max_length)
    rng = np.random.RandomState(seed)
    ids = rng.randint(0, config.vocab_size - 1, size=(batch_size, seq_len))
    ids[ids >= config.pad_id] += 1  # never the pad id inside a sequence
    lengths = np.array([max(1, seq_len - 5 * i) for i in range(batch_size)])
    mask = (np.arange(seq_len)[None, :] < lengths[:, None]).astype(np.int64)
    ids = np.where(mask == 1, ids, config.pad_id)

    with_head = getattr(model, "has_decoder", False)
    auto = transformers.AutoModelForMaskedLM if with_head else transformers.AutoModel
    hf_model = auto.from_pretrained(hf_dir).eval()
    with torch.no_grad():
        out = hf_model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                       token_type_ids=torch.zeros(ids.shape, dtype=torch.long), output_hidden_states=True)
    hf_hidden = out.hidden_states[-1].numpy()
    inputs, valid = mx.nd.array(ids), mx.nd.array(lengths)
    if with_head:
        positions = mx.nd.array(np.tile(np.arange(seq_len), (batch_size, 1)))
        hidden, logits = model(inputs, valid, positions)
        logits = logits.asnumpy()
    else:
        hidden, logits = model(inputs, valid), None
    hidden = hidden.asnumpy()
    keep = mask.astype(bool)
    diffs = {"hidden": float(np.abs(hidden[keep] - hf_hidden[keep]).max())}
    if with_head:
        diffs["logits"] = float(np.abs(logits[keep] - out.logits.numpy()[keep]).max())
    diffs["max_abs_diff"] = max(diffs.values())
    return diffs
