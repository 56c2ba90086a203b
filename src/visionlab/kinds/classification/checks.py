"""The data doctor's checks of a classification dataset (``visionlab data check``): the generic
checks of :func:`visionlab.data.doctor.check_files` plus class balance, and
:func:`training_warnings`, the cheap subset (byte hashes and counts, no decoding) that the trainer
prints before it starts.
"""

from __future__ import annotations

import os
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

from visionlab.data.doctor import Finding, Report, check_files, file_hash, says
from visionlab.kinds.classification.layout import ClassificationIndex, find_classification

__all__ = ["check_classification", "training_warnings", "IMBALANCE_WARN", "IMBALANCE_SEVERE"]

#: Largest/smallest class count above which the doctor warns.
IMBALANCE_WARN = 5.0
#: Largest/smallest class count above which :func:`training_warnings` speaks up.
IMBALANCE_SEVERE = 10.0


def check_classification(path: str | os.PathLike, classes: list[str] | None = None,
                         imbalance_warn: float = IMBALANCE_WARN, **options: Any) -> Report:
    """The checks of a classification dataset (class folders or a CSV): those of
    :func:`visionlab.data.doctor.check_files` (see it for ``options``) and the class balance
    (a warning above ``imbalance_warn`` largest/smallest)."""
    cidx = find_classification(path, classes)
    return check_files("classification", cidx.root, cidx.paths, [None] * len(cidx.paths), cidx.splits, cidx.labels,
                       cidx.classes, None, label_findings=partial(_balance_findings, imbalance_warn=imbalance_warn), **options)


def _balance_findings(report: Report, split_keys: list[str], imbalance_warn: float) -> None:
    """A single class, the largest/smallest ratio (a warning above ``imbalance_warn``), classes missing from a split."""
    totals = {c: sum(v.values()) for c, v in report.counts.items()}
    if len(totals) < 2:
        report.add(Finding("warning", "single_class", f"only one class ({', '.join(totals)}); a classifier needs at least two."))
        return
    ranked = sorted(totals, key=totals.get)
    small, big = ranked[0], ranked[-1]
    ratio = totals[big] / max(totals[small], 1)
    report.imbalance_ratio = round(ratio, 2)
    if ratio > imbalance_warn:
        report.add(Finding("warning", "class_imbalance", f"class imbalance {ratio:.1f}:1 ({big} {totals[big]} vs {small} {totals[small]}); use class weights or oversampling, and judge by per-class recall, not accuracy."))
    else:
        report.add(Finding("info", "class_balance", f"largest/smallest class {ratio:.1f}:1 ({big} {totals[big]}, {small} {totals[small]})."))
    for sp in split_keys:
        if sp == "all":
            continue
        empty = [c for c, v in report.counts.items() if v.get(sp, 0) == 0]
        if empty:
            report.add(Finding("warning", "class_missing_in_split", f"split {sp} has no images of {', '.join(empty)}; its metrics will not cover them."))


def training_warnings(index: ClassificationIndex, imbalance: float = IMBALANCE_SEVERE) -> list[str]:
    """Short one-line warnings the trainer prints before training, without decoding anything.

    Exact duplicates (same file bytes) across classes or splits, and class imbalance above
    ``imbalance``. Unreadable files are the loader's business. Costs one read of every file.
    """
    paths, labels, names = index.paths, index.labels, index.classes
    splits = index.splits or [None] * len(paths)

    def digest(p: Path) -> str | None:
        try:
            return file_hash(p.read_bytes())
        except OSError:
            return None

    with ThreadPoolExecutor(max_workers=2) as ex:
        digests = list(ex.map(digest, paths))
    groups: dict[str, list[int]] = defaultdict(list)
    for i, d in enumerate(digests):
        if d is not None:
            groups[d].append(i)
    across_classes, across_splits = [], []
    for g in groups.values():
        if len(g) < 2:
            continue
        if labels is not None and len({labels[i] for i in g}) > 1:
            across_classes.append(g)
        elif len({splits[i] for i in g}) > 1:
            across_splits.append(g)
    out: list[str] = []
    hint = f"run 'visionlab data check {index.root}' for the list."
    if across_classes:
        g = across_classes[0]
        out.append(f"{says(len(across_classes), 'file', 'appear')} in two classes (e.g. {paths[g[0]].name} in {names[labels[g[0]]]} and {names[labels[g[1]]]}): conflicting labels; {hint}")
    if across_splits:
        g = across_splits[0]
        out.append(f"{says(len(across_splits), 'file', 'appear')} in two splits (e.g. {paths[g[0]].name} in {splits[g[0]]} and {splits[g[1]]}): test scores will be inflated; {hint}")
    if labels is not None and len(names) > 1:
        counts = Counter(labels)
        sizes = {names[k]: counts.get(k, 0) for k in range(len(names))}
        ranked = sorted(sizes, key=sizes.get)
        small, big = ranked[0], ranked[-1]
        ratio = sizes[big] / max(sizes[small], 1)
        if ratio > imbalance:
            out.append(f"severe class imbalance {ratio:.0f}:1 ({big} {sizes[big]} vs {small} {sizes[small]}); consider class weights or oversampling.")
    return out
