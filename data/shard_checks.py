"""Checks of a loaded pretraining shard (`data.pretraining_format.load_shard` runs them): a consistent layout,
ids inside the vocabulary, instances within max_seq_length. Each failure is a one-line BortError naming the file."""
import numpy as np

from bort.errors import BortError


def check(path, condition, what):
    if not condition:
        raise BortError(f"{path}: {what}")


def validate_metadata(path, metadata):
    """vocab_size positive and the special ids inside it: a `pad_id` or `mask_id` outside the vocabulary would
    pad or mask with an id the embedding clips to another row."""
    vocab_size = metadata.get("vocab_size")
    if vocab_size is None:
        return
    check(path, vocab_size > 0, f"vocab_size: expected a positive integer, found {vocab_size}")
    for name in ("pad_id", "mask_id", "bos_id", "eos_id"):
        value = metadata.get(name)
        check(path, value is None or 0 <= value < vocab_size,
              f"{name} {value} is outside the vocabulary (0..{vocab_size - 1})")


def validate_ranges(path, batch, metadata):
    """Token ids and labels inside the shard's vocabulary, lengths within its max_seq_length: MXNet's Embedding
    clips out-of-range ids, so a bad id would otherwise train silently on the wrong row."""
    vocab_size, max_len = metadata.get("vocab_size"), metadata.get("max_seq_length")
    validate_metadata(path, metadata)
    if vocab_size is not None:
        for name, ids in (("input_ids", batch.input_ids), ("masked_lm_ids", batch.masked_ids)):
            bad = np.flatnonzero((ids < 0) | (ids >= vocab_size))
            check(path, not len(bad), f"{name}: id {ids[bad[0]] if len(bad) else 0} at index "
                                      f"{bad[0] if len(bad) else 0} is outside the vocabulary (0..{vocab_size - 1})")
    check(path, not len(batch.segment_ids) or batch.segment_ids.min() >= 0, "segment_ids: expected ids >= 0")
    labels = batch.next_sentence_labels
    check(path, np.all((labels == 0) | (labels == 1)), "next_sentence_labels: expected 0 or 1")
    if max_len is not None and len(batch):
        longest = int(np.diff(batch.input_offsets).max())
        check(path, longest <= max_len, f"an instance of {longest} tokens is longer than the shard's "
                                        f"max_seq_length {max_len}")


def validate_layout(path, batch):
    n = len(batch)
    for name, offsets, flat in (("input_offsets", batch.input_offsets, batch.input_ids),
                                ("masked_offsets", batch.masked_offsets, batch.masked_positions)):
        check(path, offsets.ndim == 1 and len(offsets) == n + 1,
              f"{name}: expected {n + 1} offsets (one more than next_sentence_labels), found shape {offsets.shape}")
        check(path, offsets[0] == 0 and offsets[-1] == len(flat) and np.all(np.diff(offsets) >= 0),
              f"{name}: expected non-decreasing offsets from 0 to {len(flat)}")
    check(path, batch.segment_ids.shape == batch.input_ids.shape,
          f"segment_ids: expected shape {batch.input_ids.shape} like input_ids, found {batch.segment_ids.shape}")
    check(path, batch.masked_ids.shape == batch.masked_positions.shape,
          f"masked_lm_ids: expected shape {batch.masked_positions.shape} like masked_lm_positions, "
          f"found {batch.masked_ids.shape}")
    lengths = np.diff(batch.input_offsets)
    per_position = np.repeat(lengths, np.diff(batch.masked_offsets))
    check(path, np.all((batch.masked_positions >= 0) & (batch.masked_positions < per_position)),
          "masked_lm_positions: expected positions inside their instance")
