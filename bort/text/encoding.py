"""Token sequences for fine-tuning, as the original Bort encodes them: `<s> A </s>` for one text and
`<s> A </s> B </s>` for a pair (one separator, as its `concat_sequences`), both texts truncated to equal shares of
`max_len` (its `truncate_seqs_equal`), with character spans mapped to token positions (WiC, WSC)."""


def truncate_equal(lengths, budget):
    """Lengths after truncating sequences to equal shares of `budget` (short ones kept whole), as the original."""
    lengths = list(lengths)
    if sum(lengths) <= budget:
        return lengths
    result, remaining = list(lengths), list(range(len(lengths)))
    while remaining:
        share, extra = divmod(budget, len(remaining))
        shortest = min(remaining, key=lambda i: lengths[i])
        if lengths[shortest] <= share:
            remaining.remove(shortest)
            budget -= lengths[shortest]
            continue
        for rank, i in enumerate(remaining):
            result[i] = share + 1 if rank < extra else share
        break
    return result


class SequenceEncoder:
    """Text (pair) -> token ids with <s> ... </s> [B </s>], spans given as (text number, char start, char end)."""

    def __init__(self, tokenizer, max_len):
        self.tokenizer = tokenizer
        self.max_len = max_len

    def tokenize(self, text, char_spans=()):
        """ids and the token [start, end) of each character span; the text is split at the span boundaries
        (whitespace before a span stays with it, as the byte-level BPE attaches it to the next word)."""
        cuts = set()
        for start, end in char_spans:
            while start > 0 and text[start - 1].isspace():
                start -= 1
            cuts.update((start, end))
        cuts = sorted(c for c in cuts if 0 < c < len(text))
        ids, offsets, previous = [], {0: 0}, 0
        for cut in cuts + [len(text)]:
            ids += self.tokenizer.encode(text[previous:cut]) if cut > previous else []
            offsets[cut] = len(ids)
            previous = cut
        token_spans = []
        for start, end in char_spans:
            while start > 0 and text[start - 1].isspace():
                start -= 1
            token_spans.append((offsets.get(start, 0), offsets.get(end, len(ids))))
        return ids, token_spans

    def __call__(self, text_a, text_b=None, spans=()):
        parts = [text_a] + ([text_b] if text_b is not None else [])
        tokenized = [self.tokenize(text, [(s, e) for which, s, e in spans if which == j])
                     for j, text in enumerate(parts)]
        budget = self.max_len - (3 if text_b is not None else 2)
        keep = truncate_equal([len(ids) for ids, _ in tokenized], budget)
        tok = self.tokenizer
        ids, offsets = [tok.bos_id], []
        for (part, _), n in zip(tokenized, keep):
            offsets.append(len(ids))
            ids += part[:n] + [tok.eos_id]
        token_spans, counters = [], [0] * len(parts)
        for which, _, _ in spans:
            start, end = tokenized[which][1][counters[which]]
            counters[which] += 1
            limit = keep[which]
            start, end = min(start, limit), min(end, limit)
            if end <= start:  # truncated away or empty: fall back to the first token
                start, end = -offsets[which], 1 - offsets[which]
            token_spans.append((offsets[which] + start, offsets[which] + end))
        return ids, token_spans
