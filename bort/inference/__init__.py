"""Fast CPU inference: precision modes, the inference-only encoder, Bort's native operators."""
