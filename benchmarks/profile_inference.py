"""Per-operator profile of our CPU inference modes (MXNet's profiler), with and without Bort's native operators.

    python -m benchmarks.profile_inference --modes int8 fp32 --batch_sizes 1 8 --seq_len 128 --output profile.json

For each mode, batch size and operator set (`--native_ops on off`: Bort's fused add + layer norm, or MXNet's
elemwise_add + LayerNorm) it times `--calls` forward passes without the profiler (median ms per call), then
profiles as many more with `MXNET_EXEC_BULK_EXEC_INFERENCE=0` (one profiler entry per operator instead of bulked
segments), reads the Chrome trace, and prints each operator group's share of the summed operator time. Bort's shape,
random weights, every sequence full length, our inference settings (NaiveEngine; `--omp_wait` as in
benchmarks/inference.py). Shares, not absolute profiler times, are what to compare: the profiler adds its
own cost per operator.
"""
import argparse
import os
import re
import shutil
import sys
import tempfile
import time


# (group, operator-name test), first match wins; the rest is "embeddings, masks, reshapes"
GROUPS = (
    ("fully connected", lambda op: "fully_connected" in op or op == "FullyConnected"),
    ("add + layer norm (Bort's fused op)", lambda op: op == "bort_add_layer_norm"),
    ("LayerNorm", lambda op: op == "LayerNorm"),
    ("residual and bias adds", lambda op: op in ("elemwise_add", "broadcast_add", "_plus", "_Plus")),
    ("attention (QK, value) + softmax", lambda op: "selfatt" in op or "softmax" in op),
    ("quantize / dequantize", lambda op: "quantize" in op),
    ("GELU (fp32 only)", lambda op: op in ("LeakyReLU", "Activation")),
)
OTHER = "embeddings, masks, reshapes, arange_like"
NOT_OPERATORS = ("DeleteVariable", "WaitForVar", "CopyCPU2CPU")
EVENT = re.compile(r'"name":\s*"([^"]+)",\s*"cat":\s*"operator",\s*"ph":\s*"([BE])",\s*"ts":\s*(\d+)')


def group_of(op):
    return next((name for name, test in GROUPS if test(op)), OTHER)


def operator_times(trace_text):
    """{operator: (total ms, count)} from MXNet's Chrome trace. The profiler records most operators twice, as two
    nested begin/end pairs (Bort's masked softmax once), so the time per operator name is the union of its
    intervals: nested or touching records of one name count once."""
    events = sorted((int(ts), ph == "E", name) for name, ph, ts in EVENT.findall(trace_text))
    depth, start, totals = {}, {}, {}
    for ts, is_end, name in events:
        if not is_end:
            if depth.get(name, 0) == 0:
                start[name] = ts
            depth[name] = depth.get(name, 0) + 1
        elif depth.get(name, 0) > 0:
            depth[name] -= 1
            if depth[name] == 0:
                ms, count = totals.get(name, (0.0, 0))
                totals[name] = (ms + (ts - start[name]) / 1e3, count + 1)
    return totals


