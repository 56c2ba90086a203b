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
* whatever the kind adds in the same pass (:class:`KindChecks`; segmentation's mask checks are
  :mod:`visionlab.kinds.segmentation.checks`).

:func:`visionlab.kinds.check_dataset` returns a :class:`Report`; the tables and the JSON of ``visionlab data check``
are :mod:`visionlab.present.doctor`'s. The generic machinery lives here (the report, the scan,
hashes, duplicates, :func:`check_files`); each kind's checks live with the kind
(:mod:`visionlab.kinds.classification.checks`: class balance, and the cheap pre-training warnings);
which kind a folder is, and the check of a whole dataset, ask the kinds' registry (:func:`visionlab.kinds.guess_kind`,
:func:`visionlab.kinds.check_dataset`), so nothing here knows a kind.
"""

from __future__ import annotations

import hashlib
import io
import os
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

import numpy as np
from PIL import Image

from visionlab.data.io import DECODE_ERRORS, FORMAT_NAMES, IMAGE_FORMATS, UnreadableImage, is_image_file, load_image, open_image

__all__ = [
    "Finding",
    "Report",
    "check_files",
    "file_hash",
    "says",
    "plural",
    "Scan",
    "KindChecks",
    "phash",
    "near_duplicate_pairs",
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
class Scan:
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
    extra: Any = None  # what the kind's checks read beside a decoded image (KindChecks.read), e.g. its mask


@dataclass(frozen=True)
class KindChecks:
    """A kind's own checks, run in the doctor's one pass over the files: ``read(i)`` beside the
    decode of image ``i`` (its answer is that scan's ``extra``; not called for an image that does
    not decode), then ``findings(report, scans)`` after the checks every dataset gets."""

    read: Callable[[int], Any]
    findings: Callable[[Report, list[Scan]], None]


def _scan(path: Path, read_extra: Callable[[], Any] | None = None) -> Scan:
    """Read, hash and decode one image (and what the kind reads beside it): everything the report needs, in one go."""
    s = Scan(path)
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
    if read_extra is not None:
        s.extra = read_extra()
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


def plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def says(n: int, word: str, verb: str) -> str:
    """'1 file holds' / '2 files hold': a count, its noun and a verb that agrees (``verb`` in plural form)."""
    if n != 1:
        return f"{plural(n, word)} {verb}"
    return f"{plural(n, word)} {'has' if verb == 'have' else verb + 's'}"


# ----------------------------------------------------------------------------- the check


def check_files(
    kind: str,
    root: Path,
    files: list[Path],
    masks: list[Path | None],
    splits: list[str | None],
    labels: list[int] | None,
    class_names: list[str],
    extra: KindChecks | None,
    near_dup_threshold: int = NEAR_DUP_THRESHOLD,
    near_dup_max_mae: float = NEAR_DUP_MAX_MAE,
    tiny_side: int = TINY_SIDE,
    label_findings: Callable[[Report, list[str]], None] | None = None,
    workers: int = 2,
    progress: Callable[[int, int], None] | None = None,
) -> Report:
    """The checks every dataset gets (decoding, sizes, duplicates, unused files); ``labels`` add counts per
    class, ``label_findings(report, splits)`` the kind's checks of them, ``extra`` (:class:`KindChecks`)
    what it reads beside each image and finds (masks, not reported as unused files: ``masks``).
    ``progress(done, total)`` is called as files are decoded."""
    t0 = time.perf_counter()
    done = 0
    scans: list[Scan] = []
    with ThreadPoolExecutor(max_workers=max(1, workers)) as ex:
        for s in ex.map(lambda i: _scan(files[i], None if extra is None else partial(extra.read, i)), range(len(files))):
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
    if extra is not None:
        extra.findings(report, scans)
    if root.is_dir():
        _unused_files(report, root, files, masks)
    report.seconds = round(time.perf_counter() - t0, 3)
    return report


def _decode_findings(report: Report, scans: list[Scan], tiny_side: int) -> None:
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
            report.add(Finding("error", code, f"{plural(len(bad), 'file')} {what}; training skips them and says how many (first: {first}). Remove or replace them.", [str(s.path) for s in bad]))
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
            report.add(Finding("info", f"mode_{mode.replace(';', '_').lower()}", f"{plural(len(hit), 'image')} in mode {mode}: converted to RGB on load ({note}).", [str(s.path) for s in hit]))
    animated = [s for s in ok if s.frames > 1]
    if animated:
        report.add(Finding("info", "animated", f"{says(len(animated), 'image', 'have')} several frames; only the first is used.", [str(s.path) for s in animated]))


def _duplicate_findings(report: Report, scans: list[Scan], labels: list[int] | None, splits: list[str | None], class_names: list[str], threshold: int, max_mae: float) -> None:
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
            f"{plural(len(groups), 'group')} of {what} ({n_files} files) {text} (e.g. {example}).",
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
