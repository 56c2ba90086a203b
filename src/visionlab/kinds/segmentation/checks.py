"""The data doctor's checks of a segmentation dataset (:mod:`visionlab.data.doctor` runs them in its
one pass over the files): missing, unreadable or wrong-size masks, pixel values that
``classes.json`` does not define, and each class's share of the labelled pixels.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from visionlab.data.doctor import Finding, KindChecks, Report, check_files, plural, says
from visionlab.data.io import UnreadableImage, load_mask
from visionlab.data.layout import SPLIT_NAMES, unwrap_root
from visionlab.kinds.segmentation.layout import SegmentationIndex, find_segmentation

if TYPE_CHECKING:  # pragma: no cover
    from visionlab.data.doctor import Scan

__all__ = ["check_segmentation", "looks_like_segmentation"]


@dataclass(frozen=True)
class _MaskScan:
    """What the doctor read of one image's mask: why it cannot be used, or its size and value histogram."""

    error: str | None = None
    shape: tuple[int, int] | None = None
    hist: np.ndarray | None = None


_NO_MASK = _MaskScan()


def looks_like_segmentation(path: str | os.PathLike) -> bool:
    """A folder with ``classes.json`` and an ``images/`` folder (maybe per split)."""
    p = Path(path).expanduser()
    if not p.is_dir():
        return False
    p = unwrap_root(p)
    if not (p / "classes.json").is_file():
        return False
    candidates = [p] + [d for d in p.iterdir() if d.is_dir() and d.name.lower() in SPLIT_NAMES]
    return any((d / n).is_dir() for d in candidates for n in ("images", "imgs", "image"))


def check_segmentation(path: str | os.PathLike, **options: Any) -> Report:
    """The checks of a segmentation dataset (images, masks, classes.json), masks included; ``options``
    are the doctor's (``near_dup_threshold``, ``workers``, ``progress``...)."""
    sidx = find_segmentation(path, require_masks=False)
    masks = KindChecks(lambda i: _read_mask(sidx.masks[i]), lambda report, scans: _mask_findings(report, scans, sidx))
    return check_files("segmentation", sidx.root, sidx.images, sidx.masks, sidx.splits, None, sidx.class_names, masks, **options)


def _read_mask(mask: Path | None) -> _MaskScan:
    """One mask, read as training reads it (no mask: nothing to read)."""
    if mask is None:
        return _NO_MASK
    try:
        m = load_mask(mask)
    except UnreadableImage as exc:
        return _MaskScan(error=exc.message.split(": ", 1)[-1])
    return _MaskScan(shape=m.shape, hist=np.bincount(m.ravel(), minlength=256))


def _mask_findings(report: Report, scans: list[Scan], sidx: SegmentationIndex) -> None:
    """Missing, unreadable and wrong-size masks, then what the masks' pixel values say."""
    masks = sidx.masks
    read = [s.extra or _NO_MASK for s in scans]
    missing = [s for s, m in zip(scans, masks) if m is None]
    if missing:
        report.add(Finding("error", "missing_mask", f"{says(len(missing), 'image', 'have')} no mask (expected masks/<same stem>.png); training refuses the dataset until they do.", [str(s.path) for s in missing]))
    bad = [r for r in read if r.error]
    if bad:
        report.add(Finding("error", "unreadable_mask", f"{plural(len(bad), 'mask')} cannot be used (first: {bad[0].error}).", [str(m) for r, m in zip(read, masks) if r.error]))
    wrong = [(s, r, m) for s, r, m in zip(scans, read, masks) if r.shape is not None and r.shape != (s.height, s.width)]
    if wrong:
        s0, r0, _ = wrong[0]
        report.add(Finding("error", "mask_size_mismatch", f"{says(len(wrong), 'mask', 'differ')} in size from their image (first: {s0.path.name} is {s0.width}x{s0.height}, mask {r0.shape[1]}x{r0.shape[0]}); masks must match pixel for pixel.", [str(m) for _, _, m in wrong]))
    _value_findings(report, read, masks, sidx)


def _value_findings(report: Report, read: list[_MaskScan], masks: list[Path | None], sidx: SegmentationIndex) -> None:
    """Pixel values classes.json does not define, each class's pixel share, and classes no mask holds."""
    hists = [r.hist for r in read if r.hist is not None]
    if not hists:
        return
    known = {c.value for c in sidx.classes}
    total = np.sum(hists, axis=0)
    unknown_vals = [v for v in np.nonzero(total)[0].tolist() if v not in known and v != sidx.ignore_index]
    if unknown_vals:
        files = [str(m) for r, m in zip(read, masks) if r.hist is not None and any(r.hist[v] for v in unknown_vals)]
        report.add(Finding("error", "unknown_mask_value", f"mask pixel value(s) {', '.join(map(str, unknown_vals))} are not in classes.json (ignore_index {sidx.ignore_index}) in {plural(len(files), 'mask')}; add the class or map them to ignore_index.", files))
    labelled = int(sum(total[c.value] for c in sidx.classes if c.value < 256))
    report.pixel_shares = {c.name: round(float(total[c.value]) / max(labelled, 1), 5) for c in sidx.classes if c.value < 256}
    ignored = float(total[sidx.ignore_index]) / max(int(total.sum()), 1) if sidx.ignore_index < 256 else 0.0
    shares = ", ".join(f"{k} {v:.1%}" for k, v in sorted(report.pixel_shares.items(), key=lambda kv: -kv[1]))
    report.add(Finding("info", "pixel_shares", f"class pixel shares: {shares}; ignored {ignored:.1%}."))
    absent = [c.name for c in sidx.classes if c.value < 256 and total[c.value] == 0]
    if absent:
        report.add(Finding("warning", "class_absent", f"class(es) {', '.join(absent)} never appear in any mask; the model cannot learn them."))
