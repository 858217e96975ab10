#!/usr/bin/env python3
"""Summarises launch/upcycle_experiment.sh: validation loss against tokens and against training
FLOPs for the dense model D, D continued, the MoE upcycled from D and continued on the same
tokens, and the same MoE trained from scratch; expert load (coefficient of variation of the
tokens per expert) and router entropy per MoE layer over training. Writes OUT/results.json,
OUT/results.md, OUT/loss_vs_tokens.svg, OUT/loss_vs_flops.svg, OUT/expert_load.svg and
OUT/router_entropy.svg.

    plot_upcycle_experiment.py OUT_DIR
"""
import glob
import json
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from svg_plot import line_plot  # noqa: E402


def is_moe_layer(cfg, layer):
    return (cfg.get("num_experts", 0) > 0 and layer >= cfg.get("first_k_dense_replace", 0)
            and (layer + 1) % cfg.get("decoder_sparse_step", 1) == 0)


def active_matmul_params(cfg):
    """Parameters in matmuls per token: attention projections, the FFN (for an MoE layer the
    router, the top-k experts and the shared expert) and the LM head; the embedding lookup costs
    no FLOPs and norms are negligible."""
    h, f = cfg["hidden_size"], cfg["intermediate_size"]
    d = cfg.get("head_dim") or h // cfg["num_attention_heads"]
    q, kv = cfg["num_attention_heads"] * d, cfg["num_key_value_heads"] * d
    n = cfg["vocab_size"] * h
    for layer in range(cfg["num_hidden_layers"]):
        n += h * q + 2 * h * kv + q * h
        if is_moe_layer(cfg, layer):
            n += h * cfg["num_experts"] + cfg["num_experts_per_tok"] * 3 * h * cfg["moe_intermediate_size"]
            n += 3 * h * cfg.get("shared_expert_intermediate_size", 0)
        else:
            n += 3 * h * f
    return n


def flops_per_token(cfg, seq):
    """DESIGN.md section 6: 6 N_active (forward + backward) plus 12 l q s for attention scores and
    values (the full square, the same convention for every run)."""
    d = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    return 6 * active_matmul_params(cfg) + 12 * cfg["num_hidden_layers"] * cfg["num_attention_heads"] * d * seq


