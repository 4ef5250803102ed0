#!/usr/bin/env python
"""CPU evidence for the subarchitecture extraction: exhaustive (ε = 1) against ε-sampled searches, full distillation
of the chosen architecture and of its strongest grid neighbour, and the choice's stability across seeds.

    python -m experiments.extraction_evidence --run_dir runs/extraction --output docs/results/json/extraction.json

Needs in --run_dir (docs/results/extraction.md gives the commands that made them): shards_train/, shards_heldout/
(pretraining shards of ../shared/real_data/text/gutenberg_big.txt with their teacher caches beside them) and
teacher/ (the teacher's checkpoint, for its held-out accuracy). Then, each step skipped when its output exists:
1. the exhaustive search over the space (every candidate s steps), results in <run_dir>/eps1;
2. ε-sampled searches, <run_dir>/eps<ε>, on the same candidate results and timings (a pivot's ê and i do not
   depend on ε; their training seconds are summed as if each search had trained its own);
3. full distillation (--full_steps) of the exhaustive choice and of its grid neighbour with the highest W
   (--all_neighbours: of every grid neighbour, one dimension one step away);
4. the top --top_k candidates of seed 0 retrained with the other --seeds: does the argmax of W move?
Prints a table and writes the JSON.
"""
import argparse
import dataclasses
import glob
import json
import os
import shutil

import bort  # noqa: F401
from bort.errors import BortError, run_cli
from bort.io import read_json, write_json
from bort.pretrain.extraction import evaluate
from bort.pretrain.extraction.runner import Search, SearchSettings, run_search, train_config
from bort.pretrain.extraction.space import parse_architecture


def settings_for(args, eps, seed=0):
    return SearchSettings(space=args.space, train=os.path.join(args.run_dir, "shards_train"),
                          heldout=os.path.join(args.run_dir, "shards_heldout"),
                          out_dir=os.path.join(args.run_dir, f"eps{eps}" + (f"_seed{seed}" if seed else "")),
                          candidate_dir=os.path.join(args.run_dir, f"candidates_seed{seed}"), teacher_cache="beside",
                          eps=eps, steps=args.steps, thetas=args.thetas, error_proxy="distill",
                          base_model=args.base_model, max_length=64, batch_size=32, batch_size_eval=64,
                          mlm_weight=0.1, teacher_ce_weight=0.5, temperature=2.0, seed=seed, cpu_only=True,
                          timing_batch=8, timing_seq_len=64, timing_threads=1, timing_repeats=20, timing_rounds=3,
                          progress=False)


def neighbours(arch, space):
    """Grid neighbours: one dimension moved one step in the space's list."""
    out = []
    candidates = set(space.candidates())
    for dim, values in space.dimensions.items():
        k = values.index(getattr(arch, dim))
        for j in (k - 1, k + 1):
            if 0 <= j < len(values):
                other = dataclasses.replace(arch, **{dim: values[j]})
                if other in candidates:
                    out.append(other)
    return out


def full_distillation(args, search, arch, timings):
    """Distil `arch` for --full_steps from the cache; held-out metrics, size and speed, and W with ê = 1 − acc."""
    path = os.path.join(args.run_dir, "full", f"{arch.name}.json")
    if os.path.isfile(path):
        return read_json(path)
    config = dataclasses.replace(train_config(search.settings), num_steps=args.full_steps,
                                 ckpt_interval=args.full_steps, log_interval=50)
    theta = read_json(search.result_path(arch))["theta"]
    result = evaluate.estimate_error(arch, search.base_model, config, [theta], "mlm_error",
                                     os.path.join(args.run_dir, "full", arch.name), keep_checkpoints=True)
    row = search.objectives(arch, timings, result)
    out = {"name": arch.name, "steps": args.full_steps, "theta": theta, "heldout": row["heldout"],
           "params_encoder": row["params_encoder"], "cpu_ms": row["cpu_ms"], "operations": row["operations"],
           "W_full_mlm_error": row["W"], "seconds": result["seconds"]}
    write_json(path, out)
    return out


