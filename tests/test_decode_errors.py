"""A broken image file is reported as unreadable; a bug in visionlab's code is not swallowed as one."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

import visionlab
from visionlab.data import io as vio
from visionlab.data.cache import build_cache
from visionlab.data.io import UnreadableImage, load_image, load_mask


def _png(path: Path, size: int = 40) -> Path:
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(path)
    return path


def _broken(folder: Path) -> list[Path]:
    """A truncated PNG, a garbage file named .jpg and an empty file."""
    data = _png(folder / "whole.png").read_bytes()
    (folder / "truncated.png").write_bytes(data[: len(data) // 2])
    (folder / "garbage.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    (folder / "empty.png").write_bytes(b"")
    return [folder / n for n in ("truncated.png", "garbage.jpg", "empty.png")]


def test_broken_files_are_unreadable(tmp_path: Path):
    for p in _broken(tmp_path):
        with pytest.raises(UnreadableImage, match=rf"{p.name}: cannot decode image"):
            load_image(p)
        with pytest.raises(UnreadableImage, match=rf"{p.name}: cannot decode mask"):
            load_mask(p)
    assert load_image(tmp_path / "whole.png").size == (40, 40)


def test_pils_own_type_error_on_a_corrupt_frame_is_unreadable(tmp_path: Path, monkeypatch):
    # Pillow's TIFF reader raises TypeError("Missing dimensions") on some corrupt files.
    def corrupt(self, *a, **k):
        raise TypeError("Missing dimensions")

    monkeypatch.setattr(ImageFile.ImageFile, "load", corrupt)
    with pytest.raises(UnreadableImage, match=r"TypeError: Missing dimensions"):
        load_image(_png(tmp_path / "a.png"))


def test_decompression_bomb_says_how_to_allow_it(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # PIL refuses above twice this
    with pytest.raises(UnreadableImage, match=r"decompression bomb.*MAX_IMAGE_PIXELS \(here 100 pixels; the visionlab command sets 300,000,000\)"):
        load_image(_png(tmp_path / "a.png", size=40))


def _bug(*args, **kwargs):
    raise TypeError("a bug in visionlab, not a broken file")


def test_a_bug_in_decoding_propagates(tmp_path: Path, monkeypatch):
    path = _png(tmp_path / "a.png")
    monkeypatch.setattr(vio, "_to_rgb", _bug)
    with pytest.raises(TypeError, match="a bug in visionlab"):
        load_image(path)
    with pytest.raises(TypeError, match="a bug in visionlab"):
        load_image(io.BytesIO(path.read_bytes()))


def test_a_bug_propagates_through_the_cache_and_the_predictor(tmp_path: Path, monkeypatch, cracks_model: Path):
    paths = [_png(tmp_path / f"{i}.png") for i in range(3)]
    pre = {"kind": "classification", "image_size": 16, "resize": "squash"}
    cache = build_cache(paths + _broken(tmp_path), pre, mode="memory", workers=1)
    assert [Path(p).name for p, _ in cache.failed] == ["truncated.png", "garbage.jpg", "empty.png"]
    predictor = visionlab.load(cracks_model, device="cpu")
    preds = predictor.predict([*paths, tmp_path / "garbage.jpg"])
    assert [p.error is None for p in preds] == [True, True, True, False]
    monkeypatch.setattr(vio, "resize_image", _bug)
    with pytest.raises(TypeError, match="a bug in visionlab"):
        build_cache(paths, {"kind": "classification", "image_size": 12, "resize": "squash"}, mode="memory", workers=1)
    with pytest.raises(TypeError, match="a bug in visionlab"):
        predictor.predict(paths)
