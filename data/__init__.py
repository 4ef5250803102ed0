"""Dataset readers and pretraining shard I/O.

Modules are imported on demand (`from data.pretraining_format import load_shard`); importing `data`
itself loads nothing heavy.
"""
