#!/usr/bin/env python3
"""Compares the loss curves of metamorph runs (metrics JSONL files) against a reference run.

usage: compare_loss_curves.py TOLERANCE REFERENCE.jsonl NAME=RUN.jsonl[,RUN2.jsonl...] ...

A run given as several files (a checkpointed run and its resumption) is joined by step. Every
step a run has must be within TOLERANCE (relative) of the reference's loss at that step; the
first step (the untrained model) within a quarter of it. Prints one line per run with the
largest deviation and exits 1 if any run is outside the tolerance or misses steps.
"""
import json
import sys


def losses(paths):
    by_step = {}
    for path in paths.split(","):
        with open(path) as f:
            for line in f:
                if line.strip():
                    row = json.loads(line)
                    by_step[row["step"]] = row["loss"]
    return by_step


def main():
    tolerance = float(sys.argv[1])
    reference = losses(sys.argv[2])
    failed = False
    for arg in sys.argv[3:]:
        name, paths = arg.split("=", 1)
        try:
            run = losses(paths)
        except (OSError, ValueError, KeyError) as e:
            print(f"{name}: FAIL, no metrics ({e})")
            failed = True
            continue
        missing = sorted(set(reference) - set(run))
        worst, worst_step = 0.0, None
        bad = []
        for step, loss in sorted(run.items()):
            if step not in reference:
                continue
            rel = abs(loss - reference[step]) / abs(reference[step])
            bound = tolerance / 4 if step == min(reference) else tolerance
            if rel > worst:
                worst, worst_step = rel, step
            if rel > bound:
                bad.append(step)
        ok = not bad and not missing
        failed |= not ok
        first = min(run) if run else None
        print(f"{name}: {'ok' if ok else 'FAIL'}, steps {first}..{max(run) if run else None}, "
              f"largest relative deviation {worst:.4f} at step {worst_step}"
              + (f", outside at steps {bad[:8]}" if bad else "")
              + (f", missing steps {missing[:8]}" if missing else ""))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
