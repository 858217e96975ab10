#!/usr/bin/env python3
"""Expert load over training from a metrics.jsonl of an MoE run: for every MoE layer, the share
of routed slots each expert received at each step (a heat map), and the coefficient of
variation of the load. usage: plot_expert_load.py METRICS.jsonl OUT.png [TITLE]"""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def main():
    metrics, out = sys.argv[1], sys.argv[2]
    title = sys.argv[3] if len(sys.argv) > 3 else "expert load"
    rows = [json.loads(line) for line in open(metrics) if line.strip()]
    rows = [r for r in rows if r.get("moe")]
    if not rows:
        sys.exit(f"{metrics}: no MoE metrics (was the model an MoE?)")
    layers = [m["layer"] for m in rows[0]["moe"]]
    steps = np.array([r["step"] for r in rows])
    fig, axes = plt.subplots(len(layers) + 1, 1, figsize=(9, 2.2 * (len(layers) + 1)),
                             sharex=True, constrained_layout=True)
    for ax, layer in zip(axes, layers):
        load = np.array([[m for m in r["moe"] if m["layer"] == layer][0]["tokens_per_expert"]
                         for r in rows])
        share = load / np.maximum(load.sum(axis=1, keepdims=True), 1)
        image = ax.imshow(share.T, aspect="auto", origin="lower", cmap="viridis",
                          extent=[steps[0] - 0.5, steps[-1] + 0.5, -0.5, share.shape[1] - 0.5],
                          vmin=0, vmax=max(2.0 / share.shape[1], share.max()))
        ax.set_ylabel(f"layer {layer}\nexpert")
        fig.colorbar(image, ax=ax, label="share of slots")
    for layer in layers:
        cv = [[m for m in r["moe"] if m["layer"] == layer][0]["tokens_cv"] for r in rows]
        axes[-1].plot(steps, cv, label=f"layer {layer}")
    axes[-1].set_ylabel("load CV")
    axes[-1].set_xlabel("step")
    axes[-1].legend(ncol=len(layers), fontsize="small")
    fig.suptitle(title)
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
