"""Masked-LM instances from tokenized documents (the behaviour of gluon-nlp/Bort's create_pretraining_data).

A chunk of documents is held as one flat token array: every sentence is `<s> tokens </s>`, sentence `s` spans
`flat[starts[s]:starts[s + 1]]`, and document `d` is the sentence range `documents[d] = (first, end)`.

Per document (as in the original): a target length (`max_seq_length`, or with `short_seq_prob` a random
shorter one); sentences are gathered until the target is reached; a random split point makes segment A and
segment B; with probability 1/2 (always for a single-sentence chunk) B is taken from another document of the
same chunk instead (`next_sentence_label` 1) and the unused sentences are put back. The pair is truncated to
`max_seq_length`, randomly from the front or back of the longer segment, keeping the instance's first `<s>`
and last `</s>`. Because each sentence carries its own `<s> … </s>`, no extra CLS/SEP tokens are added:
an instance always starts with `<s>` and ends with `</s>`.

Masking: `round(len * masked_lm_prob)` positions (at least 1, at most `max_predictions_per_seq`) among the
non-special tokens, in random order, whole words at a time with `whole_word_mask`; 80 % become `<mask>`,
10 % a random non-special token, 10 % stay. Labels are the original ids at the (sorted) positions.
"""
import dataclasses

import numpy as np

from bort.errors import BortError
from data.pretraining_format import InstanceBatch


@dataclasses.dataclass(frozen=True)
class InstanceOptions:
    """The original script's instance and masking flags, with its defaults."""

    max_seq_length: int = 512
    max_predictions_per_seq: int = 80
    masked_lm_prob: float = 0.15
    short_seq_prob: float = 0.1
    dupe_factor: int = 1
    whole_word_mask: bool = False
    random_seed: int = 12345

    def validate(self):
        def bad(flag, value, expected):
            raise BortError(f"--{flag} {value}: expected {expected}")

        if not isinstance(self.max_seq_length, int) or self.max_seq_length < 4:
            bad("max_seq_length", self.max_seq_length, "an integer >= 4 (room for <s> x </s>)")
        if not isinstance(self.max_predictions_per_seq, int) or self.max_predictions_per_seq < 1:
            bad("max_predictions_per_seq", self.max_predictions_per_seq, "an integer >= 1")
        if not 0.0 < self.masked_lm_prob <= 1.0:
            bad("masked_lm_prob", self.masked_lm_prob, "a probability in (0, 1]")
        if not 0.0 <= self.short_seq_prob <= 1.0:
            bad("short_seq_prob", self.short_seq_prob, "a probability in [0, 1]")
        if not isinstance(self.dupe_factor, int) or self.dupe_factor < 1:
            bad("dupe_factor", self.dupe_factor, "an integer >= 1")
        if not isinstance(self.random_seed, int) or self.random_seed < 0:
            bad("random_seed", self.random_seed, "a non-negative integer")
        return self


class MaskingVocab:
    """What masking needs to know about a vocabulary, as lookup tables indexed by token id."""

    def __init__(self, vocab_size, bos_id, eos_id, mask_id, special_ids, word_start=None, pad_id=None):
        self.vocab_size = int(vocab_size)
        self.bos_id, self.eos_id, self.mask_id, self.pad_id = bos_id, eos_id, mask_id, pad_id
        self.special = np.zeros(self.vocab_size, dtype=bool)
        self.special[[i for i in special_ids if i is not None]] = True
        self.replacements = np.flatnonzero(~self.special).astype(np.int32)
        self.word_start = None if word_start is None else np.asarray(word_start, dtype=bool)

    @classmethod
    def from_tokenizer(cls, tokenizer, whole_word_mask=False):
        names = {"bos_id": "<s>", "eos_id": "</s>", "mask_id": "<mask>"}
        for attr, token in names.items():
            if getattr(tokenizer, attr, None) is None:
                raise BortError(f"the vocabulary has no {token} token, which masked-LM instances need "
                                "(use a RoBERTa-style vocabulary)")
        ids = [tokenizer.bos_id, tokenizer.eos_id, tokenizer.mask_id, tokenizer.pad_id, tokenizer.unk_id]
        word_start = tokenizer.word_start_table() if whole_word_mask else None
        return cls(tokenizer.vocab_size, tokenizer.bos_id, tokenizer.eos_id, tokenizer.mask_id, ids, word_start,
                   pad_id=tokenizer.pad_id)


