"""The training augmentation, described once for both task kinds (no torch import here).

A recipe's ``augment:`` block is an :class:`Augment`. Every key means the same for both kinds:
what it does to one training sample, the sample being the image a classifier is trained on or
the ``tile_size`` crop a segmentation model is trained on. Classifiers augment whole batches on
the device (:class:`visionlab.data.transforms.BatchAugment`, reflecting at the borders);
segmentation augments each crop and its mask alike (nearest neighbour for the mask), and its zoom
and shift move the crop window over the photo, so they show real pixels instead of reflections.
Segmentation applies ``rot90`` and ``rotate`` to half of the crops and the colour jitter to 80 %
of them (albumentations), classifiers to every sample. Validation, test and prediction data are
never augmented.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping

from visionlab.errors import VisionlabError

__all__ = ["Augment"]


@dataclass(frozen=True)
class Augment:
    """The augmentation of training samples; 0 or false turns a key off."""

    hflip: bool = True
    """Mirror left-right, each sample with probability 1/2."""
    vflip: bool = False
    """Mirror top-bottom, each sample with probability 1/2."""
    rot90: bool = False
    """Turn by a random multiple of 90 degrees (aerial and texture data have no up)."""
    rotate: float = 0.0
    """Rotate by a random angle of up to this many degrees either way."""
    scale: tuple[float, float] = (0.85, 1.0)
    """Random zoom: the side of the region a sample shows, relative to the sample's side, uniform in
    [min, max]; below 1 zooms in, above 1 zooms out, [1, 1] is off."""
    translate: float = 0.05
    """Shift the content by up to this fraction of the sample's side, along each axis."""
    brightness: float = 0.2
    """Multiply the brightness by a random factor in [1 - brightness, 1 + brightness]."""
    contrast: float = 0.2
    """Scale the contrast (towards the mean grey) by a random factor in [1 - contrast, 1 + contrast]."""
    saturation: float = 0.2
    """Scale the saturation (towards grey) by a random factor in [1 - saturation, 1 + saturation]."""
    hue: float = 0.0
    """Turn the hue by up to this fraction of the colour circle either way (at most 0.5)."""

    @classmethod
    def from_config(cls, values: Mapping[str, Any]) -> "Augment":
        """The description of a config's ``augment`` mapping (missing keys take their defaults); one
        number ``x`` for ``scale`` means [x, 1]."""
        names = [f.name for f in fields(cls)]
        unknown = sorted(set(values) - set(names))
        if unknown:
            raise VisionlabError(f"unknown augment key(s) {', '.join(unknown)}.", f"Valid augment keys: {', '.join(names)}.")
        kw: dict[str, Any] = {}
        for f in fields(cls):
            if f.name not in values:
                continue
            v = values[f.name]
            if f.name == "scale":
                lo, hi = (v[0], v[1]) if isinstance(v, (list, tuple)) else (v, 1.0)
                kw[f.name] = (float(lo), float(hi))
            else:
                kw[f.name] = bool(v) if isinstance(f.default, bool) else float(v)
        return cls(**kw)

    def as_config(self) -> dict[str, Any]:
        """The mapping a config holds (``scale`` as a [min, max] list, as YAML writes it)."""
        out = asdict(self)
        out["scale"] = list(self.scale)
        return out
