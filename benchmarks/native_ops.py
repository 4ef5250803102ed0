"""Bort's native operators (bort.inference.native_ops) against the MXNet operators they replace, one shape at a time.

    python -m benchmarks.native_ops --threads 2 --output native_ops.json

Pairs timed side by side (alternating calls, median microseconds per call), at Bort's sizes for batch 1 and 8,
length 128:

- add + layer norm: `bort_add_layer_norm(x, r)` against `LayerNorm(x + r)` (elemwise_add + LayerNorm);
- masked softmax: `bort_masked_softmax(scores, valid_length)` against `softmax(broadcast_add(scores, bias))`;
- float32 GEMM input stride: `FullyConnected` with input width 1024 against 1040 (zero-padded, as FastEncoder pads
  fp32 GEMM inputs), in GFLOP/s of the unpadded work.

Runs on MXNet's NaiveEngine like our inference worker. Prints a table and writes JSON.
"""
import argparse
import os
import time



def side_by_side(calls, repeats):
    """{name: median seconds}: every round calls each function once, in turn (order reversed every other round)."""
    for call in calls.values():
        call().wait_to_read()
    times = {name: [] for name in calls}
    names = list(calls)
    for r in range(repeats):
        for name in (names if r % 2 == 0 else names[::-1]):
            start = time.perf_counter()
            calls[name]().wait_to_read()
            times[name].append(time.perf_counter() - start)
    return {name: sorted(ts)[len(ts) // 2] for name, ts in times.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--omp_wait", default="auto", choices=("auto", "active", "passive"))
    parser.add_argument("--output", default="benchmark_native_ops.json")
    args = parser.parse_args(argv)
    from bort.runtime import configure_inference_engine, configure_omp_wait, configure_threads
    threads = configure_threads(args.threads)
    engine = configure_inference_engine("naive")
    omp_wait = configure_omp_wait(args.omp_wait)
    import mxnet as mx
    from bort.inference import native_ops
    from bort.errors import BortError
    from bort.io import write_json

    if not native_ops.load():
        raise BortError("benchmark_native_ops: Bort's native operators did not build or load (see the line above)")
    units, heads, length = 1024, 8, 128
    load_before = os.getloadavg()
    rows = []
    for batch in (1, 8):
        x = mx.nd.random.normal(shape=(length, batch, units))
        r = mx.nd.random.normal(shape=(length, batch, units))
        gamma, beta = mx.nd.random.normal(1, 0.1, shape=(units,)), mx.nd.random.normal(0, 0.1, shape=(units,))
        t = side_by_side({"native": lambda: mx.nd.bort_add_layer_norm(x, r, gamma, beta, eps=1e-5),
                          "mxnet": lambda: mx.nd.LayerNorm(x + r, gamma, beta, axis=-1, eps=1e-5)}, args.repeats)
        rows.append({"op": "add + layer norm", "shape": f"{length}x{batch}x{units}", **t})
        scores = mx.nd.random.normal(0, 4, shape=(batch * heads, length, length))
        valid = mx.nd.full((batch,), length - 5)
        bias = mx.nd.zeros((batch * heads, 1, length))
        t = side_by_side({"native": lambda: mx.nd.bort_masked_softmax(scores, valid, heads=heads),
                          "mxnet": lambda: mx.nd.softmax(mx.nd.broadcast_add(scores, bias), axis=-1)}, args.repeats)
        rows.append({"op": "masked softmax", "shape": f"{batch * heads}x{length}x{length}", **t})
        for out in (3 * units, units):
            data = {k: mx.nd.random.normal(shape=(length * batch, k)) for k in (units, units + 16)}
            weight = {k: mx.nd.random.normal(shape=(out, k)) for k in (units, units + 16)}
            bias_fc = mx.nd.zeros((out,))
            t = side_by_side({"native": lambda: mx.nd.FullyConnected(data[units + 16], weight[units + 16], bias_fc,
                                                                     num_hidden=out),
                              "mxnet": lambda: mx.nd.FullyConnected(data[units], weight[units], bias_fc,
                                                                    num_hidden=out)}, max(20, args.repeats // 10))
            flops = 2 * length * batch * units * out
            rows.append({"op": "fp32 GEMM, input width 1040 (native) vs 1024",
                         "shape": f"{length * batch}x{units}x{out}", **t, "gflops_native": flops / t["native"] / 1e9, "gflops_mxnet": flops / t["mxnet"] / 1e9})
    report = {"threads": threads, "mxnet_engine": engine, "omp_wait": omp_wait, "load_average_before": load_before,
              "load_average_after": os.getloadavg(), "rows": rows}
    print(f"threads={threads} engine={engine} omp_wait={omp_wait} load before="
          f"{tuple(round(v, 2) for v in load_before)} after={tuple(round(v, 2) for v in os.getloadavg())}")
    print(f"{'operator':46s} {'shape':>16s} {'native us':>10s} {'mxnet us':>10s} {'speed-up':>9s}")
    for row in rows:
        print(f"{row['op']:46s} {row['shape']:>16s} {1e6 * row['native']:10.1f} {1e6 * row['mxnet']:10.1f} "
              f"{row['mxnet'] / row['native']:8.2f}x")
    write_json(args.output, report)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    from bort.errors import run_cli

    run_cli(main)()
