"""SentencePiece models behind the tokenizer interface, and training one for a custom vocabulary."""
import os

from bort.errors import BortError


class SentencePieceTokenizer:
    """A SentencePiece model with the same interface; special ids come from the model (<mask> if it has one)."""

    def __init__(self, model_file):
        import sentencepiece as spm

        model_file = os.fspath(model_file)
        if not os.path.isfile(model_file):
            raise BortError(f"{model_file}: file not found (expected a SentencePiece .model file)")
        self._sp = spm.SentencePieceProcessor()
        try:
            self._sp.Load(model_file)
        except (OSError, RuntimeError):
            raise BortError(f"{model_file}: expected a SentencePiece .model file (could not parse it)") from None
        self.vocab_size = self._sp.get_piece_size()

        def valid(idx):
            return idx if idx is not None and 0 <= idx < self.vocab_size else None

        self.bos_id = valid(self._sp.bos_id())
        self.eos_id = valid(self._sp.eos_id())
        self.pad_id = valid(self._sp.pad_id())
        self.unk_id = valid(self._sp.unk_id())
        self.mask_id = None
        for piece in ("<mask>", "[MASK]"):
            idx = self._sp.piece_to_id(piece)
            if idx != self._sp.unk_id() and self._sp.id_to_piece(idx) == piece:
                self.mask_id = idx
                break
        self._specials = {i for i in (self.bos_id, self.eos_id, self.pad_id, self.unk_id, self.mask_id)
                          if i is not None}

    def encode(self, text):
        return self._sp.encode(text, out_type=int)

    def tokenize(self, text):
        return self._sp.encode(text, out_type=str)

    def decode(self, ids):
        ids = list(ids)
        for i in ids:
            if not (isinstance(i, int) and 0 <= i < self.vocab_size):
                raise BortError(f"token id {i!r} is outside the vocabulary (0..{self.vocab_size - 1})")
        return self._sp.decode(ids)

    def token_to_id(self, token):
        idx = self._sp.piece_to_id(token)
        if idx == self._sp.unk_id() and token != self._sp.id_to_piece(idx):
            raise KeyError(token)
        return idx

    def id_to_token(self, idx):
        if not 0 <= idx < self.vocab_size:
            raise KeyError(idx)
        return self._sp.id_to_piece(idx)

    def is_word_start(self, idx):
        """True for pieces that start with SentencePiece's word boundary '▁', and for special tokens."""
        return idx in self._specials or self._sp.id_to_piece(idx).startswith("\u2581")

    def word_start_table(self):
        return [self.is_word_start(i) for i in range(self.vocab_size)]


def train_sentencepiece(input_files, model_prefix, vocab_size, model_type="unigram", character_coverage=1.0,
                        byte_fallback=True, input_sentence_size=0, num_threads=1):
    """Train a SentencePiece model for a custom vocabulary; returns the path of `<model_prefix>.model`.

    Special ids follow RoBERTa: <s>=0, <pad>=1, </s>=2, <unk>=3, and <mask>=4 as a user symbol. Text is not
    normalised and whitespace runs are kept, and unseen characters fall back to bytes, so decode(encode(x)) == x.
    The .model and .vocab files appear only when training succeeded.
    """
    import sentencepiece as spm

    if isinstance(input_files, (str, os.PathLike)):
        input_files = [input_files]
    input_files = [os.fspath(f) for f in input_files]
    for path in input_files:
        if not os.path.isfile(path):
            raise BortError(f"{path}: file not found (expected training text for SentencePiece)")
    if vocab_size < 8:
        raise BortError(f"vocab_size={vocab_size}: expected at least 8")
    model_prefix = os.fspath(model_prefix)
    out_dir = os.path.dirname(os.path.abspath(model_prefix))
    os.makedirs(out_dir, exist_ok=True)
    import tempfile

    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".spm-") as tmp:
        tmp_prefix = os.path.join(tmp, "model")
        try:
            spm.SentencePieceTrainer.train(
                input=",".join(input_files), model_prefix=tmp_prefix, vocab_size=vocab_size,
                model_type=model_type, character_coverage=character_coverage, byte_fallback=byte_fallback,
                bos_id=0, pad_id=1, eos_id=2, unk_id=3, bos_piece="<s>", pad_piece="<pad>", eos_piece="</s>",
                unk_piece="<unk>", user_defined_symbols=["<mask>"], normalization_rule_name="identity",
                remove_extra_whitespaces=False, hard_vocab_limit=False, input_sentence_size=input_sentence_size,
                num_threads=num_threads, minloglevel=2)
        except RuntimeError as err:
            raise BortError(f"{input_files[0]}: SentencePiece training failed: {' '.join(str(err).split())}") \
                from None
        for ext in (".vocab", ".model"):
            os.replace(tmp_prefix + ext, model_prefix + ext)
    return model_prefix + ".model"
