"""The decode cache of segmentation: the same arrays as decoding each file, in every cache mode,
memory-mapped over the budget, reused by a later run, and the same training batches whatever the mode."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from visionlab.api import load_config
from visionlab.data.io import load_for_model, load_mask, resize_mask
from visionlab.registry import get_task
from visionlab.kinds import runner_for

# (cache, cache_budget_mb) -> where the arrays are expected to live
MODES = {("memory", 4096): "memory", ("auto", 4096): "memory", ("disk", 4096): "memory", ("disk", 0): "memmap",
         ("memory", 0): "memmap", ("none", 4096): None}


def _runner(data: Path, **overrides):
    """A prepared landcover runner on ``data``."""
    cfg = load_config("landcover", overrides={"data": str(data), "model_args": {"encoder_weights": None}, "seed": 3, **overrides})
    runner = runner_for(cfg, get_task("landcover"), torch.device("cpu"))
    runner.prepare()
    return runner


def _decoded(runner, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Pair ``k`` decoded from its files as main did before the shared cache: nearest-neighbour mask."""
    img = load_for_model(runner.index.images[k], runner.preprocessing)
    mask = runner.lut[load_mask(runner.index.masks[k])]
    return img, resize_mask(mask, (img.shape[1], img.shape[0]))


def _assert_pairs_equal_decoding(runner) -> None:
    for k in range(len(runner.index)):
        img, mask = runner.train_pair(k)
        want_img, want_mask = _decoded(runner, k)
        assert img.dtype == want_img.dtype == mask.dtype == want_mask.dtype == np.uint8
        assert np.array_equal(img, want_img) and np.array_equal(mask, want_mask), runner.index.images[k]


@pytest.mark.parametrize("cache,budget", list(MODES), ids=[f"{c}-{b}MB" for c, b in MODES])
@pytest.mark.parametrize("seg_scale", [1.0, 0.37])
def test_cached_pairs_equal_decoding_in_every_mode(seg_folder: Path, cache: str, budget: int, seg_scale: float):
    runner = _runner(seg_folder, ignore_classes=["water"], seg_scale=seg_scale, cache=cache, cache_budget_mb=budget)
    _assert_pairs_equal_decoding(runner)
    assert (runner.cache.location if runner.cache else None) == MODES[(cache, budget)]
    assert runner.data_info["cache"].split()[0] == (MODES[(cache, budget)] or "none")


def test_cached_landcover_photos_equal_decoding(shared_data: Path):
    """The shared LandCover photos (JPEG, 797 x 644) at the recipe's seg_scale, through a disk cache."""
    runner = _runner(shared_data / "landcover", cache="disk")
    assert runner.cache.file is not None and runner.cache.file.exists()
    _assert_pairs_equal_decoding(runner)


def test_a_disk_cache_is_reused_and_a_changed_mask_invalidates_it(seg_folder: Path, monkeypatch: pytest.MonkeyPatch):
    first = _runner(seg_folder, ignore_classes=[], cache="disk")
    import visionlab.kinds.segmentation.runner as seg

    def refuse(*args, **kwargs):
        raise AssertionError("decoded again although the cache file is there")

    with monkeypatch.context() as m:
        m.setattr(seg, "load_for_model", refuse)
        again = _runner(seg_folder, ignore_classes=[], cache="auto")
        assert again.cache.file == first.cache.file
        assert all(np.array_equal(a, b) for k in range(len(first.index)) for a, b in zip(first.train_pair(k), again.train_pair(k)))
    mask = seg_folder / "masks" / "tile_0.png"
    st = mask.stat()
    os.utime(mask, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert _runner(seg_folder, ignore_classes=[], cache="disk").cache.file != first.cache.file


def test_an_unreadable_pair_is_skipped_and_reported_in_every_mode(seg_folder: Path):
    (seg_folder / "images" / "tile_1.png").write_bytes(b"\x89PNG\r\n\x1a\n not a png")
    for cache, budget in MODES:
        runner = _runner(seg_folder, ignore_classes=[], cache=cache, cache_budget_mb=budget, val_fraction=0.0, test_fraction=0.0)
        assert [Path(p).name for p in runner.data_info["unreadable"]] == ["tile_1.png"]
        assert sorted(runner.splits["train"].tolist()) == [0, 2, 3]


def test_training_batches_and_pixel_shares_do_not_depend_on_the_cache_mode(seg_folder: Path):
    """Same crops in the same order (and a resumed epoch's tail) from RAM, a memory map or the files."""
    options = {"tile_size": 32, "crops_per_image": 3, "batch_size": 4, "ignore_classes": [], "val_fraction": 0.25,
               "test_fraction": 0.0, "augment": {"scale": [0.6, 1.5], "rotate": 10.0}}
    runs = []
    for cache, budget in MODES:
        runner = _runner(seg_folder, cache=cache, cache_budget_mb=budget, **options)
        batches = [b for epoch, start in ((0, 0), (1, 1)) for b in runner.train_batches(epoch, start)]
        runs.append((runner._pixel_shares(), batches))
    shares, batches = runs[0]
    assert shares.sum() == pytest.approx(1.0) and (shares > 0).all()
    for other_shares, other in runs[1:]:
        assert np.array_equal(other_shares, shares)
        assert len(other) == len(batches)
        assert all(torch.equal(x, u) and torch.equal(y, v) for (x, y), (u, v) in zip(batches, other))
