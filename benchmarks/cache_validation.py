"""What checking every array of a teacher cache costs when it is opened (bort.pretrain.teacher_cache.read_cache).

    python -m benchmarks.cache_validation --positions 400000 --k 16 --output cache_validation.json

Writes one synthetic cache of `--positions` masked positions (the size of a large shard's cache: 400 000 positions
at k = 16 is 40 MB), then times, median of `--repeats`: loading its arrays from the file, and the value checks
(ids in the vocabulary, finite values, log-normalizer >= the top-k log-sum-exp, rest mass in [0, 1]).
Prints a table and writes JSON.
"""
import argparse
import os
import tempfile
import time

import numpy as np

import bort  # noqa: F401
from bort.io import write_json
from bort.pretrain.cache_validation import check_values
from bort.pretrain.teacher_cache import ARRAYS, id_dtype, read_cache, write_cache


def synthetic_cache(path, positions, k, vocab_size, temperature, seed=0):
    """A cache whose rows look like a teacher's: sorted logits, a normalizer above their log-sum-exp."""
    rng = np.random.RandomState(seed)
    logits = -np.sort(-rng.randn(positions, k).astype(np.float32) * 3, axis=1)
    scaled = logits / temperature
    top = np.log(np.exp(scaled).sum(axis=1))
    rest = rng.uniform(0.05, 0.5, positions).astype(np.float32)
    log_norm = (top - np.log1p(-rest)).astype(np.float32)
    ids = rng.randint(0, vocab_size, (positions, k)).astype(id_dtype(vocab_size))
    meta = {"k": k, "temperature": temperature, "vocab_size": vocab_size, "num_positions": positions,
            "num_instances": positions // 20, "shard": "part-000.npz", "shard_sha256": "0" * 64}
    write_cache(path, meta, ids, logits, log_norm, rest)


def median_seconds(call, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--positions", type=int, default=400000)
    parser.add_argument("--k", type=int, default=16)
    parser.add_argument("--vocab_size", type=int, default=50265)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--output", default="cache_validation.json")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as work:
        path = os.path.join(work, "part-000.npz.topk")
        synthetic_cache(path, args.positions, args.k, args.vocab_size, 2.0)
        size = os.path.getsize(path)
        meta, arrays = read_cache(path)

        def load():
            with np.load(path, allow_pickle=False) as npz:
                return {name: npz[name] for name in ARRAYS}

        load_s = median_seconds(load, args.repeats)
        check_s = median_seconds(lambda: check_values(path, arrays, meta["vocab_size"], meta["temperature"]),
                                 args.repeats)
        open_s = median_seconds(lambda: read_cache(path), args.repeats)
    report = {"positions": args.positions, "k": args.k, "vocab_size": args.vocab_size, "bytes": size,
              "load_arrays_s": load_s, "check_values_s": check_s, "read_cache_s": open_s,
              "check_share_of_open": check_s / open_s, "threads": os.environ.get("OMP_NUM_THREADS")}
    print(f"{'positions':>10} {'k':>3} {'MB':>6} {'load arrays s':>14} {'check values s':>15} {'read_cache s':>13}")
    print(f"{args.positions:>10} {args.k:>3} {size / 1e6:>6.1f} {load_s:>14.3f} {check_s:>15.3f} {open_s:>13.3f}")
    write_json(args.output, report)


if __name__ == "__main__":
    main()
