"""Behaviour unchanged? Train the five recipes briefly on seed 42 and print every number they give.

A restructuring must not change what the library computes. This script trains each built-in task's
recipe (``configs/<task>.yaml``) for a few epochs on its folder of ``../shared/data`` with seed 42,
through the CLI of whichever checkout is on ``PYTHONPATH``, and prints, per task, the training
loss and validation metric of every epoch and the test-split metrics of best.pt (from the run's
``metrics.csv`` and ``summary.json``). Run it on the code before and after, with ``--json``, then
``--compare before.json after.json`` prints both side by side and the largest difference::

    PYTHONPATH=/path/to/before/src python benchmarks/same_numbers.py --json /tmp/before.json
    PYTHONPATH=src python benchmarks/same_numbers.py --json /tmp/after.json
    python benchmarks/same_numbers.py --compare /tmp/before.json /tmp/after.json

On CPU with the same thread count the numbers are bit for bit the same when nothing changed.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
FOLDERS = {"cracks": "cracks", "caltech": "caltech101", "waste": "waste", "minerals": "minerals", "landcover": "landcover"}


def run_task(task: str, data: Path, epochs: int, seed: int, runs: Path, timeout: float) -> dict:
    """One short training through the CLI; the numbers of its metrics.csv and summary.json."""
    name = f"same-{seed}-{epochs}"
    cmd = [sys.executable, "-m", "visionlab", "train", "--task", task, "--data", str(data), "--seed", str(seed),
           "--epochs", str(epochs), "--out", str(runs), "--name", name]
    start = time.perf_counter()
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"still training after {timeout:.0f} s (raise --timeout)", "seconds": round(timeout, 1)}
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        return {"error": " / ".join(tail), "seconds": seconds}
    run = runs / task / name
    with open(run / "metrics.csv", newline="") as f:
        history = [{k: float(v) for k, v in row.items() if v not in ("", None) and _is_number(v)} for row in csv.DictReader(f)]
    summary = json.loads((run / "summary.json").read_text())
    return {"history": history, "test": summary.get("test", {}), "seconds": round(seconds, 1)}


def _is_number(v: str) -> bool:
    try:
        float(v)
    except ValueError:
        return False
    return True


def numbers(result: dict) -> dict[str, float]:
    """Every number of one task's result, flat: epoch<N>.<column> and test.<metric> (times left out)."""
    out = {}
    for i, row in enumerate(result.get("history", []), 1):
        for k, v in row.items():
            if not any(w in k for w in ("time", "second", "lr_", "img_s", "memory")):
                out[f"epoch{i}.{k}"] = v
    for k, v in result.get("test", {}).items():
        if isinstance(v, (int, float)):
            out[f"test.{k}"] = float(v)
    return out


def compare(before: dict, after: dict) -> int:
    worst = 0.0
    print("| task | numbers | equal | largest difference | test metrics before | test metrics after |")
    print("|---|---|---|---|---|---|")
    for task in before:
        a, b = numbers(before[task]), numbers(after.get(task, {}))
        keys = sorted(set(a) | set(b))
        diffs = [abs(a[k] - b[k]) if k in a and k in b else math.inf for k in keys]
        largest = max(diffs, default=0.0)
        worst = max(worst, largest)
        equal = sum(d == 0 for d in diffs)
        show = lambda r: ", ".join(f"{k} {v:.6f}" for k, v in r.get("test", {}).items() if k in ("accuracy", "macro_f1", "miou", "loss"))
        print(f"| {task} | {len(keys)} | {equal} | {largest:.3g} | {show(before[task])} | {show(after.get(task, {}))} |")
    print(f"\nlargest difference over all numbers: {worst:.3g}")
    return 0 if worst == 0 else 1


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(SHARED), help="root holding the task folders (default ../shared/data)")
    p.add_argument("--tasks", default=",".join(FOLDERS))
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--json", default=None, help="write every number here (after each task)")
    p.add_argument("--timeout", type=float, default=3 * 3600, help="seconds one training may take")
    p.add_argument("--compare", nargs=2, metavar=("BEFORE", "AFTER"), help="compare two --json files and exit")
    args = p.parse_args()
    if args.compare:
        before, after = (json.loads(Path(f).read_text()) for f in args.compare)
        return compare(before, after)
    root = Path(args.data)
    if not root.is_dir():
        print(f"no data folder at {root}: point --data at the shared data", file=sys.stderr)
        return 2
    import visionlab

    print(f"visionlab from {Path(visionlab.__file__).parent}, {os.cpu_count()} CPUs")
    results = {}
    with tempfile.TemporaryDirectory(prefix="same-numbers-") as runs:
        for task in args.tasks.split(","):
            results[task] = run_task(task, root / FOLDERS[task], args.epochs, args.seed, Path(runs), args.timeout)
            r = results[task]
            print(f"{task}: {r.get('error') or r['test']}  ({r['seconds']} s)", flush=True)
            if args.json:  # after each task: a long run that is stopped keeps what it measured
                Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