def read_metrics(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def val_curve(rows, offset=0):
    """(tokens, val_loss) at every evaluation."""
    return [(offset + r["tokens"], r["val_loss"]) for r in rows if "val_loss" in r]


def first_reaching(points, target):
    """First x at which y <= target, linearly interpolated; None if never."""
    prev = None
    for x, y in points:
        if y <= target:
            if prev is None or prev[1] == y:
                return x
            px, py = prev
            return px + (x - px) * (py - target) / (py - y)
        prev = (x, y)
    return None


def main(out):
    dense_cfg = json.load(open(f"{out}/dense.json"))
    moe_cfg = json.load(open(f"{out}/moe.json"))
    seq = dense_cfg["max_position_embeddings"]
    per_token = {"dense": flops_per_token(dense_cfg, seq), "moe": flops_per_token(moe_cfg, seq)}
    upcycled = sorted(os.path.basename(p)[:-len(".jsonl")] for p in glob.glob(f"{out}/upcycled*.jsonl"))
    names = ["dense", "dense_continued"] + upcycled + ["moe_scratch"]
    runs = {name: read_metrics(f"{out}/{name}.jsonl") for name in names}
    moe_runs = upcycled + ["moe_scratch"]
    d_tokens = runs["dense"][-1]["tokens"]
    d_final = val_curve(runs["dense"])[-1][1]
    kinds = {name: "moe" if name in moe_runs else "dense" for name in names}
    offsets = {name: d_tokens if name in upcycled or name == "dense_continued" else 0 for name in names}

    by_tokens, by_flops, results = {}, {}, {"flops_per_token": per_token, "runs": {}}
    for name, rows in runs.items():
        points = val_curve(rows, offsets[name])
        if offsets[name]:
            points = [(d_tokens, d_final)] + points  # both continued runs start at D's function
        by_tokens[name] = points
        # FLOPs: D's tokens at the dense rate, then the run's own tokens at its rate.
        base = per_token["dense"] * offsets[name]
        by_flops[name] = [(base + (t - offsets[name]) * per_token[kinds[name]], y) for t, y in points]
        results["runs"][name] = {
            "first_step_loss": rows[0]["loss"],
            "final_val_loss": points[-1][1],
            "total_tokens": points[-1][0],
            "total_flops": by_flops[name][-1][0],
        }
        moe_rows = [r for r in rows if "moe" in r]
        if moe_rows:
            last = moe_rows[-1]["moe"]
            results["runs"][name]["final_expert_load_cv"] = {l["layer"]: l["tokens_cv"] for l in last}
            results["runs"][name]["final_router_entropy"] = {l["layer"]: l["router_entropy"] for l in last}
            results["runs"][name]["first_expert_load_cv"] = {
                l["layer"]: l["tokens_cv"] for l in moe_rows[0]["moe"]}
        if os.path.exists(f"{out}/{name}.upcycle.json"):
            results["runs"][name]["logit_deviation"] = json.load(
                open(f"{out}/{name}.upcycle.json"))["logit_deviation"]

    # Equal validation loss: the dense continuation's final loss, if the upcycled run reaches it.
    target = results["runs"]["dense_continued"]["final_val_loss"]
    comparison = {"target_val_loss": target}
    for name in names[1:]:
        comparison[name] = {"tokens": first_reaching(by_tokens[name], target),
                            "flops": first_reaching(by_flops[name], target)}
    results["equal_loss"] = comparison
    with open(f"{out}/results.json", "w") as f:
        json.dump(results, f, indent=2)

    fmt = lambda v: f"{v:.3g}" if v is not None else "not reached"
    lines = ["| run | first-step train loss | final val loss | total tokens | total FLOPs | "
             f"tokens to val loss {target:.3f} | FLOPs to it |", "|---|---|---|---|---|---|---|"]
    for name, r in results["runs"].items():
        eq = comparison.get(name, {"tokens": None, "flops": None})
        lines.append(f"| {name} | {r['first_step_loss']:.3f} | {r['final_val_loss']:.3f} | "
                     f"{r['total_tokens']} | {r['total_flops']:.3g} | "
                     f"{fmt(eq['tokens']) if name != 'dense' else '-'} | "
                     f"{fmt(eq['flops']) if name != 'dense' else '-'} |")
    lines.append("")
    lines.append("| run | layer | expert load CV at step 1 | at the end | router entropy at the end "
                 f"(max ln E = {math.log(moe_cfg['num_experts']):.3f}) |")
    lines.append("|---|---|---|---|---|")
    for name in moe_runs:
        r = results["runs"][name]
        for layer, cv in r.get("final_expert_load_cv", {}).items():
            lines.append(f"| {name} | {layer} | {r['first_expert_load_cv'][layer]:.3f} | {cv:.3f} | "
                         f"{r['final_router_entropy'][layer]:.3f} |")
    lines.append("")
    lines.append(f"FLOPs per token: dense {per_token['dense']:.3g}, MoE {per_token['moe']:.3g} "
                 f"({moe_cfg['num_experts']} experts, top-{moe_cfg['num_experts_per_tok']}).")
    with open(f"{out}/results.md", "w") as f:
        f.write("\n".join(lines) + "\n")

    line_plot(by_tokens, f"{out}/loss_vs_tokens.svg", "training tokens (D's included)", "validation loss")
    line_plot(by_flops, f"{out}/loss_vs_flops.svg", "training FLOPs (D's included)", "validation loss")
    load, entropy = {}, {}
    for name in moe_runs:
        for r in runs[name]:
            for l in r.get("moe", []):
                key = f"{name} layer {l['layer']}"
                x = offsets[name] + r["tokens"]
                load.setdefault(key, []).append((x, l["tokens_cv"]))
                entropy.setdefault(key, []).append((x, l["router_entropy"]))
    line_plot(load, f"{out}/expert_load.svg", "training tokens (D's included)",
              "expert load: CV of tokens per expert", clip_spikes=False)
    line_plot(entropy, f"{out}/router_entropy.svg", "training tokens (D's included)",
              "router entropy (nats)", clip_spikes=False,
              hline=(math.log(moe_cfg["num_experts"]), "ln E (uniform)"))
    print("\n".join(lines))


if __name__ == "__main__":
    main(sys.argv[1])