def profile(encoder, ids, valid, calls, trace_path):
    import mxnet as mx

    encoder(ids, valid).wait_to_read()
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        encoder(ids, valid).wait_to_read()
        times.append(time.perf_counter() - start)
    mx.profiler.set_config(profile_symbolic=True, profile_imperative=True, profile_memory=False, profile_api=False,
                           filename=trace_path)
    mx.profiler.set_state("run")
    for _ in range(calls):
        encoder(ids, valid).wait_to_read()
    mx.profiler.set_state("stop")
    mx.profiler.dump(finished=False)
    with open(trace_path) as handle:
        stats = operator_times(handle.read())

    ops = {op: ms for op, (ms, _) in stats.items() if op not in NOT_OPERATORS}
    total = sum(ops.values()) or 1.0
    groups = {}
    for op, ms in ops.items():
        groups[group_of(op)] = groups.get(group_of(op), 0.0) + ms / total
    return {"median_ms": 1e3 * sorted(times)[len(times) // 2], "min_ms": 1e3 * min(times),
            "profiled_operator_ms_per_call": total / calls, "group_share": groups,
            "operator_share": {op: ms / total for op, ms in ops.items()},
            "operators_per_call": {op: count / calls for op, (_, count) in stats.items() if op not in NOT_OPERATORS}}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="bort_4_8_768_1024")
    parser.add_argument("--modes", nargs="+", default=["int8", "fp32"], choices=["fp32", "fused", "bf16", "int8"])
    parser.add_argument("--batch_sizes", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--seq_len", type=int, default=128)
    parser.add_argument("--native_ops", nargs="+", default=["on", "off"], choices=["on", "off"])
    parser.add_argument("--calls", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--omp_wait", default="auto", choices=("auto", "active", "passive"))
    parser.add_argument("--output", default="profile_inference.json")
    args = parser.parse_args(argv)

    os.environ["MXNET_EXEC_BULK_EXEC_INFERENCE"] = "0"
    from bort.runtime import configure_inference_engine, configure_omp_wait, configure_threads
    threads = configure_threads(args.threads)
    engine = configure_inference_engine("naive")
    omp_wait = configure_omp_wait(args.omp_wait)
    import numpy as np

    import mxnet as mx
    from bort.inference.modes import prepare
    from bort.io import write_json
    from bort.model import build_model, get_config

    config = get_config(args.model, dropout=0.0)
    mx.random.seed(0)
    rng = np.random.RandomState(0)
    model = build_model(config, use_decoder=False)
    calib = [(rng.randint(5, config.vocab_size, size=(8, args.seq_len)).astype(np.float32),
              np.full((8,), args.seq_len, np.float32)) for _ in range(4)]
    load_before = os.getloadavg()
    rows = []
    tmp = tempfile.mkdtemp(prefix="bort_profile_")
    for mode in args.modes:
        for native in args.native_ops:
            encoder = prepare(model, mode, calib_batches=calib, native_ops=None if native == "on" else False)
            if native == "on" and not encoder.native_ops:
                print(f"{mode}: Bort's native operators did not load; skipping native_ops=on", file=sys.stderr)
                continue
            for batch in args.batch_sizes:
                ids = rng.randint(5, config.vocab_size, size=(batch, args.seq_len)).astype(np.float32)
                valid = np.full((batch,), args.seq_len, np.float32)
                trace = os.path.join(tmp, f"{mode}_{native}_{batch}.json")
                rows.append(dict(mode=mode, native_ops=native, batch=batch, seq=args.seq_len,
                                 **profile(encoder, ids, valid, args.calls, trace)))
                print(f"{mode:5s} native={native:3s} b{batch:<3d} {rows[-1]['median_ms']:8.2f} ms/call",
                      file=sys.stderr)
    shutil.rmtree(tmp, ignore_errors=True)  # the profiler may reopen a trace file after it was read
    report = {"model": args.model, "threads": threads, "mxnet_engine": engine, "omp_wait": omp_wait,
              "load_average_before": load_before, "load_average_after": os.getloadavg(), "calls": args.calls,
              "rows": rows}
    print_table(report)
    write_json(args.output, report)
    print(f"\nwrote {args.output}")


def print_table(report):
    rows = report["rows"]
    print(f"{report['model']} threads={report['threads']} engine={report['mxnet_engine']} "
          f"omp_wait={report['omp_wait']} load before={tuple(round(x, 2) for x in report['load_average_before'])} "
          f"after={tuple(round(x, 2) for x in report['load_average_after'])}")
    heads = [f"{r['mode']} b{r['batch']} {r['native_ops']}" for r in rows]
    print(f"{'share of operator time':42s}" + "".join(f"{h:>16s}" for h in heads))
    for name in [g for g, _ in GROUPS] + [OTHER]:
        if any(name in r["group_share"] for r in rows):
            print(f"{name:42s}" + "".join(f"{100 * r['group_share'].get(name, 0):15.1f}%" for r in rows))
    print(f"{'ms per call (no profiler, median)':42s}" + "".join(f"{r['median_ms']:16.2f}" for r in rows))


if __name__ == "__main__":
    from bort.errors import run_cli

    run_cli(main)()
