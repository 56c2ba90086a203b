"""Train/val/test splits that stay put as a dataset grows: each file's split is decided by a hash of
its dataset-relative name (see :func:`split_indices`). Shared by every kind; numpy only."""

from __future__ import annotations

import hashlib
import os
from typing import Sequence

import numpy as np

__all__ = ["split_indices", "split_keys", "split_unit"]


def split_keys(paths: Sequence[str | os.PathLike], root: str | os.PathLike) -> list[str]:
    """Each path relative to the dataset ``root``, with ``/`` separators: the names the split hashes.

    A path outside ``root`` (an absolute path in a CSV) keeps its own spelling."""
    base = os.path.abspath(root)
    out = []
    for p in paths:
        full = os.path.abspath(p)
        try:
            rel = os.path.relpath(full, base)
        except ValueError:  # another drive (Windows)
            rel = full
        if rel == os.pardir or rel.startswith(os.pardir + os.sep):
            rel = os.fspath(p)
        out.append(rel.replace(os.sep, "/"))
    return out


def split_unit(seed: int, key: str) -> float:
    """A file's place in [0, 1): a 64-bit BLAKE2b hash of the seed and its dataset-relative name."""
    digest = hashlib.blake2b(f"{int(seed)}\0{key}".encode("utf-8", "surrogateescape"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def split_indices(
    keys: Sequence[str],
    labels: np.ndarray | None,
    folder_splits: Sequence[str | None],
    val_fraction: float,
    test_fraction: float,
    seed: int,
) -> dict[str, np.ndarray]:
    """Indices of train/val/test. The dataset's own split folders (or a CSV ``split`` column)
    win; otherwise each file's split is decided by hashing its dataset-relative name.

    ``keys[i]`` is sample i's path relative to the dataset root (:func:`split_keys`). With
    ``u = split_unit(seed, key)`` uniform in [0, 1), a file is test when ``u < test_fraction``,
    val when ``u < test_fraction + val_fraction`` and train otherwise. With split folders but no
    val folder, val is carved from train the same way (``u < val_fraction``).

    Why a per-file threshold. The split must be stable as a dataset grows: adding photos must
    never move a photo already there between train, val and test, or continued training would
    see its own test set. Any rule with that property decides each file from that file alone
    (take the earlier dataset to be the single file), so no stable rule can give exact counts:
    ranking by hash within a class gives exact counts but shifts the cut-off, and so moves old
    files, whenever files are added. The threshold is the stable rule; it is also independent of
    the order files are listed in and of where the dataset folder lives.

    What it guarantees. Stratification is per class: the files of each class are split by the
    fractions on their own, so a class's test count is binomial, mean ``n * test_fraction`` and
    standard deviation ``sqrt(n * f * (1 - f))``: 225 +- 13.8 for a class of 1,500 files at 15 %,
    within +-3 sd (+-42) for 99.7 % of seeds or namings.

    Small data stays sane, at the price of two narrow exceptions to stability:

    * a split whose expected size ``n * fraction`` is at least one half, but into which no file
      hashes, takes the file nearest its range (test: the smallest ``u`` above it; val: the
      smallest ``u`` among the training files). Additions can only replace that file by a new
      one, so val and test never gain an old training file; the promoted file may go back to
      train (e.g. 12 images at 15 %: 1.8 test images expected, none hashed with 14 % chance).
    * a class (or, without labels, the whole pool) with no training file gets its file with the
      largest ``u`` back in train; a class of n files needs this with probability
      ``(f_val + f_test) ** n`` (0.24 % for 5 files at 15 % + 15 %), and only then can an
      addition move that one file out of train again.
    """
    n = len(keys)
    idx = np.arange(n)
    u = np.fromiter((split_unit(seed, k) for k in keys), dtype=np.float64, count=n)
    fs = np.array([s or "" for s in folder_splits], dtype=object) if len(folder_splits) else np.full(n, "", dtype=object)
    groups = np.asarray(labels, dtype=np.int64) if labels is not None else np.zeros(n, dtype=np.int64)
    if (fs != "").any():
        train, val, test = idx[fs == "train"], idx[fs == "val"], idx[fs == "test"]
        if len(val) == 0 and len(train) and val_fraction > 0:
            carved = _threshold_split(train, u, groups, 0.0, val_fraction)
            train, val = carved["train"], carved["val"]
        return {"train": train, "val": val, "test": test}
    return _threshold_split(idx, u, groups, test_fraction, val_fraction)


def _threshold_split(pool: np.ndarray, u: np.ndarray, groups: np.ndarray, test_f: float, val_f: float) -> dict[str, np.ndarray]:
    """The threshold split of the samples ``pool`` (``u``: every sample's place, ``groups``: its class),
    with the small-data rules of :func:`split_indices`."""
    up = u[pool]
    where = np.where(up < test_f, 0, np.where(up < test_f + val_f, 1, 2))  # 0 test, 1 val, 2 train
    for split, frac in ((0, test_f), (1, val_f)):
        if frac > 0 and len(pool) * frac >= 0.5 and not (where == split).any():
            candidates = np.flatnonzero(where != 0 if split == 0 else where == 2)
            if len(candidates):
                where[candidates[np.argmin(up[candidates])]] = split
    for g in np.unique(groups[pool]):
        members = np.flatnonzero(groups[pool] == g)
        if not (where[members] == 2).any():
            where[members[np.argmax(up[members])]] = 2
    return {"train": pool[where == 2], "val": pool[where == 1], "test": pool[where == 0]}
