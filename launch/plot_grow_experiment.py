#!/usr/bin/env python3
"""Summarises launch/grow_experiment.sh: validation loss against total training FLOPs for L from
scratch and for every grown variant (S's FLOPs included), the FLOP saving at equal validation loss,
and each variant's loss right after growth. Writes OUT/results.json, OUT/results.md and
OUT/loss_vs_flops.svg (plain SVG: no plotting package needed).

    plot_grow_experiment.py OUT_DIR
"""
import glob
import json
import os
import sys


def compute_params(cfg):
    """Parameters that take part in matmuls per token: every layer's projections and the LM head
    (the embedding lookup costs no FLOPs; norms are negligible)."""
    h, f = cfg["hidden_size"], cfg["intermediate_size"]
    d = cfg.get("head_dim") or h // cfg["num_attention_heads"]
    q, kv = cfg["num_attention_heads"] * d, cfg["num_key_value_heads"] * d
    per_layer = h * q + 2 * h * kv + q * h + 3 * h * f
    return cfg["num_hidden_layers"] * per_layer + cfg["vocab_size"] * h


def flops_per_token(cfg, seq):
    """DESIGN.md section 6: 6 N (forward + backward) plus 12 l q s for attention scores and values
    (full square, i.e. not halved for the causal mask; the same convention for every run)."""
    d = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    q = cfg["num_attention_heads"] * d
    return 6 * compute_params(cfg) + 12 * cfg["num_hidden_layers"] * q * seq


def read_metrics(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def curve(rows, per_token, offset):
    """(flops, val_loss) at every evaluation."""
    return [(offset + r["tokens"] * per_token, r["val_loss"]) for r in rows if "val_loss" in r]


def flops_to_reach(points, target):
    """First FLOP count at which the validation loss is <= target, linearly interpolated."""
    prev = None
    for x, y in points:
        if y <= target:
            if prev is None or prev[1] == y:
                return x
            px, py = prev
            return px + (x - px) * (py - target) / (py - y)
        prev = (x, y)
    return None


def svg(curves, path):
    width, height, pad = 760, 460, 60
    xs = [x for c in curves.values() for x, _ in c]
    ys = [y for c in curves.values() for _, y in c]
    if not xs:
        return
    x0, x1 = 0.0, max(xs)
    y0, y1 = min(ys), max(ys)
    y1 = min(y1, y0 + 3 * (sorted(ys)[len(ys) // 2] - y0) + 1e-9)  # keep early spikes in view
    sx = lambda x: pad + (width - 2 * pad) * (x - x0) / ((x1 - x0) or 1)
    sy = lambda y: height - pad - (height - 2 * pad) * (min(y, y1) - y0) / ((y1 - y0) or 1)
    colours = ["#000000", "#d62728", "#1f77b4", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b"]
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'font-family="sans-serif" font-size="12">',
           f'<rect width="{width}" height="{height}" fill="white"/>',
           f'<line x1="{pad}" y1="{height - pad}" x2="{width - pad}" y2="{height - pad}" stroke="black"/>',
           f'<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{height - pad}" stroke="black"/>',
           f'<text x="{width / 2}" y="{height - 15}" text-anchor="middle">total training FLOPs '
           f'(S included), max {x1:.3g}</text>',
           f'<text x="15" y="{height / 2}" transform="rotate(-90 15 {height / 2})" '
           f'text-anchor="middle">validation loss</text>']
    for i in range(5):
        y = y0 + (y1 - y0) * i / 4
        out.append(f'<text x="{pad - 5}" y="{sy(y) + 4}" text-anchor="end">{y:.2f}</text>')
        x = x0 + (x1 - x0) * i / 4
        out.append(f'<text x="{sx(x)}" y="{height - pad + 16}" text-anchor="middle">{x:.2g}</text>')
    for i, (name, points) in enumerate(curves.items()):
        colour = colours[i % len(colours)]
        line = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in points)
        out.append(f'<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{line}"/>')
        out.append(f'<text x="{width - pad - 250}" y="{pad + 16 * i}" fill="{colour}">{name}</text>')
    out.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")


def main(out):
    small_cfg = json.load(open(f"{out}/small.json"))
    large_cfg = json.load(open(f"{out}/large.json"))
    seq = small_cfg["max_position_embeddings"]
    f_small, f_large = flops_per_token(small_cfg, seq), flops_per_token(large_cfg, seq)
    small = read_metrics(f"{out}/small.jsonl")
    small_flops = small[-1]["tokens"] * f_small
    small_val = [r["val_loss"] for r in small if "val_loss" in r]
    curves = {"S (small)": curve(small, f_small, 0),
              "L from scratch": curve(read_metrics(f"{out}/scratch.jsonl"), f_large, 0)}
    results = {"flops_per_token": {"small": f_small, "large": f_large},
               "small": {"flops": small_flops, "final_val_loss": small_val[-1] if small_val else None,
                         "final_train_loss": small[-1]["loss"]},
               "scratch": {"final_val_loss": curves["L from scratch"][-1][1],
                           "flops": curves["L from scratch"][-1][0]},
               "grown": {}}
    for path in sorted(glob.glob(f"{out}/grown_*.jsonl")):
        name = os.path.basename(path)[:-len(".jsonl")]
        rows = read_metrics(path)
        points = curve(rows, f_large, small_flops)
        curves[name] = [(small_flops, rows[0]["loss"])] + points
        scratch = curves["L from scratch"]
        # Equal validation loss: the worse of the two final losses, which both runs reach.
        target = max(scratch[-1][1], points[-1][1])
        grown_at, scratch_at = flops_to_reach(points, target), flops_to_reach(scratch, target)
        grow_info = {}
        if os.path.exists(f"{out}/{name}.grow.json"):
            grow_info = json.load(open(f"{out}/{name}.grow.json"))
        results["grown"][name] = {
            "loss_after_growth": rows[0]["loss"],  # step 1's loss: the grown weights, untrained
            "logit_deviation": grow_info.get("logit_deviation"),
            "final_val_loss": points[-1][1],
            "equal_loss_target": target,
            "flops_to_target": grown_at,
            "scratch_flops_to_target": scratch_at,
            "flop_saving": (1 - grown_at / scratch_at) if grown_at and scratch_at else None,
        }
    with open(f"{out}/results.json", "w") as f:
        json.dump(results, f, indent=2)
    lines = ["| run | loss right after growth | final val loss | FLOPs to equal val loss | "
             "L-from-scratch FLOPs to it | FLOP saving |", "|---|---|---|---|---|---|"]
    for name, r in results["grown"].items():
        saving = f"{100 * r['flop_saving']:.1f}%" if r["flop_saving"] is not None else "n/a"
        fmt = lambda v: f"{v:.3g}" if v is not None else "n/a"
        lines.append(f"| {name} | {r['loss_after_growth']:.3f} | {r['final_val_loss']:.3f} | "
                     f"{fmt(r['flops_to_target'])} | {fmt(r['scratch_flops_to_target'])} | {saving} |")
    lines.append("")
    lines.append(f"S: final train loss {results['small']['final_train_loss']:.3f}, final val loss "
                 f"{results['small']['final_val_loss']}, {small_flops:.3g} FLOPs; L from scratch: "
                 f"final val loss {results['scratch']['final_val_loss']:.3f} at "
                 f"{results['scratch']['flops']:.3g} FLOPs.")
    with open(f"{out}/results.md", "w") as f:
        f.write("\n".join(lines) + "\n")
    svg(curves, f"{out}/loss_vs_flops.svg")
    print("\n".join(lines))


if __name__ == "__main__":
    main(sys.argv[1])
