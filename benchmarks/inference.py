"""CPU inference speed of Bort, BERT-base and RoBERTa-large: our MXNet modes against HF transformers on PyTorch
and the same HF graph in ONNX Runtime.

Each framework runs in its own worker process (two OpenMP runtimes in one process distort both); the workers
stay up and take turns, one timing round each, so both see the same machine load; medians over all rounds.
Random weights and random token ids (speed does not depend on them). Every mode's output is checked against
float32 (max abs hidden-state difference, cosine, argmax agreement of a random 3-way head on the first token).
Our worker runs MXNet's NaiveEngine by default (--engine; see `bort.runtime.configure_inference_engine`): operators
run on the calling thread, whose OpenMP team stays hot, as PyTorch's does. Both then assume free cores: run it on a
quiet machine (the table prints the load average before and after).

    python -m benchmarks.inference --models bort --batch_sizes 1 8 --seq_lens 128 --rounds 5
    python -m benchmarks.inference            # the full grid: slow on 2 cores (RoBERTa-large at 512 x 32)

ONNX Runtime peers (benchmark-only dependencies onnxruntime and onnx, requirements-bench.txt): the same-shaped HF
`BertModel` (random weights, seed 0, as the PyTorch worker's) exported with `torch.onnx.export` in a helper process,
then `fp32` (the exported graph, all ORT graph optimizations), `opt_fp32` (after ORT's transformer optimizer:
fused attention, layer norm, GELU), `int8` (`quantize_dynamic` of the exported graph) and `opt_int8`
(`quantize_dynamic` of the optimized graph). Sessions use intra_op_num_threads = --threads, one inter-op thread.

--omp_wait applies to every peer alike: `passive` sets OMP_WAIT_POLICY=PASSIVE for the OpenMP workers (ours,
PyTorch) and turns off spinning in ONNX Runtime's thread pool (session.intra_op.allow_spinning=0); `active` leaves
all three spinning (their defaults). `auto` (default) is passive when the load average exceeds the cores: on a busy
machine a spinning thread burns the time slice the thread it waits for needs.

Prints a table and writes JSON (--output) with sequences/s, speed-up ratios and GFLOP/s against the measured
fp32 matrix-multiply peak, and the goal rows: our fastest accurate mode against the fastest peer, our fp32 against
ONNX Runtime's optimized fp32.
"""
import argparse
import json
import os
import subprocess
import sys

import bort  # noqa: E402,F401  (sets OMP_NUM_THREADS before any framework is imported)
from bort.paths import REPO_ROOT

from benchmarks.inference_workers import (
    MODELS, ORT_MODES, OUR_MODES, TORCH_MODES, log, mxnet_worker, ort_export, ort_worker, torch_worker)

# the peers the goal rows compare against: (framework, mode)
GOAL_PEERS = (("torch", "int8"), ("ort", "int8"), ("ort", "opt_int8"), ("ort", "opt_fp32"))
ACCURATE_COSINE = 0.999  # a mode counts as accurate when its hidden states keep this mean cosine to fp32


# ------------------------------------------------------------------------------------------------ orchestrator


class Worker:
    def __init__(self, framework, model, modes, args):
        from bort.model import get_config

        config = json.dumps(get_config(MODELS[model]).to_dict())
        cmd = [sys.executable, "-m", "benchmarks.inference", "--worker", framework, "--model", model,
               "--config_json", config,
               "--worker_modes", *modes, "--calib_batch", str(args.calib_batch), "--calib_seq", str(args.calib_seq),
               "--calib_batches", str(args.calib_batches), "--calib_mode", args.calib_mode]
        self.framework = framework
        env = dict(os.environ, OMP_NUM_THREADS=str(args.threads or os.environ["OMP_NUM_THREADS"]))
        wait = args.ort_wait if framework == "ort" and args.ort_wait != "same" else args.omp_wait
        if wait == "passive":  # OpenMP (ours, PyTorch) sleeps, ORT's pool does not spin
            env["OMP_WAIT_POLICY"] = "PASSIVE"
        if framework == "mxnet":
            from bort.runtime import ENGINES
            env["MXNET_ENGINE_TYPE"] = ENGINES[args.engine]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=REPO_ROOT)
        self.info = self._read()

    def _read(self):
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.framework} worker exited with status {self.proc.wait()}")
        return json.loads(line)

    def time(self, batch, seq, repeats):
        self.proc.stdin.write(json.dumps({"batch": batch, "seq": seq, "repeats": repeats}) + "\n")
        self.proc.stdin.flush()
        return self._read()["times"]

    def close(self):
        if self.proc.poll() is None:
            self.proc.stdin.write(json.dumps({"quit": True}) + "\n")
            self.proc.stdin.flush()
            self.proc.wait(timeout=60)


