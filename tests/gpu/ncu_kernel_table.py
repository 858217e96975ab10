"""GPU time by kernel family from `ncu --csv --page raw --metrics gpu__time_duration.sum` logs.

Usage: ncu_kernel_table.py STEPS NAME=LOG [NAME=LOG ...]
Prints, per log, the milliseconds per training step of each kernel family (GEMM, attention,
norms, elementwise, ...), and for a second log against the first the excess over half of the
first (what a two-way split of the first run's work would take), so a tp2 run's losses show by
family. ncu runs kernels one at a time: the times are the kernels' own, without overlap.
"""
import csv
import re
import sys
from collections import defaultdict

FAMILIES = [
    ("nccl", r"nccl"),
    ("attention", r"attention"),
    ("gemm", r"gemm|sm90_|sm80_|cutlass|nvjet|xmma|cublas"),
    ("rmsnorm", r"rmsnorm"),
    ("rope", r"rope"),
    ("swiglu", r"swiglu"),
    ("cross_entropy", r"cross_entropy|row_max|logsumexp|softmax"),
    ("embedding", r"embedding"),
    ("moe routing", r"router|permute|combine|gather_rows|row_dot|moe"),
    ("adamw / norm", r"adamw|squared|grad_norm|scale"),
    ("axpy / copy / fill", r"axpy|copy|fill|add|convert|cast"),
]
UNITS = {"nsecond": 1e-6, "usecond": 1e-3, "msecond": 1.0, "second": 1e3}


def family(name):
    for fam, pattern in FAMILIES:
        if re.search(pattern, name, re.IGNORECASE):
            return fam
    return "other"


def read(path):
    rows = [r for r in csv.reader(l for l in open(path, errors="replace") if l.startswith('"'))]
    head = rows[0]
    name_col, time_col = head.index("Kernel Name"), head.index("gpu__time_duration.sum")
    scale = 1e-6
    times, top = defaultdict(float), defaultdict(float)
    for r in rows[1:]:
        if len(r) <= time_col:
            continue
        if r[time_col] in UNITS:
            scale = UNITS[r[time_col]]
            continue
        try:
            ms = float(r[time_col].replace(",", "")) * scale
        except ValueError:
            continue
        times[family(r[name_col])] += ms
        top[r[name_col][:90]] += ms
    return times, top


def main():
    steps = float(sys.argv[1])
    runs = [a.split("=", 1) for a in sys.argv[2:]]
    tables = {}
    for name, path in runs:
        try:
            tables[name] = read(path)
        except Exception as e:  # a missing or empty log: say so, go on
            print(f"{name}: no kernel times ({e})")
    if not tables:
        return
    names = list(tables)
    fams = sorted({f for t, _ in tables.values() for f in t},
                  key=lambda f: -tables[names[0]][0].get(f, 0.0))
    print("ms per step by kernel family (ncu, kernels serialised)")
    header = f"{'family':20s}" + "".join(f"{n:>16s}" for n in names)
    if len(names) >= 2:
        header += f"{'excess over ' + names[0] + '/2':>30s}"
    print(header)
    for f in fams + ["total"]:
        vals = [(sum(t.values()) if f == "total" else t.get(f, 0.0)) / steps for t, _ in
                tables.values()]
        line = f"{f:20s}" + "".join(f"{v:16.1f}" for v in vals)
        if len(vals) >= 2:
            line += f"{vals[1] - vals[0] / 2:30.1f}"
        print(line)
    for name, (_, top) in tables.items():
        print(f"{name}: costliest kernels, ms per step")
        for k, v in sorted(top.items(), key=lambda kv: -kv[1])[:12]:
            print(f"  {v / steps:8.2f}  {k}")


if __name__ == "__main__":
    main()
