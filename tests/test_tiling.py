"""Sliding-window inference: tiles cover the image, blending is exact for per-pixel models,
small images are padded, and the predicted mask has the original image's size."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from visionlab.data.geometry import tile_starts
from visionlab.engine.tiling import blend_window, predict_tiled


@pytest.mark.parametrize("length, tile, stride", [(100, 32, 24), (32, 32, 24), (20, 32, 24), (257, 256, 192), (64, 32, 32), (65, 32, 1)])
def test_tile_starts_cover_and_end_flush(length: int, tile: int, stride: int):
    starts = tile_starts(length, tile, stride)
    assert starts[0] == 0 and starts == sorted(set(starts))
    if length <= tile:
        assert starts == [0]
        return
    assert starts[-1] == length - tile  # the last tile ends exactly at the border
    covered = np.zeros(length, dtype=bool)
    for s in starts:
        covered[s : s + tile] = True
    assert covered.all()
    assert all(b - a <= stride for a, b in zip(starts, starts[1:]))


def test_blend_window_is_positive_and_peaks_in_the_centre():
    w = blend_window(32, 48)
    assert w.shape == (32, 48) and (w > 0).all()
    assert w[15:17, 23:25].max() == w.max() and w[0, 0] == w.min()
    assert torch.allclose(w, w.flip(0)) and torch.allclose(w, w.flip(1))  # symmetric


def _per_pixel_model(num_classes: int = 4, seed: int = 0) -> torch.nn.Module:
    """A 1x1 convolution: each output pixel depends on its input pixel only."""
    torch.manual_seed(seed)
    return torch.nn.Conv2d(3, num_classes, kernel_size=1).eval()


@pytest.mark.parametrize("h, w", [(70, 90), (64, 64), (20, 45), (100, 33), (31, 200), (1, 1)])
@pytest.mark.parametrize("overlap", [0.0, 0.25, 0.5])
def test_tiled_equals_untiled_for_a_per_pixel_model(h: int, w: int, overlap: float):
    model = _per_pixel_model()
    image = torch.randn(3, h, w)
    with torch.inference_mode():
        expected = model(image[None]).softmax(1)[0]
    got = predict_tiled(model, image, num_classes=4, tile=32, overlap=overlap, batch_size=3)
    assert got.shape == (4, h, w)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_every_tile_has_the_size_the_network_accepts():
    seen: set[tuple[int, int]] = set()

    def forward(batch: torch.Tensor) -> torch.Tensor:
        seen.add(tuple(batch.shape[2:]))
        assert batch.shape[2] % 32 == 0 and batch.shape[3] % 32 == 0
        return torch.zeros(batch.shape[0], 2, *batch.shape[2:])

    probs = predict_tiled(forward, torch.randn(3, 50, 300), num_classes=2, tile=64)
    assert seen == {(64, 64)}  # the short side (50) is padded to 64, the long side is tiled
    assert torch.allclose(probs, torch.full_like(probs, 0.5))  # zero logits -> uniform probabilities
    seen.clear()
    predict_tiled(forward, torch.randn(3, 20, 45), num_classes=2, tile=256)
    assert seen == {(32, 64)}  # smaller than a tile: padded up to multiples of 32 only


def test_blending_hides_seams_of_a_position_dependent_model():
    """A model whose logits depend on the position inside the tile: the blend of overlapping tiles
    stays within the range of single-tile outputs (no spikes at tile borders)."""

    def forward(batch: torch.Tensor) -> torch.Tensor:
        n, _, th, tw = batch.shape
        ramp = torch.linspace(-1, 1, tw).expand(n, th, tw)
        return torch.stack([ramp, -ramp], 1)

    probs = predict_tiled(forward, torch.zeros(3, 64, 200), num_classes=2, tile=64, overlap=0.5)
    single = torch.linspace(-1, 1, 64).mul(2).sigmoid()
    assert probs.min() >= single.min() - 1e-6 and probs.max() <= single.max() + 1e-6
    assert torch.allclose(probs.sum(0), torch.ones(64, 200))


def test_predict_probs_resizes_to_the_original_size():
    from visionlab.data.preprocessing import Preprocessing
    from visionlab.data.transforms import Normalize
    from visionlab.kinds.segmentation.step import TileStep, predict_probs

    model = _per_pixel_model(3)
    img = np.random.default_rng(0).integers(0, 256, (35, 45, 3), dtype=np.uint8)
    pre = Preprocessing(kind="segmentation", image_size=32, mean=(0.5,) * 3, std=(0.5,) * 3, values=(0, 1, 2), tile_size=32,
                        tile_overlap=0.25)
    step = TileStep.of(model, pre, Normalize([0.5] * 3, [0.5] * 3), torch.device("cpu"))
    probs = predict_probs(step, img, out_size=(70, 90))
    assert probs.shape == (3, 70, 90)
    assert torch.allclose(probs.sum(0), torch.ones(70, 90), atol=1e-5)


@pytest.mark.parametrize("seg_scale", [1.0, 0.5])
def test_predicted_mask_has_the_original_size(seg_folder: Path, fast, seg_scale: float):
    import visionlab

    result = visionlab.train("landcover", data=seg_folder, **fast("landcover", ignore_classes=[], seg_scale=seg_scale,
                                                                  tile_size=32, val_fraction=0.25, test_fraction=0.0))
    predictor = visionlab.load(result.best_checkpoint)
    big = np.random.default_rng(1).integers(0, 256, (150, 97, 3), dtype=np.uint8)  # larger than a tile, odd sizes
    small = np.random.default_rng(2).integers(0, 256, (17, 23, 3), dtype=np.uint8)  # smaller than a tile
    for image in (big, small, seg_folder / "images" / "tile_1.png"):
        pred = predictor.predict(image)[0]
        h, w = (image.shape[:2] if isinstance(image, np.ndarray) else (70, 90))
        assert pred.error is None
        assert pred.mask.shape == (h, w)
        assert set(np.unique(pred.mask)) <= {0, 1, 2}