def available(*modules):
    import importlib.util
    return all(importlib.util.find_spec(m) is not None for m in modules)


def cpu_model():
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return f"{line.split(':', 1)[1].strip()}, {os.cpu_count()} CPUs"
    except OSError:
        pass
    return "unknown"


def median(values):
    values = sorted(values)
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


def run_benchmark(args):
    from bort.inference.modes import encoder_flops
    from bort.model import get_config

    frameworks = [("mxnet", args.modes)]
    if args.torch_modes and available("torch", "transformers"):
        frameworks.append(("torch", args.torch_modes))
    elif args.torch_modes:
        log("torch/transformers not installed: PyTorch peers skipped")
    if args.ort_modes and available("torch", "transformers", "onnx", "onnxruntime"):
        frameworks.append(("ort", args.ort_modes))
    elif args.ort_modes:
        log("onnxruntime/onnx (requirements-bench.txt) or torch/transformers not installed: ONNX Runtime peers skipped")
    load_before = os.getloadavg()
    results, checks, peaks = [], {}, {}
    for model in args.models:
        workers = []
        try:
            for framework, modes in frameworks:  # one at a time: building is CPU-heavy too
                log(f"starting {framework} worker for {model} ({', '.join(modes)})")
                workers.append(Worker(framework, model, modes, args))
                checks.setdefault(model, {})[framework] = workers[-1].info["checks"]
                if workers[-1].info["matmul_peak_gflops"]:
                    peaks[framework] = workers[-1].info["matmul_peak_gflops"]
            config = get_config(MODELS[model])
            for batch in args.batch_sizes:
                for seq in args.seq_lens:
                    times, rounds = {}, {}
                    for r in range(args.rounds):
                        for w in (workers if r % 2 == 0 else workers[::-1]):
                            for mode, ts in w.time(batch, seq, args.repeats).items():
                                times.setdefault((w.framework, mode), []).extend(ts)
                                rounds.setdefault((w.framework, mode), []).append(median(ts))
                    flops = encoder_flops(config, batch, seq)
                    for (framework, mode), ts in times.items():
                        sec = median(ts)
                        results.append({"model": model, "framework": framework, "mode": mode, "batch": batch,
                                        "seq": seq, "median_s": sec, "min_s": min(ts), "runs": len(ts),
                                        "round_medians_s": rounds[(framework, mode)],
                                        "seqs_per_s": batch / sec, "gflops_per_s": flops / sec / 1e9,
                                        "fraction_of_fp32_peak": flops / sec / 1e9 / peaks["mxnet"]})
                        log(f"{model:14s} b{batch:<3d} L{seq:<4d} {framework:6s} {mode:8s} {sec:8.4f}s")
        finally:
            for w in workers:
                w.close()
    return {"grid": {"models": args.models, "batch_sizes": args.batch_sizes, "seq_lens": args.seq_lens,
                     "rounds": args.rounds, "repeats": args.repeats},
            "threads": int(args.threads or os.environ["OMP_NUM_THREADS"]), "mxnet_engine": args.engine,
            "omp_wait": args.omp_wait, "ort_wait": args.ort_wait, "cpu": cpu_model(),
            "load_average_before": load_before,
            "load_average_after": os.getloadavg(), "matmul_peak_gflops": peaks, "checks": checks,
            "results": results, "ratios": ratios(results), "goals": goals(results, checks)}


