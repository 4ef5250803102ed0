"""The results of a search: every candidate's objectives and W, the ranking, the Pareto front, the chosen
architecture; written as results.json, results.csv, results.md and plot.png in the output directory."""
import csv
import dataclasses
import logging
import os

from bort.io import atomic_path, atomic_write, write_json
from bort.pretrain.extraction.objectives import best_by_w, pareto_front

log = logging.getLogger(__name__)
COLUMNS = ("rank", "name", "num_layers", "num_heads", "units", "hidden_size", "params_encoder", "params_total",
           "operations", "cpu_ms", "error", "W", "W_measured", "W_operations", "pareto", "rejected", "evaluated")


def summarize(search, timings, trained, wall_seconds):
    """The summary dict: settings, T's objectives, rows sorted by size with rank/pareto/chosen, counts."""
    # only the candidates this search selected count, even when a shared --candidate_dir holds others
    selected = {a: k for k in (1, 2) for a in search.stage(k)}
    rows = [search.objectives(a, timings, search.load_result(a) if a in selected else None) for a in search.ordered]
    for arch, row in zip(search.ordered, rows):
        row["stage"] = selected.get(arch)
    ranked = sorted((r for r in rows if r["W"] is not None), key=lambda r: -r["W"])
    for k, row in enumerate(ranked):
        row["rank"] = k + 1
    scored = [r for r in rows if r["evaluated"] and not r["rejected"]]
    speed = "cpu_ms" if search.settings.speed == "measured" else "operations"
    for k in pareto_front([(r["params_encoder"], r[speed], r["error"]) for r in scored]):
        scored[k]["pareto"] = True
    chosen = best_by_w(ranked)
    maximum = search.objectives(search.maximum, timings)
    evaluated = [r for r in rows if r["evaluated"]]
    return {"settings": dataclasses.asdict(search.settings), "fingerprint": search.fingerprint,
            "space": {"dimensions": search.space.dimensions, "constraints": list(search.space.constraints),
                      "description": search.space.description},
            "maximum_point": maximum, "chosen": chosen and chosen["name"],
            "chosen_row": chosen, "candidates": len(rows), "evaluated": len(evaluated),
            "trained_this_run": trained, "train_seconds": sum(r.get("train_seconds") or 0 for r in evaluated),
            "wall_seconds": wall_seconds, "rows": rows}


def markdown_table(summary):
    head = ("| rank | candidate | p encoder | p total | operations | CPU ms | ê | W | Pareto | note |\n"
            "|---:|---|---:|---:|---:|---:|---:|---:|:-:|---|\n")
    lines = []
    for r in sorted(summary["rows"], key=lambda r: (r.get("rank") or 10 ** 9, r["params_encoder"])):
        note = r["rejected"] or ("" if r["evaluated"] else "not evaluated (ε)")
        if r["name"] == summary["chosen"]:
            note = "**chosen**"
        fmt = lambda v, f: "" if v is None else format(v, f)  # noqa: E731
        lines.append(f"| {r.get('rank') or ''} | {r['name']} | {r['params_encoder']:,} | {r['params_total']:,} | "
                     f"{r['operations']:.3g} | {fmt(r['cpu_ms'], '.3f')} | {fmt(r['error'], '.4f')} | "
                     f"{fmt(r['W'], '.4f')} | {'✓' if r.get('pareto') else ''} | {note} |")
    t = summary["maximum_point"]
    foot = (f"\nMaximum point T = {t['name']}: p = {t['params_encoder']:,} (encoder), {t['params_total']:,} (with "
            f"embeddings), {t['cpu_ms']:.3f} ms, {t['operations']:.3g} operations. {summary['evaluated']} of "
            f"{summary['candidates']} candidates evaluated, {summary['trained_this_run']} trained in this run.\n")
    return head + "\n".join(lines) + "\n" + foot


def write_plot(summary, path):
    """p vs i (left) and p vs ê (right), W as colour, the chosen point and T marked; skipped without matplotlib."""
    try:
        import matplotlib  # noqa: PLC0415

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError:
        log.warning("matplotlib is not installed: no plot (pip install matplotlib)")
        return None
    rows, speed = summary["rows"], "cpu_ms" if summary["settings"]["speed"] == "measured" else "operations"
    label = "CPU ms per batch" if speed == "cpu_ms" else "operations"
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    scored = [r for r in rows if r["W"] is not None]
    colours = [r["W"] for r in scored]
    for ax, y, ylabel in ((axes[0], speed, label), (axes[1], "error", "error surrogate ê")):
        other = [r for r in rows if r["W"] is None and r[y] is not None]
        ax.scatter([r["params_encoder"] / 1e6 for r in other], [r[y] for r in other], c="lightgrey", s=18,
                   label="not evaluated / rejected")
        points = ax.scatter([r["params_encoder"] / 1e6 for r in scored], [r[y] for r in scored], c=colours,
                            cmap="viridis", s=30)
        chosen = summary["chosen_row"]
        if chosen:
            ax.scatter([chosen["params_encoder"] / 1e6], [chosen[y]], marker="*", s=300, facecolors="none",
                       edgecolors="red", linewidths=1.5, label=f"chosen {chosen['name']}")
        t = summary["maximum_point"]
        if y != "error" and t[y] is not None:
            ax.scatter([t["params_encoder"] / 1e6], [t[y]], marker="x", c="black", s=60, label=f"T {t['name']}")
        ax.set_xlabel("encoder parameters (M)")
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=7, loc="best")
    fig.colorbar(points, ax=axes, label="W")
    fig.suptitle(f"subarchitecture extraction: ε = {summary['settings']['eps']}, s = {summary['settings']['steps']}, "
                 f"{summary['evaluated']} of {summary['candidates']} evaluated")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return path


def write_reports(search, timings, trained, wall_seconds):
    """results.json / .csv / .md and plot.png in the search's output directory; returns the summary."""
    out = search.settings.out_dir
    summary = summarize(search, timings, trained, wall_seconds)
    write_json(os.path.join(out, "results.json"), summary)
    with atomic_write(os.path.join(out, "results.csv")) as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in summary["rows"]:
            writer.writerow(row)
    with atomic_write(os.path.join(out, "results.md")) as handle:
        handle.write(markdown_table(summary))
    write_plot(summary, os.path.join(out, "plot.png"))
    return summary