def document_spans(doc_index, documents, starts, rng, max_num_tokens, short_seq_prob):
    """Token spans ((a_lo, a_hi), (b_lo, b_hi), next_sentence_label) for one document (before truncation)."""
    first, end = documents[doc_index]
    target = max_num_tokens
    if rng.random() < short_seq_prob:
        target = int(rng.integers(2, max_num_tokens + 1))
    spans = []
    chunk_start, length, i = first, 0, first
    while i < end:
        length += starts[i + 1] - starts[i]
        if i == end - 1 or length >= target:
            count = i + 1 - chunk_start
            a_end = chunk_start + (1 if count < 2 else int(rng.integers(1, count)))
            span_a = (starts[chunk_start], starts[a_end])
            if len(documents) > 1 and (count == 1 or rng.random() < 0.5):
                target_b = target - (span_a[1] - span_a[0])
                other = int(rng.integers(0, len(documents) - 1))
                if other >= doc_index:
                    other += 1
                o_first, o_end = documents[other]
                b_first = o_first + int(rng.integers(0, o_end - o_first))
                j, b_length = b_first, 0
                while j < o_end:
                    b_length += starts[j + 1] - starts[j]
                    j += 1
                    if b_length >= target_b:
                        break
                spans.append((span_a, (starts[b_first], starts[j]), 1))
                chunk_start = a_end  # the sentences B did not use go back into the pool
            else:
                spans.append((span_a, (starts[a_end], starts[i + 1]), 0))
                chunk_start = i + 1
            i, length = chunk_start, 0
            continue
        i += 1
    return spans


def assemble(flat, span_a, span_b, rng, max_seq_length):
    """Tokens and segment ids of a pair, truncated to max_seq_length keeping the first and last token."""
    (a_lo, a_hi), (b_lo, b_hi) = span_a, span_b
    first = flat[a_lo]
    if b_hi > b_lo:
        last = flat[b_hi - 1]
        a_lo, b_hi = a_lo + 1, b_hi - 1
    else:
        last = flat[a_hi - 1]
        a_lo, a_hi = a_lo + 1, a_hi - 1
    excess = (a_hi - a_lo) + (b_hi - b_lo) - (max_seq_length - 2)
    if excess > 0:
        for draw in rng.random(excess).tolist():
            if a_hi - a_lo > b_hi - b_lo:
                if draw < 0.5:
                    a_lo += 1
                else:
                    a_hi -= 1
            elif draw < 0.5:
                b_lo += 1
            else:
                b_hi -= 1
    len_a, len_b = a_hi - a_lo, b_hi - b_lo
    tokens = np.empty(len_a + len_b + 2, dtype=np.int32)
    tokens[0] = first
    tokens[1:1 + len_a] = flat[a_lo:a_hi]
    tokens[1 + len_a:1 + len_a + len_b] = flat[b_lo:b_hi]
    tokens[-1] = last
    segments = np.zeros(len(tokens), dtype=np.int32)
    if span_b[1] > span_b[0]:
        segments[1 + len_a:] = 1
    return tokens, segments


def mask_tokens(tokens, rng, options, vocab):
    """(masked tokens, sorted positions, original ids at those positions)."""
    candidates = np.flatnonzero(~vocab.special[tokens])
    num_to_predict = min(options.max_predictions_per_seq,
                         max(1, int(round(len(tokens) * options.masked_lm_prob))))
    if not len(candidates):
        return tokens, np.zeros(0, np.int32), np.zeros(0, np.int32)
    if options.whole_word_mask:
        new_word = vocab.word_start[tokens[candidates]].copy()
        new_word[0] = True
        new_word[1:] |= np.diff(candidates) != 1  # a special token between two pieces ends the word
        word_starts = np.flatnonzero(new_word)
        sizes = np.diff(np.append(word_starts, len(candidates))).tolist()
        word_starts = word_starts.tolist()
        chosen, count = [], 0
        for word in rng.permutation(len(word_starts)).tolist():
            if count >= num_to_predict:
                break
            if count + sizes[word] > num_to_predict:
                continue
            chosen.extend(range(word_starts[word], word_starts[word] + sizes[word]))
            count += sizes[word]
        positions = np.sort(candidates[chosen])
    else:
        positions = np.sort(candidates[rng.permutation(len(candidates))[:num_to_predict]])
    labels = tokens[positions]
    masked = tokens.copy()
    draw = rng.random(len(positions))
    keep = rng.random(len(positions)) < 0.5
    to_mask = draw < 0.8
    masked[positions[to_mask]] = vocab.mask_id
    to_random = ~to_mask & ~keep
    num_random = int(np.count_nonzero(to_random))
    if num_random:
        masked[positions[to_random]] = vocab.replacements[rng.integers(0, len(vocab.replacements), num_random)]
    return masked, positions.astype(np.int32), labels


