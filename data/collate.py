"""Batch collation for pretraining: Instances padded into the arrays of one batch."""
import numpy as np


def batchify(instances, pad_id):
    """Pad a list of Instances into numpy arrays for one batch.

    Returns input_ids (B, L) padded with `pad_id`, segment_ids (B, L), valid_length (B,),
    masked_positions (B, K) padded with 0, masked_ids (B, K) padded with `pad_id`, masked_weights (B, K)
    (1 for real predictions, 0 for padding) and next_sentence_label (B,).
    """
    instances = list(instances)
    if not instances:
        raise ValueError("batchify needs at least one instance")
    batch = len(instances)
    lengths = np.array([len(i.input_ids) for i in instances], dtype=np.int32)
    counts = np.array([len(i.masked_positions) for i in instances], dtype=np.int32)
    max_len, max_k = int(lengths.max()), max(1, int(counts.max()))
    out = {
        "input_ids": np.full((batch, max_len), pad_id, dtype=np.int32),
        "segment_ids": np.zeros((batch, max_len), dtype=np.int32),
        "valid_length": lengths,
        "masked_positions": np.zeros((batch, max_k), dtype=np.int32),
        "masked_ids": np.full((batch, max_k), pad_id, dtype=np.int32),
        "masked_weights": np.zeros((batch, max_k), dtype=np.float32),
        "next_sentence_label": np.array([int(i.next_sentence_label) for i in instances], dtype=np.int32),
    }
    for row, inst in enumerate(instances):
        n, k = lengths[row], counts[row]
        out["input_ids"][row, :n] = inst.input_ids
        out["segment_ids"][row, :n] = inst.segment_ids
        out["masked_positions"][row, :k] = inst.masked_positions
        out["masked_ids"][row, :k] = inst.masked_ids
        out["masked_weights"][row, :k] = 1.0
    return out
