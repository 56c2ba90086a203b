"""Decode and resize each training image once, keep the result as uint8.

The array lives in memory when it fits ``cache_budget_mb``; it is also written to a
memory-mapped ``.npy`` file under the cache dir, keyed by the files' paths, sizes and
modification times plus the preprocessing, so later runs (and ``evaluate``) skip decoding and
a changed file invalidates the cache. Larger-than-budget datasets are read from the memory map.
Unreadable files are skipped and counted, never fatal.
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from visionlab.data.io import UnreadableImage
from visionlab.data.transforms import load_for_model

__all__ = ["ImageCache", "build_cache", "cache_dir", "cache_key"]

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


def _decode_all(paths: Sequence[Path], pre: Mapping[str, Any], out: np.ndarray, workers: int, progress: Any) -> tuple[np.ndarray, list]:
    ok = np.zeros(len(paths), dtype=bool)
    failed: list[tuple[str, str]] = []

    def work(i: int) -> tuple[int, str | None]:
        try:
            out[i] = load_for_model(paths[i], pre)
            return i, None
        except UnreadableImage as exc:  # a broken file must not stop the run; a bug does
            return i, str(exc)

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for i, err in pool.map(work, range(len(paths)), chunksize=16):
            if err is None:
                ok[i] = True
            else:
                failed.append((str(paths[i]), err))
            if progress is not None:
                progress()
    return ok, failed


def build_cache(
    paths: Sequence[Path],
    pre: Mapping[str, Any],
    mode: str = "auto",
    budget_mb: int = 4096,
    workers: int | None = None,
    progress: Any = None,
) -> ImageCache:
    """Decode ``paths`` once into an (N, S, S, 3) uint8 array (see module docstring).

    ``mode``: 'memory' keeps it in RAM only; 'disk' and 'auto' also keep a memory-mapped file
    that later runs reuse. Above the budget the array is served from the memory map.
    """
    size = int(pre["image_size"])
    shape = (len(paths), size, size, 3)
    nbytes = int(np.prod(shape))
    fits = nbytes <= budget_mb * 2**20
    workers = workers or os.cpu_count() or 1
    if mode == "memory" and fits:
        arr = np.zeros(shape, dtype=np.uint8)
        ok, failed = _decode_all(paths, pre, arr, workers, progress)
        return ImageCache(arr, ok, failed, "memory")
    folder = cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    key = cache_key(paths, pre)
    npy, meta = folder / f"{key}.npy", folder / f"{key}.json"
    if npy.exists() and meta.exists():
        info = json.loads(meta.read_text())
        mm = np.load(npy, mmap_mode="r")
        ok = np.array(info["ok"], dtype=bool)
        failed = [tuple(f) for f in info["failed"]]
        if progress is not None:
            progress(len(paths))
        if fits:
            return ImageCache(np.array(mm), ok, failed, "memory", npy)
        return ImageCache(mm, ok, failed, "memmap", npy)
    tmp = folder / f"{key}.{os.getpid()}.tmp.npy"
    mm = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
    ok, failed = _decode_all(paths, pre, mm, workers, progress)
    mm.flush()
    del mm
    os.replace(tmp, npy)
    meta.write_text(json.dumps({"ok": ok.tolist(), "failed": failed, "pre": dict(pre)}, default=str))
    mm = np.load(npy, mmap_mode="r")
    if fits:
        return ImageCache(np.array(mm), ok, failed, "memory", npy)
    return ImageCache(mm, ok, failed, "memmap", npy)
