"""The config keys only segmentation tasks read (``Kind.options`` of the segmentation kind)."""

from __future__ import annotations

from dataclasses import dataclass

from visionlab.config import setting
from visionlab.kinds.base import KindOptions

__all__ = ["SegmentationOptions", "LOSSES"]

#: The ``loss`` choices: smp's losses, alone or summed.
LOSSES = ("ce", "focal", "focal+dice", "ce+dice", "focal+lovasz", "ce+lovasz")


@dataclass
class SegmentationOptions(KindOptions):
    """A segmentation task's own keys, written flat in its recipes beside the common ones."""

    loss: str = setting("ce", "ce | focal | focal+dice | ce+dice | focal+lovasz | ce+lovasz (smp losses)", choices=LOSSES,
                        instead={"classification": "a classifier trains with cross-entropy; shape it with label_smoothing and class_weights"})
    focal_gamma: float = setting(2.0, "focusing exponent of the focal loss")
    tile_size: int = setting(256, "training crop and inference tile, px (a multiple of 32)")
    tile_overlap: float = setting(0.25, "inference tiles overlap by this fraction and are blended")
    crops_per_image: int = setting(16, "random training crops per image per epoch")
    seg_scale: float = setting(1.0, "images are scaled by this before cropping and tiling (masks: nearest); predictions come "
                               "back at the original size")
    ignore_classes: list[str] = setting([], "classes treated like 255: neither learned nor scored")

    def checks(self) -> list[tuple[bool, str]]:
        return [(0 <= self.tile_overlap < 0.9, "tile_overlap must be in [0, 0.9)"),
                (self.tile_size >= 32 and self.tile_size % 32 == 0, "tile_size must be a multiple of 32 (U-Net downsamples 5 times)"),
                (self.tile_size <= 4096, "tile_size must be <= 4096"),
                (0.05 <= self.seg_scale <= 4, "seg_scale must be in [0.05, 4]"),
                (self.focal_gamma >= 0, "focal_gamma must be >= 0")]