def ratios(results):
    by = {(r["model"], r["framework"], r["mode"], r["batch"], r["seq"]): r["median_s"] for r in results}
    out = {"bort_vs_bert_base": [], "bort_vs_roberta_large": [], "ours_vs_peers": []}
    for (model, fw, mode, b, s), sec in by.items():
        if model != "bort":
            continue
        for other, key in (("bert_base", "bort_vs_bert_base"), ("roberta_large", "bort_vs_roberta_large")):
            if (other, fw, mode, b, s) in by:
                out[key].append({"framework": fw, "mode": mode, "batch": b, "seq": s,
                                 "speedup": by[(other, fw, mode, b, s)] / sec})
    per_round = {(r["model"], r["framework"], r["mode"], r["batch"], r["seq"]): r["round_medians_s"] for r in results}
    for (model, fw, mode, b, s), sec in by.items():
        if fw != "mxnet":
            continue
        for peer_fw, peer_modes in (("torch", TORCH_MODES), ("ort", ORT_MODES)):
            for pmode in peer_modes:
                key = (model, peer_fw, pmode, b, s)
                if key in by:
                    out["ours_vs_peers"].append({"model": model, "ours": mode, "peer": f"{peer_fw}:{pmode}",
                                                 "batch": b, "seq": s, "speedup": by[key] / sec,
                                                 "paired_speedup": paired(per_round[key],
                                                                          per_round[(model, fw, mode, b, s)])})
    return out


def paired(peer_rounds, our_rounds):
    """Median of the per-round ratios: the frameworks take turns, so each round's ratio sees one machine load."""
    return median([p / o for p, o in zip(peer_rounds, our_rounds)])


def goals(results, checks):
    """The issue's goal rows per (model, batch, seq): our fastest accurate mode against the fastest peer among
    GOAL_PEERS (target >= 1.3), our fp32 against ONNX Runtime's optimized fp32 (target >= 1.0)."""
    rows = []
    by = {(r["model"], r["framework"], r["mode"], r["batch"], r["seq"]): r for r in results}
    for model, b, s in sorted({(r["model"], r["batch"], r["seq"]) for r in results}):
        ours = {mode: r for (m, fw, mode, bb, ss), r in by.items() if (m, fw, bb, ss) == (model, "mxnet", b, s)}
        accurate = {mode: r for mode, r in ours.items()
                    if checks.get(model, {}).get("mxnet", {}).get(mode, {}).get("mean_cosine", 0) >= ACCURATE_COSINE}
        peers = {f"{fw}:{mode}": by[(model, fw, mode, b, s)] for fw, mode in GOAL_PEERS
                 if (model, fw, mode, b, s) in by}
        if accurate and peers:
            best_mode = min(accurate, key=lambda m: accurate[m]["median_s"])
            best_peer = min(peers, key=lambda p: peers[p]["median_s"])
            mine, theirs = accurate[best_mode], peers[best_peer]
            rows.append({"model": model, "batch": b, "seq": s, "goal": "fastest accurate >= 1.3x fastest peer",
                         "ours": best_mode, "peer": best_peer, "speedup": theirs["median_s"] / mine["median_s"],
                         "paired_speedup": paired(theirs["round_medians_s"], mine["round_medians_s"]),
                         "target": 1.3})
        if "fp32" in ours and (model, "ort", "opt_fp32", b, s) in by:
            mine, theirs = ours["fp32"], by[(model, "ort", "opt_fp32", b, s)]
            rows.append({"model": model, "batch": b, "seq": s, "goal": "our fp32 >= ORT optimized fp32",
                         "ours": "fp32", "peer": "ort:opt_fp32", "speedup": theirs["median_s"] / mine["median_s"],
                         "paired_speedup": paired(theirs["round_medians_s"], mine["round_medians_s"]),
                         "target": 1.0})
    for row in rows:
        row["met"] = row["speedup"] >= row["target"]
    return rows


