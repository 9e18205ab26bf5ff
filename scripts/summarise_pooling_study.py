#!/usr/bin/env python3
"""Summarises scripts/transition-pooling-study.sh's runs: for each pooling, the mean and sample
standard deviation over seeds of the final and best test accuracy and of the last epoch's
training loss, as a Markdown table; and `curves.svg` in the study's folder: mean test accuracy
and training loss per epoch, one line per pooling, the seeds' range shaded.

    python3 scripts/summarise_pooling_study.py docs/pooling-study

Python's standard library only.
"""
import json
import pathlib
import statistics
import sys


def runs(root):
    """{pooling: [[metrics of epoch 1, 2, ...] for each seed]} from root/{pool}-seed{n}/."""
    out = {}
    for metrics in sorted(root.glob("*-seed*/metrics.jsonl")):
        pool = metrics.parent.name.split("-seed")[0]
        epochs = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
        out.setdefault(pool, []).append(epochs)
    return out


def spread(values):
    """Mean ± sample standard deviation; the mean alone for one seed."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return f"{mean:.4f}"
    return f"{mean:.4f} ± {statistics.stdev(values):.4f}"


def table(study):
    lines = [
        "| transitions | seeds | epochs | final test accuracy | best test accuracy | final training loss |",
        "|---|---|---|---|---|---|",
    ]
    for pool, seeds in sorted(study.items()):
        final = [s[-1]["test_acc"] for s in seeds]
        best = [max(e["test_acc"] for e in s) for s in seeds]
        loss = [s[-1]["loss"] for s in seeds]
        epochs = min(len(s) for s in seeds)
        lines.append(f"| {pool} | {len(seeds)} | {epochs} | {spread(final)} | {spread(best)} | {spread(loss)} |")
    return "\n".join(lines)


def curves_svg(study):
    """Two panels (test accuracy, training loss) of mean per epoch, the seeds' range shaded."""
    colours = {"avg": "#1f77b4", "max": "#d62728"}
    width, height, pad = 360, 240, 40
    panels = []
    for i, (key, title) in enumerate([("test_acc", "test accuracy"), ("loss", "training loss")]):
        values = [e[key] for seeds in study.values() for s in seeds for e in s]
        lo, hi = min(values), max(values)
        epochs = max(len(s) for seeds in study.values() for s in seeds)
        x = lambda e: pad + (width - 2 * pad) * (e - 1) / max(1, epochs - 1) + i * width
        y = lambda v: height - pad - (height - 2 * pad) * (v - lo) / ((hi - lo) or 1)
        parts = [f'<text x="{i * width + width / 2}" y="20" text-anchor="middle">{title}</text>',
                 f'<text x="{i * width + pad}" y="{height - 10}">1</text>',
                 f'<text x="{i * width + width - pad}" y="{height - 10}" text-anchor="end">epoch {epochs}</text>',
                 f'<text x="{i * width + 5}" y="{y(hi) + 4}">{hi:.3f}</text>',
                 f'<text x="{i * width + 5}" y="{y(lo) + 4}">{lo:.3f}</text>']
        for pool, seeds in sorted(study.items()):
            n = min(len(s) for s in seeds)
            per_epoch = [[s[e][key] for s in seeds] for e in range(n)]
            top = [(x(e + 1), y(max(v))) for e, v in enumerate(per_epoch)]
            bottom = [(x(e + 1), y(min(v))) for e, v in enumerate(per_epoch)][::-1]
            band = " ".join(f"{a:.1f},{b:.1f}" for a, b in top + bottom)
            line = " ".join(f"{x(e + 1):.1f},{y(statistics.fmean(v)):.1f}" for e, v in enumerate(per_epoch))
            c = colours.get(pool, "#555")
            parts.append(f'<polygon points="{band}" fill="{c}" fill-opacity="0.2"/>')
            parts.append(f'<polyline points="{line}" fill="none" stroke="{c}" stroke-width="2"/>')
        panels.append("\n".join(parts))
    legend = " ".join(f'<text x="{pad + 80 * k}" y="{height + 15}" fill="{colours.get(p, "#555")}">{p} pooling</text>'
                      for k, p in enumerate(sorted(study)))
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{2 * width}" height="{height + 25}" '
            f'font-family="sans-serif" font-size="12">\n' + "\n".join(panels) + "\n" + legend + "\n</svg>\n")


def main():
    root = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "docs/pooling-study")
    study = runs(root)
    if not study:
        sys.exit(f"{root}: no runs (*-seed*/metrics.jsonl)")
    print(table(study))
    (root / "curves.svg").write_text(curves_svg(study))
    print(f"\ncurves: {root / 'curves.svg'}")


if __name__ == "__main__":
    main()
