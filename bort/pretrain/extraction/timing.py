"""CPU wall clock of candidates on this repository's inference engine (bort.inference.modes, fp32 mode).

All candidates (and the maximum point T) are timed by one worker process with the same thread count, input shape
and random weights: `rounds` passes over the whole list, each pass building a candidate, running `warmup` calls
and then `repeats` timed calls; a candidate's time is the median of its rounds × repeats calls. Interleaving the
passes spreads a shared machine's load changes over every candidate instead of a few.

    python -m bort.pretrain.extraction.timing --request request.json --output timing.json  (the runner does this)
"""
import argparse
import json
import os
import subprocess
import sys
import time

import bort  # noqa: F401  (before mxnet)
from bort.errors import BortError, run_cli
from bort.io import read_json, write_json


def time_candidates(configs, batch_size, seq_len, repeats=10, warmup=2, rounds=3, progress=None):
    """{name: {'median_ms', 'times_ms'}} for {name: ModelConfig}; random weights, fp32 inference mode."""
    import mxnet as mx  # noqa: PLC0415
    import numpy as np  # noqa: PLC0415

    from bort.inference.modes import prepare  # noqa: PLC0415
    from bort.model import build_model  # noqa: PLC0415
    from bort.weights.checkpoint import finish_deferred_init  # noqa: PLC0415

    times = {name: [] for name in configs}
    for _ in range(rounds):
        for name, config in configs.items():
            mx.random.seed(0)
            model = finish_deferred_init(build_model(config, use_decoder=False))
            ids = mx.nd.array(np.full((batch_size, seq_len), 3), dtype="float32")
            valid = mx.nd.full((batch_size,), seq_len, dtype="float32")
            encoder = prepare(model, "fp32", example=(ids, valid))
            for _ in range(warmup):
                encoder(ids, valid).wait_to_read()
            for _ in range(repeats):
                start = time.perf_counter()
                encoder(ids, valid).wait_to_read()
                times[name].append(1000 * (time.perf_counter() - start))
            del encoder, model
            if progress:
                progress(name)
    return {name: {"median_ms": float(np.median(t)), "times_ms": [round(x, 4) for x in t]}
            for name, t in times.items()}


def run_worker(request_path, output_path, threads):
    """Run the timing worker in a fresh process with `threads` OpenMP threads; returns its result dict."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MXNET_CPU_WORKER_NTHREADS="1")
    env.pop("BORT_THREADS_DEFAULTED", None)
    for key in ("HOROVOD_RANK", "HOROVOD_LOCAL_SIZE", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_LOCAL_SIZE", "PMI_RANK"):
        env.pop(key, None)  # the worker is one process of its own, not a Horovod rank
    cmd = [sys.executable, "-m", "bort.pretrain.extraction.timing", "--request", request_path, "--output", output_path]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise BortError(f"timing worker failed ({' '.join(cmd)}):\n{proc.stderr[-2000:]}")
    return read_json(output_path, "timing results")


def main(argv=None):
    parser = argparse.ArgumentParser(description="Time candidate encoders on CPU (called by the extraction runner).")
    parser.add_argument("--request", required=True, help="JSON: configs {name: ModelConfig dict}, batch_size, "
                                                         "seq_len, repeats, warmup, rounds")
    parser.add_argument("--output", required=True)
    args = parser.parse_args(argv)
    from bort.model import ModelConfig  # noqa: PLC0415

    request = read_json(args.request, "a timing request")
    configs = {name: ModelConfig.from_dict(values, source=args.request) for name, values in request["configs"].items()}
    result = time_candidates(configs, request["batch_size"], request["seq_len"], request["repeats"],
                             request["warmup"], request["rounds"])
    write_json(args.output, {"threads": int(os.environ.get("OMP_NUM_THREADS", "0")), "candidates": result,
                             "request": {k: v for k, v in request.items() if k != "configs"}})
    print(json.dumps({"timed": len(result)}))


if __name__ == "__main__":
    run_cli(main)()
