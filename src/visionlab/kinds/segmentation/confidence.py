"""The per-pixel confidence map of a segmentation: at every pixel, the probability of the class the
mask shows there (the winning class of the blended tiles), drawn so that a person can read it.

Torch-free (numpy and Pillow only): the PyTorch predictor, ``serve`` and the torch-free runtime
draw the same picture from the same numbers. The colours are viridis (matplotlib's perceptually
uniform, colour-blind safe map; its nine anchor colours here, interpolated linearly): dark purple
is a guess (low probability), yellow is sure. The scale is fixed, 0 to 100 %, so that maps of
different images and models compare; a legend strip under the map says so.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["confidence_fields", "colorize_confidence", "confidence_image", "confidence_overlay"]

#: viridis at 0, 1/8, ..., 1 (matplotlib's ``colormaps['viridis']`` there, x 255, rounded).
_ANCHORS = np.array([[68, 1, 84], [71, 45, 123], [59, 82, 139], [44, 114, 142], [33, 145, 140],
                     [40, 174, 128], [94, 201, 98], [173, 220, 48], [253, 231, 37]], dtype=np.float64)
#: 256 colours, one per byte of probability.
_LUT = np.stack([np.interp(np.linspace(0, 1, 256), np.linspace(0, 1, len(_ANCHORS)), _ANCHORS[:, c]) for c in range(3)],
                1).round().astype(np.uint8)
LEGEND_TITLE = "confidence: probability of the class the mask shows"


def confidence_fields(probs: np.ndarray) -> dict[str, Any]:
    """A result's confidence fields from (C, H, W) class probabilities: the H x W map of the top
    class's probability (float32) and its mean over the image."""
    conf = np.asarray(probs, dtype=np.float32).max(0)
    return {"confidence_map": conf, "mean_confidence": round(float(conf.mean()), 4)}


def colorize_confidence(conf: np.ndarray) -> np.ndarray:
    """H x W x 3 uint8 viridis colours of an H x W map of probabilities in [0, 1]."""
    return _LUT[np.clip(np.rint(np.nan_to_num(conf) * 255), 0, 255).astype(np.uint8)]


def _font(size: int) -> Any:
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: the fixed bitmap font
        return ImageFont.load_default()


def _legend(width: int) -> Any:
    """A strip ``width`` px wide: the colour bar from 0 to 100 % with ticks, and what it shows."""
    from PIL import Image, ImageDraw

    size = max(9, min(22, width // 40))  # the text's height, px
    font = _font(size)
    pad, bar_h = max(6, width // 60), max(8, size)
    height = 4 + bar_h + 4 + size + 6 + size + 6
    strip = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(strip)
    x0, x1 = pad, width - pad
    bar = colorize_confidence(np.linspace(0, 1, max(1, x1 - x0))[None].repeat(bar_h, 0))
    strip.paste(Image.fromarray(bar), (x0, 4))
    for q in (0, 0.25, 0.5, 0.75, 1.0):
        x = x0 + round(q * (x1 - x0 - 1))
        draw.line([(x, 4 + bar_h), (x, 7 + bar_h)], fill=(0, 0, 0))
        draw.text((x, 8 + bar_h), f"{q:.0%}", fill=(0, 0, 0), font=font, anchor="la" if q == 0 else "ra" if q == 1 else "ma")
    draw.text((width // 2, height - 4), LEGEND_TITLE, fill=(0, 0, 0), font=font, anchor="md")
    return strip


def confidence_image(conf: np.ndarray) -> Any:
    """The PNG-ready PIL image of a confidence map: the map in colour at its full size, with the
    legend strip under it."""
    from PIL import Image

    h, w = conf.shape
    legend = _legend(w)
    out = Image.new("RGB", (w, h + legend.height), (255, 255, 255))
    out.paste(Image.fromarray(colorize_confidence(conf)), (0, 0))
    out.paste(legend, (0, h))
    return out


def confidence_overlay(photo: np.ndarray, conf: np.ndarray, alpha: float = 0.6) -> np.ndarray:
    """H x W x 3 uint8: the confidence map's colours blended over ``photo`` (an RGB uint8 array,
    resized to the map's size when it differs): what the segmentation's explanation is."""
    from PIL import Image

    h, w = conf.shape
    if photo.shape[:2] != (h, w):
        photo = np.asarray(Image.fromarray(np.ascontiguousarray(photo[..., :3])).resize((w, h), Image.BILINEAR))
    blended = (1 - alpha) * photo[..., :3].astype(np.float32) + alpha * colorize_confidence(conf).astype(np.float32)
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)
