"""Parameter files: strict checkpoints, gluon-nlp's model store and the original's layout, HF conversion."""
