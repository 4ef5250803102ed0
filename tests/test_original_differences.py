"""What docs/differences.md says about the original Bort code, shown with gluon-nlp 0.10 itself."""
import json

import pytest

from bort.text.tokenizer import load_tokenizer
from helpers import MERGES, VOCAB_JSON


def _gluonnlp_roberta_vocab(nlp, cls):
    """The test vocabulary as a gluon-nlp RoBERTa vocabulary (the JSON layout of gluon-nlp's cached .vocab)."""
    with open(VOCAB_JSON, encoding="utf-8") as handle:
        token_to_id = json.load(handle)
    obj = {"idx_to_token": sorted(token_to_id, key=token_to_id.get), "token_to_idx": token_to_id,
           "reserved_tokens": ["<s>", "<pad>", "</s>", "<mask>"], "unknown_token": "<unk>",
           "identifiers_to_tokens": {"bos_token": "<s>", "eos_token": "</s>", "padding_token": "<pad>",
                                     "mask_token": "<mask>"}}
    return cls.from_json(json.dumps(obj))


@pytest.mark.parametrize("vocab_class", ["Vocab", "BERTVocab"])
def test_original_data_script_turned_every_token_into_unk(vocab_class):
    """The original's tokenize_lines_fn: `vocab[[vocab.bos_token] + vocab[tokenizer(line)] + [vocab.eos_token]]`.
    The inner lookup already gives ids; the outer one looks the ids up as tokens, finds none, and maps each to
    <unk>. Every sentence became <s> <unk> ... <unk> </s>."""
    nlp = pytest.importorskip("gluonnlp")
    vocab = _gluonnlp_roberta_vocab(nlp, getattr(nlp.vocab, vocab_class))
    tokenizer = load_tokenizer(vocab_json=VOCAB_JSON, merges=MERGES)
    line = "The fish are sold at the market near the harbor."
    pieces = tokenizer.tokenize(line)  # gluon-nlp's GPT2BPETokenizer gives the same pieces (tests/test_tokenizer.py)
    original = vocab[[vocab.bos_token] + vocab[pieces] + [vocab.eos_token]]  # verbatim from the original
    unk = vocab[vocab.unknown_token]
    assert original[0] == vocab[vocab.bos_token] and original[-1] == vocab[vocab.eos_token]
    assert len(original) == len(pieces) + 2 and set(original[1:-1]) == {unk}
    # Looked up once, as this repository does, the ids are the real ones and none is <unk>.
    assert vocab[pieces] == tokenizer.encode(line) and unk not in vocab[pieces]
