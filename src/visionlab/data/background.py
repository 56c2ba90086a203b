"""Background removal for specimen photos (the minerals seed's optional preprocessing).

The seed cut mineral specimens out of their backgrounds before training: edges of the object,
closed into an outline, filled, everything else painted a constant colour. This is the same
classic pipeline with OpenCV, deterministic, and cautious: when the mask it finds is empty or
covers nearly the whole photo, the photo is returned unchanged, never destroyed. The same
function is called at train and predict time, so both see the same pixels.
"""

from __future__ import annotations

import cv2
import numpy as np
from PIL import Image

from visionlab.errors import VisionlabError

__all__ = ["remove_background", "foreground_mask"]


def _odd(n: float) -> int:
    k = max(1, int(round(n)))
    return k if k % 2 else k + 1


def _edges(rgb: np.ndarray, sigma: float, max_threshold: float, chroma_threshold: float, blur: int) -> np.ndarray:
    """The edge map of ``rgb``: Canny on the blurred grey image with the usual auto-Canny
    thresholds, (1 -/+ sigma) * median, capped: on a white backdrop (median 255) the plain rule asks
    for gradients of 170-255 and loses the soft outline of the specimen. Grey loses colour-only
    contrast (an orange stone on grey felt, a yellow crystal on white), so edges of the Lab chroma
    channels a and b are added, with fixed thresholds: their median says nothing about the picture."""
    blurred = cv2.GaussianBlur(rgb, (_odd(blur), _odd(blur)), 0)
    grey = cv2.cvtColor(blurred, cv2.COLOR_RGB2GRAY)
    med = float(np.median(grey))
    upper = min((1.0 + sigma) * med, max_threshold)
    lower = min((1.0 - sigma) * med, upper / 2.0)
    edges = cv2.Canny(grey, int(lower), max(int(upper), int(lower) + 1))
    if chroma_threshold:
        lab = cv2.cvtColor(blurred, cv2.COLOR_RGB2LAB)
        for c in (1, 2):
            edges |= cv2.Canny(np.ascontiguousarray(lab[..., c]), int(chroma_threshold / 2), int(chroma_threshold))
    return edges


def _filled_outline(edges: np.ndarray, dilate_iter: int, close_frac: float, open_frac: float) -> np.ndarray:
    """The edges dilated and closed into outlines, their external contours filled (uint8, 255 inside),
    then opened to drop the edge strips that never closed."""
    sh, sw = edges.shape[:2]
    edges = cv2.dilate(edges, np.ones((3, 3), np.uint8), iterations=dilate_iter)
    k = _odd(close_frac * min(sh, sw))
    edges = cv2.morphologyEx(edges, cv2.MORPH_CLOSE, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)))

    contours, _ = cv2.findContours(edges, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    mask = np.zeros((sh, sw), np.uint8)
    cv2.drawContours(mask, contours, -1, 255, thickness=cv2.FILLED)

    if open_frac > 0:  # drop edge strips that never closed into an outline
        k = _odd(open_frac * min(sh, sw))
        mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)))
    return mask


def foreground_mask(
    img: Image.Image | np.ndarray,
    *,
    sigma: float = 0.33,
    max_threshold: float = 150.0,
    chroma_threshold: float = 80.0,
    blur: int = 5,
    dilate_iter: int = 2,
    close_frac: float = 0.04,
    open_frac: float = 0.02,
    min_island_frac: float = 0.01,
    work_size: int = 512,
) -> np.ndarray:
    """A boolean HxW mask of the object(s): True on the foreground.

    Steps: Gaussian blur; Canny on the grey image with thresholds ``(1 -/+ sigma) * median``
    (upper capped at ``max_threshold``, lower at half the upper), joined with Canny on the Lab
    chroma channels (upper ``chroma_threshold``; 0 turns it off); dilation and a closing (kernel
    ``close_frac`` of the short side) that join the outline; filled external contours; an opening
    (``open_frac``) that drops edge strips which never closed; connected components smaller than
    ``min_island_frac`` of the image dropped. Worked out on a copy at most ``work_size`` pixels
    on the long side, then scaled back.
    """
    rgb = np.asarray(img.convert("RGB") if isinstance(img, Image.Image) else img)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise VisionlabError(f"remove_background expects an RGB uint8 image, got shape {rgb.shape} {rgb.dtype}.")
    h, w = rgb.shape[:2]
    scale = min(1.0, work_size / max(h, w))
    small = cv2.resize(rgb, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA) if scale < 1 else rgb
    sh, sw = small.shape[:2]
    edges = _edges(small, sigma, max_threshold, chroma_threshold, blur)
    mask = _filled_outline(edges, dilate_iter, close_frac, open_frac)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    keep = np.zeros(n, bool)
    keep[1:] = stats[1:, cv2.CC_STAT_AREA] >= min_island_frac * sh * sw
    mask = keep[labels]
    if scale < 1:
        mask = cv2.resize(mask.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST).astype(bool)
    return mask


def _solidity(mask: np.ndarray) -> float:
    """Foreground area over the area of its convex hull (1.0 for a convex blob)."""
    pts = cv2.findNonZero(mask.astype(np.uint8))
    if pts is None:
        return 0.0
    hull_area = cv2.contourArea(cv2.convexHull(pts))
    return float(mask.sum()) / max(hull_area, 1.0)


def remove_background(
    img: Image.Image,
    *,
    fill: tuple[int, int, int] = (255, 255, 255),
    min_fraction: float = 0.05,
    max_fraction: float = 0.95,
    min_center: float = 0.5,
    min_solidity: float = 0.75,
    **mask_kwargs,
) -> Image.Image:
    """Paint the background of a specimen photo ``fill`` (white); RGB in, RGB out, same size.

    The photo is returned unchanged when the foreground found covers less than ``min_fraction``
    or more than ``max_fraction`` of it (nothing found, or no background to remove), or less than
    ``min_center`` of its central third (specimens are photographed centred: a mask that misses
    the centre has found something else, such as a transparent crystal's few edges), or fills
    less than ``min_solidity`` of its convex hull (a ragged mask means the outline never closed
    and parts of the object would be painted over).
    ``mask_kwargs`` go to :func:`foreground_mask`.
    """
    rgb_img = img.convert("RGB") if img.mode != "RGB" else img
    mask = foreground_mask(rgb_img, **mask_kwargs)
    frac = float(mask.mean()) if mask.size else 0.0
    h, w = mask.shape
    center = mask[h // 3 : max(h // 3 + 1, 2 * h // 3), w // 3 : max(w // 3 + 1, 2 * w // 3)]
    if not min_fraction <= frac <= max_fraction or float(center.mean()) < min_center or _solidity(mask) < min_solidity:
        return rgb_img.copy()
    out = np.asarray(rgb_img).copy()
    out[~mask] = np.asarray(fill, dtype=np.uint8)
    return Image.fromarray(out, "RGB")
