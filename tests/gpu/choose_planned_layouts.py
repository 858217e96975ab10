#!/usr/bin/env python3
"""Picks the layouts the eight-GPU issue trains from `metamorph plan --json` output.

usage: choose_planned_layouts.py PLAN.json   (from `plan --accounting metamorph`, which ranks
only layouts the runtime executes)

Prints three lines "NAME RANK LAYOUT PLAN-FLAGS...": the planner's best layout ("best") and two
it ranks lower: one with more TP than the best ("more_tp") and one with more PP ("more_pp"). Of all such pairs the
one taken covers the most of TP, PP, EP and DP > 1 across the three, then has the best ranks.
The flags pin `metamorph plan` to that candidate, so that `--top 1 --out F` writes its plan file.
Exits 1 with a message when no pair exists.
"""
import itertools
import json
import sys

DIMS = ("tp", "pp", "ep", "dp")


def flags(c):
    return (f"--tp {c['tp']} --pp {c['pp']} --ep {c['ep']} --etp {c['etp']} "
            f"--dp {c['dp']} --micro-batch {c['micro_batch']} --recompute {c['recompute']} "
            + ("--zero1" if c["zero1"] else "--no-zero1"))


def main():
    ranked = json.load(open(sys.argv[1]))["candidates"]
    if not ranked:
        sys.exit("no layout in the plan")
    best, rest = ranked[0], list(enumerate(ranked))[1:]
    more_tp = [(i, c) for i, c in rest if c["tp"] > best["tp"]]
    more_pp = [(i, c) for i, c in rest if c["pp"] > best["pp"]]
    pairs = [(a, b) for a, b in itertools.product(more_tp, more_pp) if a[1] is not b[1]]
    if not pairs:
        sys.exit(f"no pair of lower-ranked layouts with more TP ({len(more_tp)}) and more PP "
                 f"({len(more_pp)}) than {best['layout']}")

    def covered(a, b):
        return sum(any(c[d] > 1 for c in (best, a[1], b[1])) for d in DIMS)

    a, b = max(pairs, key=lambda p: (covered(*p), -(p[0][0] + p[1][0])))
    for name, (rank, c) in (("best", (0, best)), ("more_tp", a), ("more_pp", b)):
        print(name, rank + 1, c["layout"], flags(c))


if __name__ == "__main__":
    main()
