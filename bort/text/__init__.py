"""Text to token ids: vocabulary files, byte-level BPE, SentencePiece, BPE training, sequence encoding."""
