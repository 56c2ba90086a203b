"""Does ``visionlab data suspects`` find wrong labels? Flip 5 % of them and count what it finds.

For each task (cracks and waste by default) the photos of its folder of ``../shared/data`` are
linked (symlinks, nothing is copied) into a temporary folder in the same class-folder layout, with a
seeded random 5 % of them put under another class than their own. ``visionlab data suspects`` (the
CLI of the checkout on ``PYTHONPATH``, the task's recipe, default 5 folds, ``--method`` as given:
by default frozen features and a head per fold; ``fine-tune`` trains within ``--minutes`` per task)
runs on that folder, and the script prints, per task, the precision and the recall of its flagged
photos against the flipped ones (targets: both >= 0.8), with the exact command that ran::

    PYTHONPATH=src python benchmarks/suspects.py --json /tmp/suspects.json
    PYTHONPATH=src python benchmarks/suspects.py --method fine-tune --minutes 6

The temporary folder is removed afterwards; the shared data is never written.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
FOLDERS = {"cracks": "cracks", "waste": "waste", "caltech": "caltech101/101_ObjectCategories", "minerals": "minerals"}
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def flipped_copy(source: Path, target: Path, share: float, seed: int) -> tuple[set[str], int]:
    """Link every photo of ``source/<class>/`` into ``target/<class>/``, a random ``share`` of them
    (seeded) into another class's folder; returns (the flipped links' paths, photos linked)."""
    classes = sorted(d.name for d in source.iterdir() if d.is_dir() and not d.name.startswith((".", "_")))
    photos = [(c, p) for c in classes for p in sorted((source / c).iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES]
    rng = random.Random(seed)
    chosen = set(rng.sample(range(len(photos)), round(share * len(photos))))
    flipped: set[str] = set()
    for c in classes:
        (target / c).mkdir(parents=True)
    for i, (c, p) in enumerate(photos):
        label = rng.choice([o for o in classes if o != c]) if i in chosen else c
        link = target / label / p.name
        if link.exists():  # the same name in both classes: keep both
            link = target / label / f"{c}-{p.name}"
        link.symlink_to(p.resolve())
        if i in chosen:
            flipped.add(str(link))
    return flipped, len(photos)


def run_task(task: str, data: Path, out: Path, minutes: float, folds: int, extra: list[str], method: str = "auto") -> dict:
    """One ``visionlab data suspects`` run; precision and recall of its suspects.csv."""
    cmd = [sys.executable, "-m", "visionlab", "data", "suspects", "--task", task, "--data", str(data), "--out", str(out),
           "--folds", str(folds), "--method", method, *(["--minutes", str(minutes)] if method == "fine-tune" else []), *extra]
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=3600 + 120 * minutes, env={**os.environ, "COLUMNS": "200"})
    seconds = time.perf_counter() - start
    shown = " ".join(shlex.quote(a) for a in ["visionlab", *cmd[3:]])
    if done.returncode != 0:
        return {"command": shown, "error": " / ".join((done.stderr or done.stdout).strip().splitlines()[-3:]), "seconds": seconds}
    with (out / "suspects.csv").open(newline="", encoding="utf-8") as f:
        flagged = [r["path"] for r in csv.DictReader(f)]
    return {"command": shown, "seconds": round(seconds, 1), "flagged": flagged, "log": done.stdout}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(SHARED), help="the shared data folder")
    p.add_argument("--tasks", default="cracks,waste")
    p.add_argument("--method", default="auto", choices=("auto", "features", "fine-tune"), help="data suspects' --method")
    p.add_argument("--minutes", type=float, default=6.0, help="time budget of the K trainings, per task (--method fine-tune)")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--share", type=float, default=0.05, help="share of the labels flipped")
    p.add_argument("--seed", type=int, default=0, help="seed of the flips")
    p.add_argument("--set", dest="sets", action="append", default=[], help="a config key of the trainings (repeatable)")
    p.add_argument("--json", default=None, help="write every number here")
    args = p.parse_args()
    root = Path(args.data)
    if not root.is_dir():
        print(f"no data folder at {root}: point --data at the shared data", file=sys.stderr)
        return 2
    extra = [a for s in args.sets for a in ("--set", s)]
    results = {}
    for task in args.tasks.split(","):
        with tempfile.TemporaryDirectory(prefix=f"suspects-bench-{task}-") as tmp:
            flipped, n = flipped_copy(root / FOLDERS[task], Path(tmp) / "data", args.share, args.seed)
            r = run_task(task, Path(tmp) / "data", Path(tmp) / "out", args.minutes, args.folds, extra, args.method)
        r.update(task=task, photos=n, flipped=len(flipped))
        if "error" not in r:
            hit = len(set(r["flagged"]) & flipped)
            r.update(flagged_count=len(r["flagged"]), found=hit, precision=hit / max(1, len(r["flagged"])), recall=hit / max(1, len(flipped)))
        results[task] = r
        print(f"$ {r['command']}")
        if "error" in r:
            print(f"{task}: failed after {r['seconds']:.0f} s: {r['error']}")
            continue
        print("\n".join("  " + line for line in r["log"].splitlines() if line.startswith("fold ") or "flagged" in line or "budget" in line))
        print(f"{task}: {n} photos, {len(flipped)} flipped (seed {args.seed}); {r['flagged_count']} flagged, {hit} of them flipped: "
              f"precision {r['precision']:.3f}, recall {r['recall']:.3f} ({r['seconds']:.0f} s)")
    if args.json:
        Path(args.json).write_text(json.dumps({t: {k: v for k, v in r.items() if k not in ("log",)} for t, r in results.items()}, indent=2))
    return 0 if all("error" not in r for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
