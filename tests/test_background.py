"""Background removal: white background, object kept, photos never destroyed."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from visionlab.data.background import foreground_mask, remove_background
from visionlab.data.io import load_image

SHARED = Path(os.environ.get("VISIONLAB_SHARED_DATA") or Path(__file__).resolve().parents[1].parent / "shared" / "data")
MINERALS = SHARED / "minerals"


def _specimen(size: int = 200, seed: int = 0) -> tuple[Image.Image, np.ndarray]:
    """A textured orange 'rock' on a noisy grey background, and its true mask."""
    rng = np.random.default_rng(seed)
    h, w = size, int(size * 1.25)
    bg = np.clip(rng.normal(140, 12, (h, w, 1)) + np.array([0, 3, 6]), 0, 255)
    mask_img = Image.new("L", (w, h), 0)
    ImageDraw.Draw(mask_img).polygon(
        [(w * 0.30, h * 0.22), (w * 0.62, h * 0.15), (w * 0.78, h * 0.45), (w * 0.66, h * 0.80), (w * 0.34, h * 0.78), (w * 0.22, h * 0.50)],
        fill=255,
    )
    mask = np.asarray(mask_img) > 0
    rock = np.clip(np.array([200, 90, 30]) + rng.normal(0, 18, (h, w, 1)), 0, 255)
    arr = np.where(mask[..., None], rock, bg).astype(np.uint8)
    return Image.fromarray(arr, "RGB"), mask


def _erode(mask: np.ndarray, px: int) -> np.ndarray:
    import cv2

    return cv2.erode(mask.astype(np.uint8), np.ones((2 * px + 1, 2 * px + 1), np.uint8)) > 0


def test_background_becomes_white_and_object_stays():
    img, truth = _specimen()
    out = remove_background(img)
    assert out.mode == "RGB" and out.size == img.size
    a, b = np.asarray(img), np.asarray(out)
    white = (b == 255).all(-1)
    far_bg = _erode(~truth, 8)  # background, away from the outline
    inner = _erode(truth, 4)
    assert white[far_bg].mean() > 0.97
    assert (b[inner] == a[inner]).all(-1).mean() > 0.99
    # The mask itself matches the drawn object closely.
    m = foreground_mask(img)
    iou = (m & truth).sum() / (m | truth).sum()
    assert iou > 0.85


def test_other_fill_colour_and_deterministic():
    img, truth = _specimen(seed=1)
    out1 = np.asarray(remove_background(img, fill=(0, 0, 0)))
    out2 = np.asarray(remove_background(img, fill=(0, 0, 0)))
    assert np.array_equal(out1, out2)
    assert (out1[_erode(~truth, 8)] == 0).all(-1).mean() > 0.97


@pytest.mark.parametrize(
    "make",
    [
        lambda: Image.new("RGB", (120, 90), (200, 180, 40)),  # empty: nothing to cut out
        lambda: Image.fromarray(np.random.default_rng(0).integers(100, 140, (90, 120, 3), dtype=np.uint8)),  # noise only
        lambda: Image.new("RGB", (1, 1), (0, 0, 0)),
    ],
    ids=["flat", "noise", "one-pixel"],
)
def test_images_without_object_are_unchanged(make):
    img = make()
    out = remove_background(img)
    assert out.size == img.size and np.array_equal(np.asarray(out), np.asarray(img))


def test_frame_filling_texture_is_unchanged():
    """A close-up with edges everywhere has no background: the photo must survive intact."""
    rng = np.random.default_rng(3)
    tex = Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).resize((160, 120), Image.NEAREST)
    assert np.array_equal(np.asarray(remove_background(tex)), np.asarray(tex))


def test_off_centre_object_is_left_alone():
    """A mask that misses the centre of the photo has not found the specimen: keep the photo."""
    img, _ = _specimen()
    arr = np.asarray(img).copy()
    h, w = arr.shape[:2]
    arr = np.roll(arr, (h // 2, w // 2), axis=(0, 1))  # object split into the corners
    shifted = Image.fromarray(arr)
    assert np.array_equal(np.asarray(remove_background(shifted)), arr)


def test_modes_and_large_images():
    img, truth = _specimen(size=900)  # worked out on a reduced copy, mask scaled back
    out = remove_background(img.convert("RGBA"))
    assert out.mode == "RGB" and out.size == img.size
    assert (np.asarray(out)[_erode(~truth, 20)] == 255).all(-1).mean() > 0.97
    grey = remove_background(img.convert("L"))
    assert grey.mode == "RGB" and grey.size == img.size


REAL = ["malachite/0002.jpg", "muscovite/0065.jpg", "chrysocolla/0130.jpg"]


@pytest.mark.shared_data
def test_real_minerals_keep_the_central_object():
    if not MINERALS.is_dir():
        pytest.skip(f"shared data not found at {MINERALS} (set VISIONLAB_SHARED_DATA)")
    for rel in REAL:
        path = MINERALS / rel
        if not path.is_file():
            pytest.skip(f"{path} not found")
        img = load_image(path)
        a, b = np.asarray(img), np.asarray(remove_background(img))
        assert b.shape == a.shape
        h, w = a.shape[:2]
        centre = (slice(h // 3, 2 * h // 3), slice(w // 3, 2 * w // 3))
        kept = (a[centre] == b[centre]).all(-1).mean()
        changed = (a != b).any(-1).mean()
        print(f"{rel}: centre kept {kept:.1%}, pixels painted {changed:.1%}")
        assert kept > 0.95, rel
        assert changed > 0.05, f"{rel}: the plain background was not removed"
        corners = np.concatenate([b[:5, :5].reshape(-1, 3), b[:5, -5:].reshape(-1, 3), b[-5:, :5].reshape(-1, 3), b[-5:, -5:].reshape(-1, 3)])
        assert (corners == 255).all(-1).mean() > 0.7


@pytest.mark.shared_data
def test_real_minerals_are_never_destroyed():
    """Across a sample of every class, the output is either the photo itself or keeps its centre."""
    if not MINERALS.is_dir():
        pytest.skip(f"shared data not found at {MINERALS} (set VISIONLAB_SHARED_DATA)")
    files = [f for d in sorted(MINERALS.iterdir()) if d.is_dir() for f in sorted(d.iterdir())[:6]]
    assert files
    changed = 0
    for f in files:
        img = load_image(f)
        a, b = np.asarray(img), np.asarray(remove_background(img))
        assert b.shape == a.shape
        if np.array_equal(a, b):
            continue
        changed += 1
        h, w = a.shape[:2]
        centre = (slice(h // 3, 2 * h // 3), slice(w // 3, 2 * w // 3))
        assert (a[centre] == b[centre]).all(-1).mean() >= 0.5, f.name
    print(f"background removed on {changed}/{len(files)} photos")
    assert changed > 0
