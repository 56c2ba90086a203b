"""The data doctor: find what is wrong with a dataset before a training run finds it.

``visionlab data check PATH`` indexes the folder with :mod:`visionlab.data.layout` and decodes
every image once with :func:`visionlab.data.io.load_image` (the decoder training uses, so
"unreadable" here means "training would fail on it"). From that single pass it reports:

* counts per class and per split, class imbalance, classes missing from a split;
* image sizes (min/median/max, tiny images), colour modes and file formats;
* unreadable or truncated files, and content that does not match its extension
  (a PNG or GIF named ``.jpg``), and image files the layout does not pick up;
* exact duplicates (hash of the file bytes) and near duplicates (64-bit perceptual hash,
  Hamming distance), within a class, across classes (conflicting labels) and across
  train/val/test (leakage);
* for segmentation: missing, unreadable or wrong-size masks, pixel values that
  ``classes.json`` does not define, and the pixel share of every class.

:func:`check_dataset` returns a :class:`Report`; the tables and the JSON of ``visionlab data check``
are :mod:`visionlab.present.doctor`'s. The generic machinery lives here (the report, the scan,
hashes, duplicates, :func:`check_files`); each kind's checks live with the kind
(:mod:`visionlab.kinds.classification.checks`: class balance, and the cheap pre-training warnings).
"""

from __future__ import annotations

import hashlib
import io
import os
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

import numpy as np
from PIL import Image

from visionlab.data.io import DECODE_ERRORS, FORMAT_NAMES, IMAGE_FORMATS, UnreadableImage, is_image_file, load_image, load_mask, open_image
from visionlab.data.layout import (
    SPLIT_NAMES,
    SegmentationIndex,
    find_segmentation,
    unwrap_root,
)

__all__ = [
    "Finding",
    "Report",
    "check_dataset",
    "check_segmentation",
    "check_files",
    "file_hash",
    "says",
    "phash",
    "near_duplicate_pairs",
    "guess_kind",
    "looks_like_segmentation",
    "NEAR_DUP_THRESHOLD",
    "NEAR_DUP_MAX_MAE",
    "TINY_SIDE",
]

Severity = Literal["error", "warning", "info"]

#: Default Hamming distance (of 64 bits) at or below which two perceptual hashes are near duplicates.
#: A photo halved and re-encoded at JPEG quality 20 lands at 0-2; unrelated photos at 20-40, but
#: objects shot on white can come within 6-8, hence the thumbnail confirmation below.
NEAR_DUP_THRESHOLD = 8
#: A pHash match is confirmed only when 16x16 colour thumbnails differ by at most this mean
#: absolute value (0-255). Re-encoded copies differ by about 2; a different object of the
#: same shape on the same background by 10 or more.
NEAR_DUP_MAX_MAE = 6.0
#: Images whose shorter side is below this many pixels are reported as tiny.
TINY_SIDE = 32

_SEVERITY_ORDER = {"error": 0, "warning": 1, "info": 2}


# ----------------------------------------------------------------------------- report types


@dataclass
class Finding:
    """One problem (or fact) about the dataset and the files it concerns.

    ``groups`` holds sets of files that belong together (duplicate clusters); ``files`` is
    always the flat list, so scripts can act on it without knowing the finding's kind.
    """

    severity: Severity
    code: str
    message: str
    files: list[str] = field(default_factory=list)
    groups: list[list[str]] = field(default_factory=list)


@dataclass
class Report:
    """Everything :func:`check_dataset` found: findings by severity plus statistics."""

    root: str
    kind: str  # the task kind whose checks ran
    n_images: int
    classes: list[str]
    counts: dict[str, dict[str, int]]  # class -> split ('all' when unsplit) -> images
    split_counts: dict[str, int]
    sizes: dict[str, dict[str, float]]  # width/height/min_side -> min/median/max
    modes: dict[str, int]
    formats: dict[str, int]
    imbalance_ratio: float | None = None
    pixel_shares: dict[str, float] = field(default_factory=dict)  # segmentation only
    near_dup_threshold: int = NEAR_DUP_THRESHOLD
    seconds: float = 0.0
    errors: list[Finding] = field(default_factory=list)
    warnings: list[Finding] = field(default_factory=list)
    info: list[Finding] = field(default_factory=list)

    def add(self, finding: Finding) -> None:
        {"error": self.errors, "warning": self.warnings, "info": self.info}[finding.severity].append(finding)

    @property
    def findings(self) -> list[Finding]:
        """All findings, errors first."""
        return self.errors + self.warnings + self.info

    def find(self, code: str) -> Finding | None:
        """The finding with this code, or None."""
        return next((f for f in self.findings if f.code == code), None)

    @property
    def ok(self) -> bool:
        return not self.errors

    def to_dict(self) -> dict:
        """Plain JSON-serialisable data (``json.dumps(report.to_dict())``)."""
        out = asdict(self)
        out["ok"] = self.ok
        return out


