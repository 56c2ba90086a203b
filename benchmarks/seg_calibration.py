"""Is landcover's per-pixel confidence what it says? Pixel-level ECE, NLL and Brier score of a
landcover run on its test split, before and after the temperature fitted on its validation pixels (#22).

The recipe (``configs/landcover.yaml``, ``--epochs`` to shorten it) is trained through the CLI of the
checkout on ``PYTHONPATH`` on ``../shared/data/landcover`` (a finished run there is kept). Training
fits no temperature for segmentation (this benchmark is why); ``--refit`` fits one on the validation
pixels (:func:`visionlab.kinds.segmentation.calibration.fit_pixel_temperature`) into a copy,
``best-refit.pt``, which every surface then applies. ``visionlab evaluate`` scores the test split
of the checkpoint once: ``ece``/``nll``/``brier`` with its temperature (if any),
``*_before`` with the raw softmax (15 bins, torchmetrics; pixels marked 255 and the recipe's
``ignore_classes`` left out; a seeded sample of each image's pixels, see
:mod:`visionlab.kinds.segmentation.calibration`).

    python benchmarks/seg_calibration.py --epochs 3 --runs /tmp/segcal --json /tmp/segcal.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"


def _run(cmd: list[str], what: str) -> float:
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=6 * 3600)
    if done.returncode != 0:
        raise SystemExit(f"{what} failed: " + " / ".join((done.stderr or done.stdout).strip().splitlines()[-3:]))
    return time.perf_counter() - start


def train(data: Path, runs: Path, name: str, seed: int, epochs: int | None) -> Path:
    """best.pt of the landcover recipe trained through the CLI (an existing finished run is kept)."""
    best = runs / "landcover" / name / "best.pt"
    if not (best.exists() and (best.parent / "summary.json").exists()):
        _run([sys.executable, "-m", "visionlab", "train", "--task", "landcover", "--data", str(data), "--seed", str(seed),
              "--out", str(runs), "--name", name] + (["--epochs", str(epochs)] if epochs else []), "training")
    return best


def refit(best: Path) -> Path:
    """best.pt with a temperature fitted on its validation pixels by the code on PYTHONPATH, as best-refit.pt."""
    import torch

    from visionlab.config import config_from_dict
    from visionlab.engine.checkpoint import load_checkpoint, load_model, save_checkpoint
    from visionlab.kinds import get_kind
    from visionlab.kinds.segmentation.calibration import fit_pixel_temperature
    from visionlab.registry import get_task

    state = load_checkpoint(best)
    kind = get_kind(state["kind"])
    runner = kind.runner(config_from_dict(state["config"], kind.options), get_task(state["task"]), torch.device("cpu"))
    runner.use_saved(state)
    runner.prepare()
    calibration = fit_pixel_temperature(runner, load_model(state))
    out = best.with_name("best-refit.pt")
    save_checkpoint({**state, **({"calibration": calibration} if calibration else {})}, out)
    return out


def evaluate(checkpoint: Path) -> tuple[dict[str, Any], float]:
    """metrics.json of ``visionlab evaluate`` on the test split, and its seconds."""
    out = checkpoint.parent / f"eval-{checkpoint.stem}"
    seconds = _run([sys.executable, "-m", "visionlab", "evaluate", "--checkpoint", str(checkpoint), "--split", "test",
                    "--out", str(out), "--device", "cpu"], "evaluate")
    return json.loads((out / "metrics.json").read_text()), seconds


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=SHARED / "landcover")
    ap.add_argument("--runs", type=Path, required=True, help="where the run is trained (kept)")
    ap.add_argument("--name", default="segcal")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--refit", action="store_true", help="fit a temperature on the validation pixels into best-refit.pt")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    if not args.data.is_dir():
        raise SystemExit(f"{args.data} not found: pass --data with a landcover folder (images/, masks/, classes.json).")
    best = train(args.data, args.runs, args.name, args.seed, args.epochs)
    checkpoint = refit(best) if args.refit else best
    metrics, seconds = evaluate(checkpoint)
    m, cal = metrics["metrics"], metrics.get("calibration") or {}
    print(f"landcover test split ({metrics['images']} images, {cal.get('pixels', {}).get('sampled')} of "
          f"{cal.get('pixels', {}).get('labelled')} labelled pixels), temperature {cal.get('temperature', 1.0):.3f} "
          f"({'applied' if cal.get('applied') else 'none fitted'}); evaluate {seconds:.0f} s")
    print(f"{'':8}{'before':>10}{'after':>10}")
    for key in ("ece", "nll", "brier"):
        print(f"{key:8}{m[key + '_before']:>10.4f}{m[key]:>10.4f}")
    print(f"miou {m['miou']:.4f}, pixel accuracy {m['pixel_accuracy']:.4f}")
    if args.json:
        args.json.write_text(json.dumps({"checkpoint": str(checkpoint), "metrics": m, "calibration": cal}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
