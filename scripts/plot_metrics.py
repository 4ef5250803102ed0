"""Draw training curves from a metrics JSON-lines file (written by the pretrainer or the fine-tuner) to a PNG.

    python scripts/plot_metrics.py ckpt_dir/metrics.jsonl --output curves.png [--keys mlm_loss kd_loss mlm_acc]

One panel per metric; train records as lines, eval records as markers (one series per evaluated model).
Needs matplotlib (optional dependency: pip install "matplotlib>=3.7,<3.9" "contourpy<1.2").
"""
import argparse
import os


from bort.errors import BortError, run_cli
from bort.io import atomic_path, read_jsonl

DEFAULT_KEYS = ("mlm_loss", "kd_loss", "mlm_acc", "teacher_agreement", "lr", "tokens_per_s")


def read_records(path):
    if not os.path.isfile(path):
        raise BortError(f"{path}: metrics file not found")
    records = []
    for lineno, record in read_jsonl(path):
        if "step" not in record:
            raise BortError(f"{path}:{lineno}: expected a JSON object with a 'step' field")
        records.append(record)
    return records


def series(records, keys):
    """{key: {label: ([steps], [values])}} for the keys present in the records."""
    out = {}
    for record in records:
        label = record.get("kind", "train")
        if record.get("model"):
            label = f"{label} ({record['model']})"
        for key in keys:
            value = record.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                steps, values = out.setdefault(key, {}).setdefault(label, ([], []))
                steps.append(record["step"])
                values.append(value)
    return out


def plot(records, output, keys=DEFAULT_KEYS, title=None):
    try:
        import matplotlib  # noqa: PLC0415

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError:
        raise BortError("matplotlib is needed for plots: pip install \"matplotlib>=3.7,<3.9\" \"contourpy<1.2\"") \
            from None
    data = series(records, keys)
    if not data:
        raise BortError(f"none of the metrics {list(keys)} are in the records")
    names = [k for k in keys if k in data]
    cols = min(3, len(names))
    rows = (len(names) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.4 * rows), squeeze=False)
    for ax, key in zip(axes.flat, names):
        for label, (steps, values) in sorted(data[key].items()):
            style = "-" if label == "train" else "o--"
            ax.plot(steps, values, style, label=label, markersize=4)
        ax.set_title(key)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if len(data[key]) > 1:
            ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(output) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return names


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("metrics", help="JSON-lines metrics file")
    parser.add_argument("--output", default=None, help="PNG path (default: beside the metrics, .png)")
    parser.add_argument("--keys", nargs="+", default=list(DEFAULT_KEYS), help="metrics to draw")
    parser.add_argument("--title", default=None)
    args = parser.parse_args(argv)
    output = args.output or os.path.splitext(args.metrics)[0] + ".png"
    names = plot(read_records(args.metrics), output, args.keys, args.title)
    print(f"wrote {output} ({', '.join(names)})")


if __name__ == "__main__":
    run_cli(main)()