# ----------------------------------------------------------------------------- hashing


def _dct_matrix(n: int) -> np.ndarray:
    k = np.arange(n)[:, None]
    x = np.arange(n)[None, :]
    m = np.cos(np.pi * (2 * x + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    m[0] /= np.sqrt(2.0)
    return m


_DCT32 = _dct_matrix(32)
_BIT_WEIGHTS = np.uint64(1) << np.arange(63, -1, -1, dtype=np.uint64)


def phash(img: Image.Image) -> int:
    """64-bit perceptual hash (pHash): signs of the 8x8 lowest DCT frequencies of a 32x32 grey image.

    Robust to resizing, re-encoding and mild colour changes; unrelated photos differ in about
    half of the bits. Compare two hashes with ``(a ^ b).bit_count()``.
    """
    grey = img.convert("L").resize((32, 32), Image.BILINEAR, reducing_gap=2.0)
    a = np.asarray(grey, dtype=np.float64)
    low = (_DCT32 @ a @ _DCT32.T)[:8, :8].ravel()
    bits = low > np.median(low[1:])  # the DC term would skew the median
    return int((bits.astype(np.uint64) * _BIT_WEIGHTS).sum())


def near_duplicate_pairs(hashes: Sequence[int] | np.ndarray, threshold: int, block: int = 1024) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All pairs ``i < j`` whose 64-bit hashes differ in at most ``threshold`` bits.

    Vectorised in row blocks (XOR + popcount), so 3,000 hashes take milliseconds and memory
    stays at ``block x n`` words. Returns index arrays ``i``, ``j`` and the distances.
    """
    h = np.asarray(hashes, dtype=np.uint64)
    n = len(h)
    out_i, out_j, out_d = [], [], []
    for start in range(0, n, block):
        rows = h[start:start + block]
        d = np.bitwise_count(rows[:, None] ^ h[None, start:])  # only columns j >= start
        ii, jj = np.nonzero(d <= threshold)
        gi, gj = ii + start, jj + start
        keep = gi < gj
        out_i.append(gi[keep]); out_j.append(gj[keep]); out_d.append(d[ii[keep], jj[keep]])
    if not out_i:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty
    return np.concatenate(out_i), np.concatenate(out_j), np.concatenate(out_d).astype(np.int64)


def file_hash(data: bytes) -> str:
    """The digest by which two files are the same (exact duplicates)."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()


# ----------------------------------------------------------------------------- one pass over the files


@dataclass
class _Scan:
    path: Path
    sha: str | None = None
    fmt: str | None = None
    mode: str | None = None
    frames: int = 1
    width: int = 0
    height: int = 0
    phash: int | None = None
    thumb: np.ndarray | None = None  # 16x16x3 uint8, confirms pHash matches
    error: str | None = None  # why it cannot be decoded
    error_code: str | None = None  # missing_file | not_an_image | truncated | unreadable
    no_jpeg_end: bool = False
    mask_error: str | None = None
    mask_shape: tuple[int, int] | None = None
    mask_hist: np.ndarray | None = None


def _scan(path: Path, mask: Path | None = None, want_mask: bool = False) -> _Scan:
    """Read, hash and decode one image (and its mask): everything the report needs, in one go."""
    s = _Scan(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        s.error_code = "missing_file" if not path.exists() else "unreadable"
        s.error = f"{type(exc).__name__}: {exc.strerror or exc}"
        return s
    s.sha = file_hash(data)
    try:
        with open_image(io.BytesIO(data)) as im:
            s.fmt, s.mode, s.frames = im.format, im.mode, getattr(im, "n_frames", 1)
    except DECODE_ERRORS as exc:
        s.error_code = "not_an_image"
        s.error = f"not an image of a format visionlab reads ({FORMAT_NAMES}; {type(exc).__name__})"
        return s
    try:
        rgb = load_image(path)  # the decoder training uses; EXIF orientation applied
    except UnreadableImage as exc:
        text = exc.message
        s.error_code = "truncated" if "truncated" in text.lower() else "unreadable"
        s.error = text.split(": ", 1)[-1]
        return s
    s.width, s.height = rgb.size
    # Decoded yet no end-of-image marker anywhere: truncated, and PIL's LOAD_TRUNCATED_IMAGES is on
    # (data appended after the marker, as some phones do, is not flagged).
    s.no_jpeg_end = s.fmt == "JPEG" and b"\xff\xd9" not in data
    s.phash = phash(rgb)
    s.thumb = np.asarray(rgb.resize((16, 16), Image.BILINEAR, reducing_gap=2.0), dtype=np.uint8)
    if want_mask and mask is not None:
        try:
            m = load_mask(mask)
        except UnreadableImage as exc:
            s.mask_error = exc.message.split(": ", 1)[-1]
        else:
            s.mask_shape = m.shape
            s.mask_hist = np.bincount(m.ravel(), minlength=256)
    return s


def _components(pairs: list[tuple[int, int]]) -> list[list[int]]:
    """Connected components of an undirected pair list (union-find), each sorted."""
    parent: dict[int, int] = {}

    def root(x: int) -> int:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in pairs:
        ra, rb = root(a), root(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    groups: dict[int, list[int]] = defaultdict(list)
    for x in parent:
        groups[root(x)].append(x)
    return sorted((sorted(g) for g in groups.values()), key=lambda g: g[0])


def _summary(values: list[int]) -> dict[str, float]:
    if not values:
        return {"min": 0, "median": 0, "max": 0}
    a = np.asarray(values)
    return {"min": int(a.min()), "median": float(np.median(a)), "max": int(a.max())}


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def says(n: int, word: str, verb: str) -> str:
    """'1 file holds' / '2 files hold': a count, its noun and a verb that agrees (``verb`` in plural form)."""
    if n != 1:
        return f"{_plural(n, word)} {verb}"
    return f"{_plural(n, word)} {'has' if verb == 'have' else verb + 's'}"


# ----------------------------------------------------------------------------- the check


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


def guess_kind(path: str | os.PathLike) -> str:
    """The name of the kind whose layout ``path`` has: each registered kind is asked
    (:meth:`visionlab.kinds.Kind.recognizes`), those registered last (plugins) first, so the
    most specific layout wins over the built-in fallback of class folders."""
    from visionlab.kinds import get_kind, kind_names

    p = Path(path).expanduser()
    names = kind_names()
    return next((n for n in reversed(names) if get_kind(n).recognizes(p)), names[0])


def check_dataset(
    path: str | os.PathLike,
    kind: str | None = None,
    classes: list[str] | None = None,
    **options: Any,
) -> Report:
    """Inspect a dataset folder (or CSV) and return a :class:`Report`; nothing is modified.

    ``kind`` (a task kind's name) is guessed when None (see :func:`guess_kind`); the kind runs
    its checks (:meth:`visionlab.kinds.Kind.check_data`). ``classes`` restricts a classification
    dataset to those class folders, as the config's ``classes`` does. The ``options`` are those of
    :func:`check_files` and the kind's checks.
    """
    from visionlab.kinds import get_kind

    return get_kind(kind or guess_kind(path)).check_data(path, classes=classes, **options)


def check_segmentation(path: str | os.PathLike, **options: Any) -> Report:
    """The checks of a segmentation dataset (images, masks, classes.json), masks included."""
    sidx = find_segmentation(path, require_masks=False)
    return check_files("segmentation", sidx.root, sidx.images, sidx.masks, sidx.splits, None, sidx.class_names, sidx, **options)


def check_files(
    kind: str,
    root: Path,
    files: list[Path],
    masks: list[Path | None],
    splits: list[str | None],
    labels: list[int] | None,
    class_names: list[str],
    sidx: SegmentationIndex | None,
    near_dup_threshold: int = NEAR_DUP_THRESHOLD,
    near_dup_max_mae: float = NEAR_DUP_MAX_MAE,
    tiny_side: int = TINY_SIDE,
    label_findings: Callable[[Report, list[str]], None] | None = None,
    workers: int = 2,
    progress: Callable[[int, int], None] | None = None,
) -> Report:
    """The checks every dataset gets (decoding, sizes, duplicates, unused files); ``labels`` add counts per
    class, ``label_findings(report, splits)`` the kind's checks of them, ``sidx`` the mask checks.
    ``progress(done, total)`` is called as files are decoded."""
    t0 = time.perf_counter()
    want_mask = sidx is not None
    done = 0
    scans: list[_Scan] = []
    with ThreadPoolExecutor(max_workers=max(1, workers)) as ex:
        for s in ex.map(lambda fm: _scan(fm[0], fm[1], want_mask), zip(files, masks)):
            scans.append(s)
            done += 1
            if progress is not None:
                progress(done, len(files))

    split_keys = sorted({s or "all" for s in splits}, key=lambda s: ("train", "val", "test", "all").index(s))
    report = Report(
        root=str(root),
        kind=kind,
        n_images=len(files),
        classes=list(class_names),
        counts={},
        split_counts=dict(Counter(s or "all" for s in splits)),
        sizes={},
        modes={},
        formats={},
        near_dup_threshold=near_dup_threshold,
    )
    report.split_counts = {k: report.split_counts[k] for k in split_keys}
    if labels is not None:
        counts = {c: {k: 0 for k in split_keys} for c in class_names}
        for y, sp in zip(labels, splits):
            counts[class_names[y]][sp or "all"] += 1
        report.counts = counts

    _decode_findings(report, scans, tiny_side)
    if label_findings is not None:
        label_findings(report, split_keys)
    _duplicate_findings(report, scans, labels, splits, class_names, near_dup_threshold, near_dup_max_mae)
    if sidx is not None:
        _mask_findings(report, scans, masks, sidx)
    if root.is_dir():
        _unused_files(report, root, files, masks)
    report.seconds = round(time.perf_counter() - t0, 3)
    return report


def _decode_findings(report: Report, scans: list[_Scan], tiny_side: int) -> None:
    ok = [s for s in scans if s.error is None]
    report.modes = dict(Counter(s.mode for s in scans if s.mode).most_common())
    report.formats = dict(Counter(s.fmt for s in scans if s.fmt).most_common())
    report.sizes = {
        "width": _summary([s.width for s in ok]),
        "height": _summary([s.height for s in ok]),
        "min_side": _summary([min(s.width, s.height) for s in ok]),
    }
    what_by_code = {  # (one file, several files)
        "missing_file": ("is listed but missing", "are listed but missing"),
        "not_an_image": ("is not an image visionlab reads (text, HTML, empty, another format...)",
                         "are not images visionlab reads (text, HTML, empty, other formats...)"),
        "truncated": ("is truncated (the file ends before the image does)", "are truncated (the files end before the images do)"),
        "unreadable": ("cannot be decoded", "cannot be decoded"),
    }
    for code, (one, several) in what_by_code.items():
        bad = [s for s in scans if s.error_code == code]
        if bad:
            first = f"{bad[0].path.name}: {bad[0].error}"
            what = one if len(bad) == 1 else several
            report.add(Finding("error", code, f"{_plural(len(bad), 'file')} {what}; training skips them and says how many (first: {first}). Remove or replace them.", [str(s.path) for s in bad]))
    tail = [s for s in ok if s.no_jpeg_end]
    if tail:
        report.add(Finding("warning", "jpeg_no_end_marker", f"{says(len(tail), 'JPEG', 'lack')} the end marker: cut short, decoded only because PIL's LOAD_TRUNCATED_IMAGES is on (the bottom is grey); replace them.", [str(s.path) for s in tail]))

    mismatched = [s for s in scans if s.fmt and IMAGE_FORMATS.get(s.path.suffix.lower(), s.fmt) != s.fmt]
    if mismatched:
        kinds = Counter(f"{s.fmt} named {s.path.suffix.lower()}" for s in mismatched)
        detail = ", ".join(f"{k}: {n}" for k, n in kinds.most_common())
        report.add(Finding("warning", "extension_mismatch", f"{says(len(mismatched), 'file', 'hold')} another format than the extension says ({detail}); visionlab reads them, other tools may not.", [str(s.path) for s in mismatched]))

    tiny = [s for s in ok if min(s.width, s.height) < tiny_side]
    if tiny:
        smallest = min(tiny, key=lambda s: s.width * s.height)
        report.add(Finding("warning", "tiny_image", f"{says(len(tiny), 'image', 'have')} a side under {tiny_side} px (smallest {smallest.width}x{smallest.height}); upscaling them adds blur, not detail.", [str(s.path) for s in tiny]))

    for mode, note in (("RGBA", "alpha is composited on white"), ("LA", "alpha is composited on white"), ("P", "palette is expanded"),
                       ("CMYK", "colours are converted, check they look right"), ("L", "grey is copied to 3 channels"),
                       ("1", "bilevel, grey is copied to 3 channels"), ("I;16", "16-bit, scaled to 8 bits")):
        hit = [s for s in scans if s.mode == mode]
        if hit:
            report.add(Finding("info", f"mode_{mode.replace(';', '_').lower()}", f"{_plural(len(hit), 'image')} in mode {mode}: converted to RGB on load ({note}).", [str(s.path) for s in hit]))
    animated = [s for s in ok if s.frames > 1]
    if animated:
        report.add(Finding("info", "animated", f"{says(len(animated), 'image', 'have')} several frames; only the first is used.", [str(s.path) for s in animated]))


def _duplicate_findings(report: Report, scans: list[_Scan], labels: list[int] | None, splits: list[str | None], class_names: list[str], threshold: int, max_mae: float) -> None:
    def where(i: int) -> tuple[int | None, str | None]:
        return (labels[i] if labels is not None else None), splits[i]

    def category(idx: list[int]) -> str:
        if labels is not None and len({labels[i] for i in idx}) > 1:
            return "across_classes"
        if len({splits[i] for i in idx}) > 1:
            return "across_splits"
        return "within"

    def describe(i: int) -> str:
        lab, sp = where(i)
        parts = [class_names[lab]] if lab is not None else []
        if sp:
            parts.append(sp)
        return f"{scans[i].path.name} ({'/'.join(parts)})" if parts else scans[i].path.name

    def add(prefix: str, cat: str, groups: list[list[int]], what: str) -> None:
        if not groups:
            return
        severity, text = {
            "across_classes": ("error", "with different labels: at least one label is wrong; keep one copy with the right label"),
            "across_splits": ("error", "across train/val/test: test scores are inflated by leakage; keep each in one split"),
            "within": ("warning" if prefix == "exact" else "info", "within a class: they weigh double in training; remove the extra copies"),
        }[cat]
        n_files = sum(len(g) for g in groups)
        example = " = ".join(describe(i) for i in groups[0][:3])
        code = f"{prefix}_duplicate" + ("" if cat == "within" else f"_{cat}")
        report.add(Finding(
            severity, code,
            f"{_plural(len(groups), 'group')} of {what} ({n_files} files) {text} (e.g. {example}).",
            [str(scans[i].path) for g in groups for i in g],
            [[str(scans[i].path) for i in g] for g in groups],
        ))

    by_sha: dict[str, list[int]] = defaultdict(list)
    for i, s in enumerate(scans):
        if s.error is None:  # broken files are reported once, as broken
            by_sha[s.sha].append(i)
    exact = [g for g in by_sha.values() if len(g) > 1]
    for cat in ("across_classes", "across_splits", "within"):
        add("exact", cat, [g for g in exact if category(g) == cat], "identical files")

    hashed = [i for i, s in enumerate(scans) if s.phash is not None]
    if not hashed:
        return
    ii, jj, _ = near_duplicate_pairs([scans[i].phash for i in hashed], threshold)
    if len(ii):
        thumbs = np.stack([scans[i].thumb for i in hashed]).reshape(len(hashed), -1).astype(np.float32)
        mae = np.abs(thumbs[ii] - thumbs[jj]).mean(axis=1)
        ii, jj = ii[mae <= max_mae], jj[mae <= max_mae]
    pairs_by_cat: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for a, b in zip(ii.tolist(), jj.tolist()):
        a, b = hashed[a], hashed[b]
        if scans[a].sha == scans[b].sha:
            continue  # already an exact duplicate
        pairs_by_cat[category([a, b])].append((a, b))
    for cat in ("across_classes", "across_splits", "within"):
        add("near", cat, _components(pairs_by_cat[cat]), f"near-identical images (perceptual hash within {threshold} bits, thumbnails within {max_mae:g})")


def _mask_findings(report: Report, scans: list[_Scan], masks: list[Path | None], sidx: SegmentationIndex) -> None:
    missing = [s for s, m in zip(scans, masks) if m is None]
    if missing:
        report.add(Finding("error", "missing_mask", f"{says(len(missing), 'image', 'have')} no mask (expected masks/<same stem>.png); training refuses the dataset until they do.", [str(s.path) for s in missing]))
    bad = [s for s in scans if s.mask_error]
    if bad:
        report.add(Finding("error", "unreadable_mask", f"{_plural(len(bad), 'mask')} cannot be used (first: {bad[0].mask_error}).", [str(m) for s, m in zip(scans, masks) if s.mask_error]))
    wrong = [(s, m) for s, m in zip(scans, masks) if s.mask_shape is not None and s.mask_shape != (s.height, s.width)]
    if wrong:
        s0, _ = wrong[0]
        report.add(Finding("error", "mask_size_mismatch", f"{says(len(wrong), 'mask', 'differ')} in size from their image (first: {s0.path.name} is {s0.width}x{s0.height}, mask {s0.mask_shape[1]}x{s0.mask_shape[0]}); masks must match pixel for pixel.", [str(m) for _, m in wrong]))

    hists = [s.mask_hist for s in scans if s.mask_hist is not None]
    if not hists:
        return
    known = {c.value for c in sidx.classes}
    total = np.sum(hists, axis=0)
    unknown_vals = [v for v in np.nonzero(total)[0].tolist() if v not in known and v != sidx.ignore_index]
    if unknown_vals:
        files = [str(m) for s, m in zip(scans, masks) if s.mask_hist is not None and any(s.mask_hist[v] for v in unknown_vals)]
        report.add(Finding("error", "unknown_mask_value", f"mask pixel value(s) {', '.join(map(str, unknown_vals))} are not in classes.json (ignore_index {sidx.ignore_index}) in {_plural(len(files), 'mask')}; add the class or map them to ignore_index.", files))
    labelled = int(sum(total[c.value] for c in sidx.classes if c.value < 256))
    report.pixel_shares = {c.name: round(float(total[c.value]) / max(labelled, 1), 5) for c in sidx.classes if c.value < 256}
    ignored = float(total[sidx.ignore_index]) / max(int(total.sum()), 1) if sidx.ignore_index < 256 else 0.0
    shares = ", ".join(f"{k} {v:.1%}" for k, v in sorted(report.pixel_shares.items(), key=lambda kv: -kv[1]))
    report.add(Finding("info", "pixel_shares", f"class pixel shares: {shares}; ignored {ignored:.1%}."))
    absent = [c.name for c in sidx.classes if c.value < 256 and total[c.value] == 0]
    if absent:
        report.add(Finding("warning", "class_absent", f"class(es) {', '.join(absent)} never appear in any mask; the model cannot learn them."))


def _unused_files(report: Report, root: Path, files: list[Path], masks: list[Path | None]) -> None:
    """Files under the dataset folder that the layout does not use (wrong extension, orphan masks...)."""
    used = {os.path.abspath(p) for p in files} | {os.path.abspath(m) for m in masks if m is not None}
    hidden_images: list[str] = []
    stray: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith((".", "_"))]
        for name in filenames:
            p = os.path.join(dirpath, name)
            if name.startswith(".") or name == "classes.json" or os.path.abspath(p) in used:
                continue
            if is_image_file(name):
                stray.append(p)
                continue
            try:
                with open_image(p) as im:
                    im.format  # noqa: B018  (header only)
                hidden_images.append(p)
            except DECODE_ERRORS:
                pass
    if hidden_images:
        report.add(Finding("warning", "image_without_extension", f"{says(len(hidden_images), 'file', 'hold')} an image but no image extension, so they are not used; rename them (e.g. to .jpg).", sorted(hidden_images)))
    if stray:
        report.add(Finding("warning", "unused_image", f"{says(len(stray), 'image file', 'lie')} outside the layout (not in a class folder, or masks without an image) and are not used.", sorted(stray)))
