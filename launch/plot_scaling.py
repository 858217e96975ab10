#!/usr/bin/env python3
"""Plot a planner sweep as a scaling curve.

    metamorph plan --preset mixtral-8x7b --gpu h100 --seq 4096 --global-batch 1024 \
        --gpus 64 --sweep-gpus 8,16,32,64,128,256 --json > sweep.json
    launch/plot_scaling.py sweep.json scaling.svg      # or scaling.png (needs matplotlib)

Draws predicted tokens/s per GPU and MFU against the swept GPU count or sequence length.
SVG needs only the standard library.
"""
import json
import sys


def load(path):
    with open(path) as f:
        doc = json.load(f)
    axis = doc["sweep"]
    points = [p for p in doc["points"] if p.get("feasible")]
    if not points:
        sys.exit(f"{path}: no feasible point to plot")
    xs = [p["gpus"] if axis == "gpus" else p["seq"] for p in points]
    per_gpu = [p["tokens_per_s_per_gpu"] for p in points]
    mfu = [100 * p["mfu"] for p in points]
    labels = [p["best"]["layout"] for p in points]
    return axis, xs, per_gpu, mfu, labels


def svg(axis, xs, per_gpu, mfu, labels, out):
    width, height, left, right, top, bottom = 720, 420, 70, 70, 30, 60
    plot_w, plot_h = width - left - right, height - top - bottom
    n = len(xs)

    def x_at(i):
        return left + (plot_w * i / (n - 1) if n > 1 else plot_w / 2)

    def y_at(value, top_value):
        return top + plot_h * (1 - value / top_value)

    top_tok, top_mfu = max(per_gpu) * 1.15, max(max(mfu) * 1.15, 1)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             'font-family="sans-serif" font-size="11">',
             f'<rect width="{width}" height="{height}" fill="white"/>',
             f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" stroke="black"/>',
             f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + plot_h}" stroke="black"/>',
             f'<line x1="{left + plot_w}" y1="{top}" x2="{left + plot_w}" y2="{top + plot_h}" stroke="black"/>']
    for k in range(5):
        value = top_tok * k / 4
        y = y_at(value, top_tok)
        parts.append(f'<text x="{left - 6}" y="{y + 4}" text-anchor="end" fill="#1f77b4">{value:,.0f}</text>')
        parts.append(f'<text x="{left + plot_w + 6}" y="{y + 4}" fill="#d62728">{top_mfu * k / 4:.0f}%</text>')
    for series, top_value, color in ((per_gpu, top_tok, "#1f77b4"), (mfu, top_mfu, "#d62728")):
        path = " ".join(f"{x_at(i):.1f},{y_at(v, top_value):.1f}" for i, v in enumerate(series))
        parts.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="2"/>')
        for i, v in enumerate(series):
            parts.append(f'<circle cx="{x_at(i):.1f}" cy="{y_at(v, top_value):.1f}" r="3" fill="{color}"/>')
    for i, (x, label) in enumerate(zip(xs, labels)):
        parts.append(f'<text x="{x_at(i):.1f}" y="{top + plot_h + 15}" text-anchor="middle">{x}</text>')
        parts.append(f'<text x="{x_at(i):.1f}" y="{top + plot_h + 28}" text-anchor="middle" '
                     f'font-size="8" fill="#555">{label.split(".mb")[0]}</text>')
    parts.append(f'<text x="{left + plot_w / 2}" y="{height - 8}" text-anchor="middle">'
                 f'{"GPUs" if axis == "gpus" else "sequence length"}</text>')
    parts.append(f'<text x="{left}" y="{top - 10}" fill="#1f77b4">tokens/s per GPU</text>')
    parts.append(f'<text x="{left + plot_w}" y="{top - 10}" text-anchor="end" fill="#d62728">MFU</text>')
    parts.append("</svg>")
    with open(out, "w") as f:
        f.write("\n".join(parts) + "\n")


def png(axis, xs, per_gpu, mfu, out):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        sys.exit("PNG output needs matplotlib; write an .svg instead")
    fig, left_axis = plt.subplots(figsize=(7, 4))
    left_axis.plot(xs, per_gpu, "o-", color="#1f77b4")
    left_axis.set_xlabel("GPUs" if axis == "gpus" else "sequence length")
    left_axis.set_ylabel("tokens/s per GPU", color="#1f77b4")
    right_axis = left_axis.twinx()
    right_axis.plot(xs, mfu, "s-", color="#d62728")
    right_axis.set_ylabel("MFU %", color="#d62728")
    if axis == "gpus":
        left_axis.set_xscale("log", base=2)
    fig.tight_layout()
    fig.savefig(out, dpi=120)


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    axis, xs, per_gpu, mfu, labels = load(sys.argv[1])
    if sys.argv[2].endswith(".png"):
        png(axis, xs, per_gpu, mfu, sys.argv[2])
    else:
        svg(axis, xs, per_gpu, mfu, labels, sys.argv[2])


if __name__ == "__main__":
    main()
