"""How the logistic heads of ``data suspects --method features`` are tuned: flip 5 % of the labels
(the same seeded flips as ``benchmarks/suspects.py``), compute the recipe backbone's frozen features
once, and print precision and recall of confident learning for every regularisation strength C of
the grid and every ``filter_by`` of cleanlab, beside the out-of-fold log loss that the command
uses to pick C (it never sees which labels were flipped)::

    PYTHONPATH=src python benchmarks/suspects_heads.py --task waste --seeds 0,1,2 --features /tmp/waste-features.npz

The features depend on the photos only, not on their labels, so one file serves every seed of the
flips; ``--features`` keeps them between runs (computed and written when the file is absent).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from suspects import FOLDERS, SHARED, flipped_copy  # noqa: E402

FILTERS = ("prune_by_noise_rate", "both", "confident_learning", "predicted_neq_given")


def features_of(task: str, root: Path, cache: Path | None) -> tuple[np.ndarray, list[str], list[str]]:
    """(N x D frozen features, the photos' resolved paths, the classes), from ``cache`` when it is there."""
    from visionlab.api import load_config
    from visionlab.kinds.classification.frozen import backbone_features
    from visionlab.kinds.classification.layout import find_classification

    if cache is not None and cache.is_file():
        saved = np.load(cache)
        return saved["features"], list(saved["paths"]), list(saved["classes"])
    index = find_classification(root)
    features, _ = backbone_features(load_config(task, None, {"data": str(root)}), index, "cpu")
    paths = [str(Path(p).resolve()) for p in index.paths]
    if cache is not None:
        np.savez(cache, features=features, paths=np.array(paths), classes=np.array(index.classes))
    return features, paths, list(index.classes)


def given_labels(root: Path, paths: list[str], classes: list[str], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(each photo's label after the seeded flips, whether it was flipped), in the order of ``paths``."""
    with tempfile.TemporaryDirectory() as tmp:
        flipped, _ = flipped_copy(root, Path(tmp) / "data", 0.05, seed)
        where = {str(link.resolve()): (classes.index(link.parent.name), str(link) in flipped)
                 for link in (Path(tmp) / "data").glob("*/*")}
    rows = [where[p] for p in paths]
    return np.array([r[0] for r in rows]), np.array([r[1] for r in rows])


def main() -> int:
    from cleanlab.filter import find_label_issues
    from sklearn.metrics import log_loss

    from visionlab.kinds.classification.frozen import C_GRID, _oof_for
    from visionlab.kinds.classification.suspects import fold_of

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", default="waste")
    p.add_argument("--data", default=str(SHARED))
    p.add_argument("--seeds", default="0,1,2", help="seeds of the flips")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--features", default=None, help="an .npz file that keeps the features between runs")
    args = p.parse_args()
    root = Path(args.data) / FOLDERS[args.task]
    features, paths, classes = features_of(args.task, root, Path(args.features) if args.features else None)
    for seed in (int(s) for s in args.seeds.split(",")):
        given, flipped = given_labels(root, paths, classes, seed)
        fold = fold_of(given, classes, args.folds, 42)
        for c in C_GRID:
            probs = _oof_for(features, given, fold, len(classes), c)
            cells = []
            for how in FILTERS:
                flag = find_label_issues(given, probs, filter_by=how, n_jobs=1)
                hit = int(np.sum(flag & flipped))
                cells.append(f"{how}: {int(flag.sum())} flagged, P {hit / max(1, flag.sum()):.3f} R {hit / flipped.sum():.3f}")
            print(f"{args.task} flips seed {seed} C={c:g} out-of-fold log loss {log_loss(given, probs):.4f} | " + " | ".join(cells), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
