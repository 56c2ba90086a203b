"""Decode each training item once, keep the result as uint8: one cache for both task kinds.

Two layouts share the same modes, budget and files. :func:`build_cache` stacks inputs that are all
resized to one size into an (N, S, S, 3) array (classification); :func:`build_record_cache` keeps
items of any size, each a tuple of arrays (a segmentation photo at its own size and its mask).

``mode``: 'memory' keeps the result in RAM only; 'disk' and 'auto' also write it to a file under
the cache dir, keyed by the files' paths, sizes and modification times plus the preprocessing,
so later runs (and ``evaluate``) skip decoding and a changed file invalidates the cache. A
result larger than ``budget_mb`` is served from a memory map of that file instead of RAM (in
'memory' mode too). Unreadable files are skipped and counted, never fatal.
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from visionlab.data.io import UnreadableImage
from visionlab.data.transforms import load_for_model

__all__ = ["ImageCache", "RecordCache", "build_cache", "build_record_cache", "decode_each", "cache_dir", "cache_key"]

_CACHE_VERSION = 1


def cache_dir() -> Path:
    from visionlab.paths import cache_home

    return cache_home() / "images"


@dataclass
class ImageCache:
    """``images[i]`` is the HxWx3 uint8 input of ``paths[i]``; ``ok[i]`` False for unreadable files."""

    images: np.ndarray
    ok: np.ndarray
    failed: list[tuple[str, str]] = field(default_factory=list)
    location: str = "memory"  # memory | memmap
    file: Path | None = None

    @property
    def nbytes(self) -> int:
        return int(self.images.nbytes)


@dataclass
class RecordCache:
    """``cache[i]`` is the tuple of uint8 arrays decoded for item ``i`` (``()`` where ``ok[i]`` is False:
    an unreadable item). From a file the arrays are views into one flat buffer, in RAM or memory-mapped."""

    records: list[tuple[np.ndarray, ...]]
    ok: np.ndarray
    failed: list[tuple[str, str]] = field(default_factory=list)
    location: str = "memory"  # memory | memmap
    file: Path | None = None

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> tuple[np.ndarray, ...]:
        return self.records[i]

    @property
    def nbytes(self) -> int:
        return sum(int(a.nbytes) for record in self.records for a in record)


def cache_key(paths: Sequence[os.PathLike | str], pre: Mapping[str, Any]) -> str:
    h = hashlib.sha1()
    h.update(json.dumps({"v": _CACHE_VERSION, "pre": dict(pre)}, sort_keys=True, default=str).encode())
    for p in paths:
        try:
            st = os.stat(p)
            h.update(f"{os.fspath(p)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{os.fspath(p)}\0missing\n".encode())
    return h.hexdigest()[:20]


def decode_each(
    paths: Sequence[os.PathLike | str],
    decode: Callable[[int], Any],
    keep: Callable[[int, Any], None],
    workers: int | None = None,
    progress: Any = None,
) -> tuple[np.ndarray, list[tuple[str, str]]]:
    """``decode(i)`` for every item on a thread pool, ``keep(i, value)`` on this thread in item order.

    Returns ``ok`` (False where decoding failed) and ``failed``: (``paths[i]``, the error) per failure.
    """
    ok = np.zeros(len(paths), dtype=bool)
    failed: list[tuple[str, str]] = []

    def work(i: int) -> tuple[int, Any, str | None]:
        try:
            return i, decode(i), None
        except UnreadableImage as exc:  # a broken file must not stop the run; a bug does
            return i, None, str(exc)

    with ThreadPoolExecutor(max_workers=max(1, workers or os.cpu_count() or 1)) as pool:
        for i, value, err in pool.map(work, range(len(paths))):
            if err is None:
                ok[i] = True
                keep(i, value)
            else:
                failed.append((str(paths[i]), err))
            if progress is not None:
                progress()
    return ok, failed


def _stored(folder: Path, key: str, suffix: str) -> tuple[Path, Path]:
    """The data file and the JSON metadata of cache ``key``."""
    return folder / f"{key}{suffix}", folder / f"{key}.json"


def _write_meta(meta: Path, info: dict[str, Any]) -> None:
    """Atomically: a process that finds the data file and its metadata (another machine's, on a
    shared cache) never reads half of it."""
    tmp = meta.with_name(f"{meta.stem}.{os.getpid()}.tmp.json")
    tmp.write_text(json.dumps(info, default=str))
    os.replace(tmp, meta)


def build_cache(
    paths: Sequence[Path],
    pre: Mapping[str, Any],
    mode: str = "auto",
    budget_mb: int = 4096,
    workers: int | None = None,
    progress: Any = None,
) -> ImageCache:
    """Decode ``paths`` once into an (N, S, S, 3) uint8 array (see module docstring)."""
    size = int(pre["image_size"])
    shape = (len(paths), size, size, 3)
    fits = int(np.prod(shape)) <= budget_mb * 2**20

    def decode(i: int) -> np.ndarray:
        return load_for_model(paths[i], pre)

    if mode == "memory" and fits:
        arr = np.zeros(shape, dtype=np.uint8)
        ok, failed = decode_each(paths, decode, arr.__setitem__, workers, progress)
        return ImageCache(arr, ok, failed, "memory")
    folder = cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    npy, meta = _stored(folder, cache_key(paths, pre), ".npy")
    if not (npy.exists() and meta.exists()):
        tmp = npy.with_name(f"{npy.stem}.{os.getpid()}.tmp.npy")
        mm = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
        ok, failed = decode_each(paths, decode, mm.__setitem__, workers, progress)
        mm.flush()
        del mm
        os.replace(tmp, npy)
        _write_meta(meta, {"ok": ok.tolist(), "failed": failed, "pre": dict(pre)})
    elif progress is not None:
        progress(len(paths))
    info = json.loads(meta.read_text())
    ok, failed = np.array(info["ok"], dtype=bool), [tuple(f) for f in info["failed"]]
    mm = np.load(npy, mmap_mode="r")
    if fits:
        return ImageCache(np.array(mm), ok, failed, "memory", npy)
    return ImageCache(mm, ok, failed, "memmap", npy)


def build_record_cache(
    paths: Sequence[Path],
    decode: Callable[[int], tuple[np.ndarray, ...]],
    pre: Mapping[str, Any],
    mode: str = "auto",
    budget_mb: int = 4096,
    depends: Sequence[Path] = (),
    workers: int | None = None,
    progress: Any = None,
) -> RecordCache:
    """Decode item ``i`` (named ``paths[i]``) once with ``decode(i)``, a tuple of uint8 arrays of any shapes.

    ``pre`` is what the decoding depends on besides the files, ``depends`` the other files it
    reads (masks); both are part of the key. Modes and budget as in the module docstring. In the
    file the records lie one after another; over the budget it is memory-mapped copy-on-write,
    so the arrays are writable like freshly decoded ones and the file never changes.
    """
    budget = budget_mb * 2**20
    binary, meta = _stored(cache_dir(), cache_key([*paths, *depends], pre), ".bin")
    if binary.exists() and meta.exists():
        if progress is not None:
            progress(len(paths))
        return _open_records(binary, meta, budget)
    shapes: list[list[tuple[int, ...]]] = [[] for _ in paths]
    spool = _Spool(binary.with_name(f"{binary.stem}.{os.getpid()}.tmp"), mode == "memory", budget)

    def keep(i: int, arrays: tuple[np.ndarray, ...]) -> None:
        arrays = tuple(np.ascontiguousarray(a, dtype=np.uint8) for a in arrays)
        shapes[i] = [a.shape for a in arrays]
        spool.add(arrays)

    ok, failed = decode_each(paths, decode, keep, workers, progress)
    if spool.file is None:  # 'memory' mode within the budget: no file
        held = iter(spool.held)
        return RecordCache([next(held) if good else () for good in ok], ok, failed, "memory")
    spool.file.close()
    os.replace(spool.path, binary)
    _write_meta(meta, {"ok": ok.tolist(), "failed": failed, "shapes": shapes, "pre": dict(pre)})
    return _open_records(binary, meta, budget)


class _Spool:
    """Records appended in order: held in RAM while ``hold`` and within ``budget`` bytes, else all
    written to ``path`` (what was held first)."""

    def __init__(self, path: Path, hold: bool, budget: int) -> None:
        self.path, self.hold, self.budget = path, hold, budget
        self.held: list[tuple[np.ndarray, ...]] = []
        self.bytes = 0
        self.file: Any = None

    def add(self, arrays: tuple[np.ndarray, ...]) -> None:
        self.bytes += sum(a.nbytes for a in arrays)
        if self.file is None and not (self.hold and self.bytes <= self.budget):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.file = self.path.open("wb")
            for record in self.held:
                self._write(record)
            self.held.clear()
        if self.file is None:
            self.held.append(arrays)
        else:
            self._write(arrays)

    def _write(self, arrays: tuple[np.ndarray, ...]) -> None:
        for a in arrays:
            a.tofile(self.file)


def _open_records(binary: Path, meta: Path, budget: int) -> RecordCache:
    """The records of a cache file: read into RAM when it fits ``budget`` bytes, else memory-mapped."""
    info = json.loads(meta.read_text())
    size = binary.stat().st_size
    if size == 0:  # nothing readable (np.memmap refuses an empty file)
        data, location = np.zeros(0, dtype=np.uint8), "memory"
    elif size <= budget:
        data, location = np.fromfile(binary, dtype=np.uint8), "memory"
    else:
        data, location = np.asarray(np.memmap(binary, dtype=np.uint8, mode="c")), "memmap"
    records, pos = [], 0
    for shapes in info["shapes"]:
        record = []
        for shape in shapes:
            n = int(np.prod(shape))
            record.append(data[pos : pos + n].reshape(shape))
            pos += n
        records.append(tuple(record))
    failed = [tuple(f) for f in info["failed"]]
    return RecordCache(records, np.array(info["ok"], dtype=bool), failed, location, binary)