def print_table(report):
    print(f"cpu={report.get('cpu')} threads={report['threads']} mxnet engine={report.get('mxnet_engine')} "
          f"omp_wait={report.get('omp_wait')} ort_wait={report.get('ort_wait', 'same')} "
          f"load(1,5,15 min) before={report['load_average_before']} "
          f"after={tuple(round(x, 2) for x in report['load_average_after'])} "
          f"fp32 matmul peak: " + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in report["matmul_peak_gflops"].items()))
    print(f"{'model':14s} {'batch':>5s} {'seq':>4s} {'framework':9s} {'mode':8s} {'median s':>9s} "
          f"{'seq/s':>8s} {'GFLOP/s':>8s} {'%peak':>6s}")
    for r in report["results"]:
        print(f"{r['model']:14s} {r['batch']:5d} {r['seq']:4d} {r['framework']:9s} {r['mode']:8s} "
              f"{r['median_s']:9.4f} {r['seqs_per_s']:8.1f} {r['gflops_per_s']:8.1f} "
              f"{100 * r['fraction_of_fp32_peak']:5.0f}%")
    for key, rows in report["ratios"].items():
        if rows:
            print(f"\n{key}:")
            for row in rows:
                print("  " + " ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
    if report.get("goals"):
        print("\ngoals (speedup = peer time / ours; paired = median of per-round ratios):")
        for g in report["goals"]:
            print(f"  {g['model']:6s} b{g['batch']:<3d} L{g['seq']:<4d} {g['goal']:40s} ours={g['ours']:6s} "
                  f"peer={g['peer']:13s} {g['speedup']:5.2f} (paired {g['paired_speedup']:5.2f}) "
                  f"target {g['target']:.1f} {'met' if g['met'] else 'NOT met'}")
    print("\naccuracy vs fp32 (random check batch):")
    for model, per_fw in report["checks"].items():
        for fw, per_mode in per_fw.items():
            for mode, c in per_mode.items():
                print(f"  {model:14s} {fw:6s} {mode:6s} max_abs_diff={c['max_abs_diff']:.3g} "
                      f"cos={c['mean_cosine']:.5f} argmax_agree={c['argmax_agreement']:.2f}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--batch_sizes", nargs="+", type=int, default=[1, 8, 32])
    parser.add_argument("--seq_lens", nargs="+", type=int, default=[128, 512])
    parser.add_argument("--modes", nargs="+", default=list(OUR_MODES), choices=OUR_MODES, help="our MXNet modes")
    parser.add_argument("--torch_modes", nargs="*", default=list(TORCH_MODES), choices=TORCH_MODES,
                        help="PyTorch peers (none: skip PyTorch)")
    parser.add_argument("--ort_modes", nargs="*", default=["opt_fp32", "int8", "opt_int8"], choices=ORT_MODES,
                        help="ONNX Runtime peers (none: skip ONNX Runtime); fp32 is the unoptimized export")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per framework and shape")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per mode in each round")
    parser.add_argument("--calib_batch", type=int, default=8)
    parser.add_argument("--calib_seq", type=int, default=128)
    parser.add_argument("--calib_batches", type=int, default=4)
    parser.add_argument("--calib_mode", default="naive", choices=("naive", "entropy"))
    parser.add_argument("--threads", type=int, default=None,
                        help="threads per framework (default: OMP_NUM_THREADS, else the available cores)")
    parser.add_argument("--engine", default="naive", choices=("naive", "threaded"),
                        help="MXNet engine of our worker (bort.runtime.configure_inference_engine): naive runs "
                             "operators on the calling thread, the inference setting; threaded is MXNet's default")
    parser.add_argument("--omp_wait", default="auto", choices=("auto", "active", "passive"),
                        help="OpenMP wait policy of the MXNet and PyTorch workers (bort.runtime.configure_omp_wait): "
                             "auto is passive when the load average exceeds the cores at the start")
    parser.add_argument("--ort_wait", default="same", choices=("same", "active", "passive"),
                        help="ONNX Runtime's own wait policy (spinning on or off) when it should differ from "
                             "--omp_wait: on the 2-core AMD host ORT ran faster without spinning on a quiet machine")
    parser.add_argument("--output", default="benchmark_inference.json")
    parser.add_argument("--worker", choices=("mxnet", "torch", "ort", "ort_export"), help=argparse.SUPPRESS)
    parser.add_argument("--export_dir", help=argparse.SUPPRESS)
    parser.add_argument("--worker_modes", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--config_json", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        workers = {"mxnet": mxnet_worker, "torch": torch_worker, "ort": ort_worker, "ort_export": ort_export}
        args.modes = args.worker_modes
        return workers[args.worker](args)
    from bort.io import write_json
    from bort.runtime import busy_machine
    if args.omp_wait == "auto":
        args.omp_wait = "passive" if busy_machine(args.threads) else "active"
    report = run_benchmark(args)
    print_table(report)
    write_json(args.output, report)
    print(f"\nwrote {args.output}")


if __name__ == "__main__":
    from bort.errors import run_cli

    run_cli(main)()
