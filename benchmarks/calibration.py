"""Is the confidence what it says? ECE, NLL and Brier score of every classifier recipe on its test
split, before and after the temperature that training fits on the validation split (#22).

Each task's recipe (``configs/<task>.yaml``) is trained through the CLI of the checkout on
``PYTHONPATH`` on its folder of ``../shared/data``, once per split seed (``--seed``: the split and
the training's random numbers). Then, in this process, best.pt's network runs over the test split
(the recipe's test-time augmentation included) and the scores are pooled over the seeds: each
seed's test images with that seed's own temperature ("after") and with none ("before"). ECE is
torchmetrics' ``MulticlassCalibrationError`` (15 bins, L1), as ``visionlab evaluate`` reports it.
Target: ECE <= 0.03 after, on each task.

    python benchmarks/calibration.py                                  # 4 recipes x seeds 0, 1, 2
    python benchmarks/calibration.py --tasks cracks --seeds 0 --epochs 2 --json /tmp/cal.json

``--runs`` keeps the runs (default: a temporary folder); a run already there is measured again
without training it again. ``--refit`` fits the temperature of such a run again with the code on
``PYTHONPATH`` (``Kind.calibrate`` on best.pt and its validation split, as training ends), for runs
trained before the fit changed.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
FOLDERS = {"cracks": "cracks", "caltech": "caltech101", "waste": "waste", "minerals": "minerals"}
TARGET_ECE = 0.03


def train(task: str, data: Path, seed: int, epochs: int | None, runs: Path) -> tuple[Path, float]:
    """best.pt of one training of the recipe through the CLI (an existing one is kept), and its seconds."""
    name = f"cal-{seed}" + (f"-e{epochs}" if epochs else "")
    best = runs / task / name / "best.pt"
    if best.exists() and (best.parent / "summary.json").exists():
        return best, 0.0
    cmd = [sys.executable, "-m", "visionlab", "train", "--task", task, "--data", str(data), "--seed", str(seed),
           "--out", str(runs), "--name", name] + (["--epochs", str(epochs)] if epochs else [])
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=4 * 3600)
    if done.returncode != 0:
        raise SystemExit(f"{task} seed {seed}: training failed: " + " / ".join((done.stderr or done.stdout).strip().splitlines()[-3:]))
    return best, time.perf_counter() - start


def test_scores(best: Path, refit: bool = False) -> dict[str, Any]:
    """best.pt's raw (V, N, C) test-split logits, their labels and its temperature (fitted again: ``refit``)."""
    import torch

    from visionlab.config import config_from_dict
    from visionlab.engine.checkpoint import load_checkpoint, load_model
    from visionlab.engine.device import resolve_precision
    from visionlab.kinds import get_kind
    from visionlab.registry import get_task

    state = load_checkpoint(best)
    kind = get_kind(state["kind"])
    cfg = config_from_dict(state["config"], kind.options)
    runner = kind.runner(cfg, get_task(state["task"]), torch.device("cpu"))
    runner.use_saved(state)
    runner.prepare()
    model = load_model(state)
    if refit:
        runner.calibration = kind.calibrate(runner, model)
    views, y, _ = runner.views(model, "test", resolve_precision("fp32", torch.device("cpu")).autocast)
    return {"views": views, "y": y, "temperature": runner.temperature, "calibration": runner.calibration}


def measure(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """ECE, NLL, Brier and accuracy of the pooled test images, before and after each seed's temperature."""
    import torch

    from visionlab.engine.tta import mean_scores
    from visionlab.kinds.classification.meter import calibration_metrics

    y = torch.cat([p["y"] for p in parts])
    after = torch.cat([mean_scores(p["views"], p["temperature"]) for p in parts])
    before = torch.cat([mean_scores(p["views"], 1.0) for p in parts])
    return {"images": int(len(y)), "accuracy": float((after.argmax(1) == y).float().mean()),
            "temperatures": [round(p["temperature"], 4) for p in parts],
            "methods": [p["calibration"].get("method", "nll") if p["calibration"] else "none" for p in parts],
            "before": calibration_metrics(before, y), "after": calibration_metrics(after, y)}


def table(results: dict[str, dict[str, Any]], seeds: list[int], epochs: int | None) -> str:
    lines = [f"- command: `python benchmarks/calibration.py {' '.join(sys.argv[1:])}`",
             f"- machine: {platform.processor() or platform.machine()}, {platform.system()}; seeds {', '.join(map(str, seeds))}; "
             + (f"--epochs {epochs} (shorter than the recipes)" if epochs else "the recipes' own epochs")
             + ("; temperatures of reused runs fitted again (--refit)" if "--refit" in sys.argv else ""),
             f"- date: {time.strftime('%Y-%m-%d %H:%M')}", "",
             "| task | test images (pooled) | accuracy | temperature per seed | ECE before | ECE after | NLL before | NLL after "
             "| Brier before | Brier after | ECE <= 0.03 after |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for task, r in results.items():
        b, a = r["before"], r["after"]
        temps = ", ".join(f"{t:.3f}" + (" (by confidence)" if m == "confidence" else "") for t, m in zip(r["temperatures"], r["methods"]))
        lines.append(f"| {task} | {r['images']} | {r['accuracy']:.2%} | {temps} "
                     f"| {b['ece']:.4f} | {a['ece']:.4f} | {b['nll']:.4f} | {a['nll']:.4f} | {b['brier']:.4f} | {a['brier']:.4f} "
                     f"| {'pass' if a['ece'] <= TARGET_ECE else 'MISS'} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", default="cracks,waste,caltech,minerals")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--epochs", type=int, default=None, help="train this many epochs instead of the recipe's (faster, not the recipe)")
    ap.add_argument("--runs", type=Path, default=None, help="keep the runs here (default: a temporary folder)")
    ap.add_argument("--json", type=Path, default=None, help="also write the numbers as JSON")
    ap.add_argument("--refit", action="store_true", help="fit the temperature of reused runs again with this code")
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    runs = args.runs or Path(tempfile.mkdtemp(prefix="calibration-"))
    results: dict[str, dict[str, Any]] = {}
    for task in args.tasks.split(","):
        data = SHARED / FOLDERS[task]
        if not data.is_dir():
            print(f"{task}: skipped, no data at {data}", file=sys.stderr)
            continue
        parts = []
        for seed in seeds:
            best, seconds = train(task, data, seed, args.epochs, runs)
            parts.append(test_scores(best, refit=args.refit and not seconds))
            print(f"{task} seed {seed}: T {parts[-1]['temperature']:.3f}, {len(parts[-1]['y'])} test images"
                  + (f", trained in {seconds:.0f} s" if seconds else ", run reused"), file=sys.stderr, flush=True)
        results[task] = measure(parts)
        if args.json:
            args.json.write_text(json.dumps({"seeds": seeds, "epochs": args.epochs, "results": results}, indent=2))
    print(table(results, seeds, args.epochs))


if __name__ == "__main__":
    main()
