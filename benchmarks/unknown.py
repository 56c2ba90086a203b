"""Does it say "unknown" for photos of none of its classes? Out-of-distribution scores of every
classifier recipe's trained checkpoint (#22 section 2).

For each checkpoint (``--runs DIR``: ``DIR/<task>/<name>/best.pt``, e.g. the recipe runs of
``visionlab train --task T --data ../shared/data/T --seed 42``), its network runs (with the
checkpoint's own test-time augmentation, fp32, CPU) over:

* known: the run's own test split (the library's split of the run's data and seed);
* near unknown: ``../shared/data/ood/caltech101-other`` (47 Caltech101 classes no task knows);
* far unknown: the other classifier tasks' photos (``--far-per-task`` of each, evenly spaced over
  the sorted files): minerals + waste for caltech, caltech + waste for minerals, caltech + minerals
  for waste and cracks.

Scores (higher = more known): ``msp`` the maximum softmax probability with the checkpoint's
temperature (the baseline), ``energy`` T * logsumexp(logits / T), ``knn-k`` the cosine similarity
of the L2-normalised penultimate features to the k-th nearest of the training split's (at most
2048, evenly spaced: the bank a ``knn`` detector stores), ``maha`` the stored Mahalanobis score
``1 / (1 + d2 / D)``, ``d2`` the squared distance to the nearest class mean of the same training
features (normalised; shared covariance shrunk by Ledoit-Wolf, float16 whitening: the checkpoint's own
when it stores one, else fitted here as training fits it). With TTA each view is scored and the
scores averaged, as the surfaces do. Per score: AUROC of
known test photos against near and far unknown ones, the share of unknown photos still accepted
when 95 % of known test photos are (FPR at 95 % TPR), and at a threshold fitted on the validation
split alone (95 % of known validation photos accepted, as training fits it) the shares of known
test photos accepted and of unknown photos rejected. Nothing is fitted to the unknown photos.

    python benchmarks/unknown.py --runs /work/ckpt/runs --name s42
    python benchmarks/unknown.py --runs RUNS --tasks caltech --cache /tmp/ood-cache

``--cache`` keeps each set's logits and features (npz) so a second run only recomputes the scores.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
FOLDERS = {"caltech": "caltech101", "minerals": "minerals", "waste": "waste", "cracks": "cracks"}
FAR = {"caltech": ("minerals", "waste"), "minerals": ("caltech", "waste"), "waste": ("caltech", "minerals"),
       "cracks": ("caltech", "minerals")}
NEAR = "ood/caltech101-other"
KS = (1, 5, 10)
TARGETS = {"far_auroc": 0.98, "far_rejected": 0.90, "near_auroc_caltech": 0.99}


def _files(folder: Path, count: int | None = None) -> list[str]:
    from visionlab.data.io import expand_inputs

    files = sorted(expand_inputs([folder]))
    if count is None or len(files) <= count:
        return files
    return [files[i] for i in np.linspace(0, len(files) - 1, num=count).round().astype(int)]


def collect(model: Any, pre: Any, tta: str, files: list[str], batch: int = 32) -> dict[str, np.ndarray]:
    """(V, N, C) logits and (V, N, D) features of ``files`` through ``model`` (unreadable files left out)."""
    import torch

    from visionlab.data.io import UnreadableImage, load_for_model
    from visionlab.data.transforms import Normalize
    from visionlab.kinds.classification.step import StepContext, run_views
    from visionlab.kinds.classification.unknown import feature_views

    normalize = Normalize(pre.mean, pre.std)
    logits, feats = [], []
    for i in range(0, len(files), batch):
        arrays = []
        for f in files[i : i + batch]:
            try:
                arrays.append(load_for_model(f, pre))
            except UnreadableImage:
                continue
        with torch.inference_mode():
            lg, ft = feature_views(model, lambda fwd: run_views(StepContext(fwd, normalize, torch.device("cpu"), tta), arrays))
        logits.append(lg.numpy())
        feats.append(ft.numpy())
    return {"logits": np.concatenate(logits, 1), "features": np.concatenate(feats, 1)}


def sets_of(best: Path, far_per_task: int, near: int | None, cache: Path | None, tta: str | None = None) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, Any]]:
    """The logits and features of train (the bank's rows), val, test, near and far, and the checkpoint's facts."""
    import torch

    from visionlab.config import config_from_dict
    from visionlab.engine.checkpoint import load_checkpoint, load_model
    from visionlab.kinds import get_kind
    from visionlab.kinds.base import temperature_of
    from visionlab.kinds.classification.unknown import bank_rows
    from visionlab.registry import get_task

    state = load_checkpoint(best)
    kind = get_kind(state["kind"])
    cfg = config_from_dict(state["config"], kind.options)
    cfg.cache = "none"  # the photos are decoded here, once
    runner = kind.runner(cfg, get_task(state["task"]), torch.device("cpu"))
    runner.use_saved(state)
    runner.prepare()
    pre, model = runner.fixed_preprocessing, load_model(state)
    pre = pre if tta is None else pre.replace(tta=tta)
    train = [str(p) for p in runner.split_files("train")]
    lists = {"train": [train[i] for i in bank_rows(len(train))], "val": [str(p) for p in runner.split_files("val")],
             "test": [str(p) for p in runner.split_files("test")], "near": _files(SHARED / NEAR, near),
             "far": [f for t in FAR[state["task"]] for f in _files(SHARED / FOLDERS[t], far_per_task)]}
    out = {}
    for name, files in lists.items():
        path = cache / f"{state['task']}-{best.parent.name}-{pre.tta_mode}-{name}.npz" if cache else None
        if path is not None and path.exists():
            out[name] = dict(np.load(path))
            continue
        t0 = time.perf_counter()
        out[name] = collect(model, pre, "none" if name == "train" else pre.tta_mode, files)  # the bank: plain views
        print(f"{state['task']} {name}: {len(files)} photos in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            np.savez(path, **out[name])
    out["train"]["labels"] = runner.labels[runner.splits["train"]][bank_rows(len(train))]
    facts = {"task": state["task"], "temperature": temperature_of(state.get("calibration")), "tta": pre.tta_mode,
             "detector": state.get("unknown"), "counts": {k: int(v["logits"].shape[1]) for k, v in out.items()}}
    return out, facts


def _normed(f: np.ndarray) -> np.ndarray:
    return f / np.maximum(np.linalg.norm(f, axis=-1, keepdims=True), 1e-12)


def scores(sets: dict[str, dict[str, np.ndarray]], temperature: float, detector: dict[str, Any] | None = None) -> dict[str, dict[str, np.ndarray]]:
    """Every candidate score of every set (higher = more known), as the surfaces compute them."""
    import torch

    from visionlab.kinds.classification.unknown import knn_similarity

    bank = torch.from_numpy(_normed(sets["train"]["features"][0]).astype(np.float16))
    out: dict[str, dict[str, np.ndarray]] = {}
    maha = _mahalanobis(sets["train"], sets["train"]["labels"], detector)
    for name in ("val", "test", "near", "far"):
        lg, ft = sets[name]["logits"] / temperature, sets[name]["features"]
        probs = np.exp(lg - lg.max(2, keepdims=True))
        probs = (probs / probs.sum(2, keepdims=True)).mean(0)
        row = {"msp": probs.max(1),
               "energy": (temperature * np.log(np.exp(lg - lg.max(2, keepdims=True)).sum(2)) + temperature * lg.max(2)).mean(0)}
        views = torch.from_numpy(ft)
        for k in KS:
            row[f"knn-{k}"] = torch.stack([knn_similarity(v, bank, k) for v in views]).mean(0).numpy()
        if maha is not None:
            row["maha"] = maha(ft)
        out[name] = row
    return out


def _mahalanobis(train: dict[str, np.ndarray], y: np.ndarray, detector: dict[str, Any] | None) -> Any:
    """The stored Mahalanobis score (:func:`visionlab.kinds.classification.unknown.mahalanobis_score`),
    with the checkpoint's whitening and means when it stores them, else fitted on the plain view of
    the training photos as training fits them; per view, then the mean over the views."""
    import torch

    from visionlab.kinds.classification.unknown import fit_mahalanobis, mahalanobis_score

    if detector and detector.get("score") == "mahalanobis":
        fitted = detector
    else:
        fitted = fit_mahalanobis(torch.from_numpy(train["features"][0]), torch.from_numpy(np.asarray(y)))

    def score(features: np.ndarray) -> np.ndarray:
        views = torch.from_numpy(features)
        return torch.stack([mahalanobis_score(v, fitted["whiten"], fitted["centres"]) for v in views]).mean(0).numpy()

    return score


def stored_name(detector: dict[str, Any] | None) -> str | None:
    """The row of the score the checkpoint stores: ``maha``, or ``knn-k`` for a kNN detector."""
    if not detector:
        return None
    return "maha" if detector.get("score") == "mahalanobis" else f"knn-{detector['k']}"


def auroc(known: np.ndarray, unknown: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(np.r_[np.ones(len(known)), np.zeros(len(unknown))], np.r_[known, unknown]))


def measure(s: dict[str, dict[str, np.ndarray]], detector: dict[str, Any] | None, accept: float = 0.95) -> dict[str, dict[str, float]]:
    """Per score: AUROC near/far, unknown accepted at 95 % of known test accepted, and at the
    validation-fitted threshold (the checkpoint's own for the score it stores, else fitted here
    as training fits it) the shares of known test accepted and unknown rejected."""
    from visionlab.kinds.classification.unknown import fit_threshold

    out = {}
    stored = stored_name(detector)
    for score in s["test"]:
        known = s["test"][score]
        thr = float(detector["threshold"]) if score == stored else fit_threshold(s["val"][score], accept)
        at95 = fit_threshold(known, 0.95)
        row = {"threshold": thr, "known_accepted": float((known >= thr).mean())}
        for side in ("near", "far"):
            u = s[side][score]
            row[f"{side}_auroc"] = auroc(known, u)
            row[f"{side}_fpr95"] = float((u >= at95).mean())
            row[f"{side}_rejected"] = float((u < thr).mean())
        out[score] = row
    return out


def targets(task: str, m: dict[str, float]) -> str:
    """The issue's targets for one score of one task: met, or which are missed."""
    missed = []
    if m["far_auroc"] < TARGETS["far_auroc"]:
        missed.append(f"far AUROC {m['far_auroc']:.3f} < {TARGETS['far_auroc']}")
    if 1 - m["far_fpr95"] < TARGETS["far_rejected"]:
        missed.append(f"far rejected at 95 % known {1 - m['far_fpr95']:.1%} < 90 %")
    if task == "caltech" and m["near_auroc"] < TARGETS["near_auroc_caltech"]:
        missed.append(f"near AUROC {m['near_auroc']:.3f} < {TARGETS['near_auroc_caltech']}")
    return "met" if not missed else "MISS: " + "; ".join(missed)


def table(results: dict[str, Any], argv: list[str]) -> str:
    lines = [f"- command: `python benchmarks/unknown.py {' '.join(argv)}`",
             f"- machine: {platform.processor() or platform.machine()}, {platform.system()}, CPU, fp32; date {time.strftime('%Y-%m-%d %H:%M')}",
             "- photos: " + "; ".join(f"{t}: " + ", ".join(f"{k} {v}" for k, v in r["counts"].items()) for t, r in results.items()),
             "", "| task | score | near AUROC | far AUROC | near FPR@95 | far FPR@95 | threshold | known test accepted | near rejected "
             "| far rejected | targets |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for task, r in results.items():
        for score, m in r["scores"].items():
            lines.append(f"| {task} | {score}{' (stored)' if score == r.get('stored') else ''} | {m['near_auroc']:.4f} | {m['far_auroc']:.4f} "
                         f"| {m['near_fpr95']:.1%} | {m['far_fpr95']:.1%} | {m['threshold']:.4f} | {m['known_accepted']:.1%} "
                         f"| {m['near_rejected']:.1%} | {m['far_rejected']:.1%} | {targets(task, m)} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=Path, required=True, help="folder of runs: RUNS/<task>/<name>/best.pt")
    ap.add_argument("--name", default="s42")
    ap.add_argument("--checkpoint", default="best.pt", help="the file in each run folder (e.g. best-calibrated.pt)")
    ap.add_argument("--tasks", default="caltech,waste,minerals,cracks")
    ap.add_argument("--far-per-task", type=int, default=400, help="photos of each other task (evenly spaced)")
    ap.add_argument("--near", type=int, default=None, help="at most this many near-unknown photos (evenly spaced; default all)")
    ap.add_argument("--tta", default=None, help="another test-time augmentation than the checkpoint's (none: one view, faster)")
    ap.add_argument("--cache", type=Path, default=None)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    results: dict[str, Any] = {}
    for task in args.tasks.split(","):
        best = args.runs / task / args.name / args.checkpoint
        if not best.exists() or not (SHARED / NEAR).is_dir():
            print(f"{task}: skipped, no {best} or no {SHARED / NEAR}", file=sys.stderr)
            continue
        sets, facts = sets_of(best, args.far_per_task, args.near, args.cache, args.tta)
        det = facts["detector"]
        s = scores(sets, facts["temperature"], det)
        results[task] = {**facts, "detector": {k: v for k, v in (det or {}).items() if not hasattr(v, "shape")} or None,
                         "scores": measure(s, det), "stored": stored_name(det)}
        if args.json:
            args.json.write_text(json.dumps(results, indent=2, default=str))
        print(f"{task}: done", file=sys.stderr, flush=True)
    print(table(results, sys.argv[1:]))


if __name__ == "__main__":
    main()