def seed_stability(args, top):
    """{seed: argmax of W among `top` (names) when retrained with that seed}, and each seed's W per candidate."""
    out = {}
    for seed in args.seeds:
        search = Search(settings_for(args, 1, seed))
        os.makedirs(search.settings.out_dir, exist_ok=True)
        timings = read_json(os.path.join(args.run_dir, "eps1", "timing.json"))["candidates"]
        config = train_config(search.settings)
        rows = []
        for name in top:
            arch = parse_architecture(name)
            result = search.load_result(arch)
            if result is None:
                result = evaluate.estimate_error(arch, search.base_model, config, search.thetas, "distill",
                                                 os.path.join(search.settings.out_dir, "work", name))
                result.update(name=name, fingerprint=search.fingerprint, architecture=arch.to_dict(), stage=1)
                write_json(search.result_path(arch), result)
            rows.append(search.objectives(arch, timings, result))
        best = max((r for r in rows if r["W"] is not None), key=lambda r: r["W"])
        out[seed] = {"chosen": best["name"], "W": {r["name"]: r["W"] for r in rows},
                     "error": {r["name"]: r["error"] for r in rows}}
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run_dir", default="runs/extraction")
    p.add_argument("--space", default="cpu_scaled")
    p.add_argument("--base_model", default="runs/extraction/teacher_config.json",
                   help="dropout, vocabulary and max length of the candidates (the teacher's config)")
    p.add_argument("--steps", type=int, default=40, help="s")
    p.add_argument("--thetas", default='[{"lr": 2e-3}]')
    p.add_argument("--eps", default="2,4")
    p.add_argument("--full_steps", type=int, default=600)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--all_neighbours", action="store_true",
                   help="fully distil every grid neighbour of the choice, not only the one with the highest W")
    p.add_argument("--top_k", type=int, default=6)
    p.add_argument("--output", default="docs/results/json/extraction.json")
    args = p.parse_args(argv)
    args.seeds = [int(s) for s in args.seeds.split(",")]
    if not glob.glob(os.path.join(args.run_dir, "shards_heldout", "*.topk")):
        raise BortError(f"{args.run_dir}: no cached shards; see docs/results/extraction.md for the setup commands")
    report = {"searches": {}}
    exhaustive = run_search(settings_for(args, 1))
    report["searches"][1] = exhaustive
    best_w = exhaustive["chosen_row"]["W"]
    for eps in [int(e) for e in args.eps.split(",")]:
        settings = settings_for(args, eps)
        os.makedirs(settings.out_dir, exist_ok=True)
        for name in ("timing.json", "timing_request.json"):  # the same timings: W comparable across searches
            shutil.copyfile(os.path.join(exhaustive["settings"]["out_dir"], name), os.path.join(settings.out_dir, name))
        report["searches"][eps] = run_search(settings)
    search = Search(settings_for(args, 1))
    timings = read_json(os.path.join(search.settings.out_dir, "timing.json"))["candidates"]
    chosen = parse_architecture(exhaustive["chosen"])
    rows = {r["name"]: r for r in exhaustive["rows"]}
    near = sorted((a for a in neighbours(chosen, search.space) if rows[a.name]["W"] is not None),
                  key=lambda a: -rows[a.name]["W"])
    near = near if args.all_neighbours else near[:1]
    report["full"] = [full_distillation(args, search, a, timings) for a in [chosen] + near]
    ranked = sorted((r for r in exhaustive["rows"] if r["W"] is not None), key=lambda r: -r["W"])
    report["seeds"] = seed_stability(args, [r["name"] for r in ranked[:args.top_k]])
    table = ["| search | chosen | W | W / W(ε=1) | candidates trained | training s (sum) |",
             "|---|---|---:|---:|---:|---:|"]
    for eps, summary in sorted(report["searches"].items()):
        w = summary["chosen_row"]["W"]
        table.append(f"| ε = {eps} | {summary['chosen']} | {w:.4f} | {w / best_w:.3f} | {summary['evaluated']} of "
                     f"{summary['candidates']} | {summary['train_seconds']:.0f} |")
    table += ["", "| fully distilled | steps | held-out MLM acc | p encoder | CPU ms | W (ê = 1 − acc) |",
              "|---|---:|---:|---:|---:|---:|"]
    for f in report["full"]:
        table.append(f"| {f['name']} | {f['steps']} | {f['heldout']['mlm_acc']:.4f} | {f['params_encoder']:,} | "
                     f"{f['cpu_ms']:.3f} | {f['W_full_mlm_error']:.4f} |")
    table += ["", "seeds: " + ", ".join(f"{s}: {v['chosen']}" for s, v in report["seeds"].items())]
    for summary in report["searches"].values():  # the per-candidate rows are in each search's results.json
        summary.pop("rows")
        summary.pop("settings")
    write_json(args.output, report)
    print("\n".join(table))
    print(json.dumps({"output": args.output}))


if __name__ == "__main__":
    run_cli(main)()