def mask_flat(flat, offsets, rng, options, vocab):
    """Mask many instances at once (the same rule as `mask_tokens` without whole words, vectorised).

    Each instance's positions are the `num_to_predict` candidates with the smallest random keys, i.e. a
    uniformly random subset. Returns (masked flat tokens, positions, labels, masked offsets).
    """
    count = len(offsets) - 1
    lengths = np.diff(offsets)
    owner = np.repeat(np.arange(count), lengths)
    candidate = ~vocab.special[flat]
    num = np.minimum(options.max_predictions_per_seq,
                     np.maximum(1, np.round(lengths * options.masked_lm_prob).astype(np.int64)))
    num = np.minimum(num, np.bincount(owner[candidate], minlength=count))
    keys = rng.random(len(flat))
    keys[~candidate] = 2.0
    order = np.argsort(owner * 4.0 + keys)  # by instance, then by key (keys < 4)
    rank = np.arange(len(flat)) - offsets[owner[order]]
    chosen = np.sort(order[rank < num[owner[order]]])
    chosen_owner = owner[chosen]
    labels = flat[chosen]
    masked = flat.copy()
    draws = rng.random((2, len(chosen)))
    to_mask = draws[0] < 0.8
    to_random = ~to_mask & (draws[1] >= 0.5)
    masked[chosen[to_mask]] = vocab.mask_id
    num_random = int(np.count_nonzero(to_random))
    if num_random:
        masked[chosen[to_random]] = vocab.replacements[rng.integers(0, len(vocab.replacements), num_random)]
    masked_offsets = np.zeros(count + 1, dtype=np.int64)
    np.cumsum(np.bincount(chosen_owner, minlength=count), out=masked_offsets[1:])
    positions = (chosen - offsets[chosen_owner]).astype(np.int32)
    return masked, positions, labels.astype(np.int32), masked_offsets


def _offsets(arrays):
    out = np.zeros(len(arrays) + 1, dtype=np.int64)
    np.cumsum([len(a) for a in arrays], out=out[1:])
    return out


def _concat(arrays):
    return np.concatenate(arrays).astype(np.int32, copy=False) if arrays else np.zeros(0, np.int32)


def chunk_instances(flat, starts, documents, rng, options, vocab):
    """All instances of a chunk (`dupe_factor` passes over its documents) as an InstanceBatch."""
    tokens, segments, labels_nsp = [], [], []
    for _ in range(options.dupe_factor):
        for doc_index in range(len(documents)):
            spans = document_spans(doc_index, documents, starts, rng, options.max_seq_length,
                                   options.short_seq_prob)
            for span_a, span_b, label in spans:
                ids, segment_ids = assemble(flat, span_a, span_b, rng, options.max_seq_length)
                tokens.append(ids)
                segments.append(segment_ids)
                labels_nsp.append(label)
    offsets = _offsets(tokens)
    if options.whole_word_mask:
        rows = [mask_tokens(ids, rng, options, vocab) for ids in tokens]
        masked = _concat([r[0] for r in rows])
        positions, labels = _concat([r[1] for r in rows]), _concat([r[2] for r in rows])
        masked_offsets = _offsets([r[1] for r in rows])
    else:
        masked, positions, labels, masked_offsets = mask_flat(_concat(tokens), offsets, rng, options, vocab)
    return InstanceBatch(masked, _concat(segments), offsets, positions, labels, masked_offsets,
                         np.array(labels_nsp, dtype=np.int32))
