#!/usr/bin/env python3
"""Predicted against measured for the runs of run_planned_layouts_on_gpus.sh.

usage: planned_layouts_report.py WORK MODEL GPUS WARM [METAMORPH KIND SEQ CALIBRATION]

WORK holds, per run NAME, its plan file plan_NAME.json and its metrics NAME.jsonl (best, more_tp,
more_pp, scaleN). Per run: the planner's step time and peak (its total less the workspace term:
CUDA context and NCCL buffers, which the arena does not hold) against the median step over the
steps after WARM and the largest arena peak of any rank; MFU at 989 TFLOP/s per GPU; under EP the
busiest EP rank's routed rows over its uniform share, averaged over the timed steps and layers,
and (given METAMORPH ...) the step and peak re-predicted with that `--moe-load`. Then whether the
planner's ranking of the three layouts held, and tokens/s per GPU against the smaller runs.
"""
import json
import os
import statistics
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from model_flops import expert_count, flops_per_token  # noqa: E402

PEAK_FLOPS = 989e12


def load_rows(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def expert_load(rows, ep, experts):
    """The busiest of the ep contiguous expert blocks over its uniform share, averaged."""
    shares = []
    for r in rows:
        for layer in r.get("moe", []):
            counts = layer["tokens_per_expert"]
            total = sum(counts)
            if total == 0:
                continue
            block = experts // ep
            busiest = max(sum(counts[i * block:(i + 1) * block]) for i in range(ep))
            shares.append(busiest / (total / ep))
    return statistics.mean(shares) if shares else None


def replan(args, model_path, plan, load):
    bin_, kind, seq, cal = args
    layout = plan["predictions"]
    cmd = [bin_, "plan", "--model", model_path, "--gpus",
           str(plan["world_size"]), "--gpus-per-node", str(plan["world_size"]), "--gpu", kind,
           "--seq", seq, "--global-batch", str(plan["global_batch"]), "--accounting", "metamorph",
           "--calibration", cal,
           "--tp", str(layout["tp"]), "--pp", str(layout["pp"]), "--ep", str(layout["ep"]),
           "--etp", str(layout["etp"]), "--dp", str(layout["dp"]),
           "--micro-batch", str(layout["micro_batch"]), "--recompute", layout["recompute"],
           "--zero1" if layout["zero1"] else "--no-zero1", "--moe-load", f"{load:.3f}",
           "--top", "1", "--json", "--no-save"]
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, check=True)
        c = json.loads(result.stdout)["candidates"][0]
        return c["step_time_s"], c["memory_bytes"]["total"] - c["memory_bytes"]["workspace"]
    except (subprocess.CalledProcessError, ValueError, KeyError, IndexError):
        return None


def main():
    work, model_path, gpus, warm = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    replan_args = sys.argv[5:9] if len(sys.argv) >= 9 else None
    cfg = json.load(open(model_path))
    experts = expert_count(cfg)
    names = ["best", "more_tp", "more_pp"] + sorted(
        (f[5:-5] for f in os.listdir(work) if f.startswith("plan_scale") and f.endswith(".json")),
        key=lambda n: int(n[5:]))
    runs = {}
    print("| run | layout | GPUs | predicted step | measured step | error | predicted peak | "
          "measured peak | error | tokens/s | MFU | EP load | step at that load | error | "
          "peak at that load | error |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name in names:
        try:
            plan = json.load(open(f"{work}/plan_{name}.json"))
            rows = load_rows(f"{work}/{name}.jsonl")
        except (OSError, ValueError) as e:
            print(f"| {name} | no figures ({e}) |")
            continue
        p = plan["predictions"]
        n = plan["world_size"]
        timed = [r for r in rows if r["step"] > warm] or rows[len(rows) // 2:]
        tps = statistics.median(r["tokens_per_s"] for r in timed)
        step = plan["global_batch"] * plan["seq"] / tps
        peak = max(r.get("peak_bytes_max", r["peak_bytes"]) for r in rows)
        predicted_peak = p["memory_bytes"]["total"] - p["memory_bytes"]["workspace"]
        mfu = tps * flops_per_token(cfg, plan["seq"]) / (n * PEAK_FLOPS)
        load = expert_load(timed, p["ep"], experts) if experts and p["ep"] > 1 else None
        at_load = replan(replan_args, model_path, plan, load) if load and replan_args else None
        runs[name] = dict(n=n, tps=tps, predicted_tps=p["tokens_per_s"], layout=p["layout"])
        cells = [name, p["layout"], str(n), f"{p['step_time_s']:.3f} s", f"{step:.3f} s",
                 f"{100 * (p['step_time_s'] / step - 1):+.1f}%", f"{predicted_peak / 1e9:.2f} GB",
                 f"{peak / 1e9:.2f} GB", f"{100 * (predicted_peak / peak - 1):+.1f}%",
                 f"{tps:.0f}", f"{100 * mfu:.1f}%", f"{load:.3f}" if load else "",
                 f"{at_load[0]:.3f} s" if at_load else "",
                 f"{100 * (at_load[0] / step - 1):+.1f}%" if at_load else "",
                 f"{at_load[1] / 1e9:.2f} GB" if at_load else "",
                 f"{100 * (at_load[1] / peak - 1):+.1f}%" if at_load else ""]
        print("| " + " | ".join(cells) + " |")
        print(f"  ({name}: median of {len(timed)} steps after step {warm}, losses "
              f"{rows[0]['loss']:.4f} -> {rows[-1]['loss']:.4f})")
    three = [n for n in ("best", "more_tp", "more_pp") if n in runs]
    if len(three) > 1:
        by_plan = sorted(three, key=lambda n: -runs[n]["predicted_tps"])
        by_run = sorted(three, key=lambda n: -runs[n]["tps"])
        print(f"ranking: planner {' > '.join(by_plan)}, measured {' > '.join(by_run)}: "
              + ("the planner's ranking held" if by_plan == by_run else "the ranking differs")
              + ("; its best was measured fastest" if by_run[0] == "best" else
                 f"; measured fastest: {by_run[0]}"))
    smaller = sorted((r["n"], name) for name, r in runs.items() if name.startswith("scale"))
    if "best" in runs:
        for _, base in smaller:
            b, r = runs[base], runs["best"]
            print(f"scaling {b['n']} -> {r['n']} GPUs ({b['layout']} -> {r['layout']}): "
                  f"{b['tps'] / b['n']:.0f} -> {r['tps'] / r['n']:.0f} tokens/s per GPU, "
                  f"{100 * (r['tps'] / r['n']) / (b['tps'] / b['n']):.1f}%")


if __name__ == "__main__":
    main()
