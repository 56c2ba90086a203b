"""The segmentation kind's one decode-and-run step: an image in, per-pixel class probabilities out
(blended tiles, each tile's test-time views averaged), then the winning classes as a mask.

:func:`predict_probs` is the PyTorch step that ``predict`` (:meth:`SegmentationKind._segment`), the
runner's ``evaluate`` and ``serve`` share; it takes a :class:`TileStep`, not the predictor or the
runner. :func:`runtime_probs` is its numpy twin for the torch-free runtime
(:meth:`SegmentationKind.runtime_rows`), cut by the same tile plan
(:func:`visionlab.data.geometry.tile_plan`).
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

if TYPE_CHECKING:
    from visionlab.data.preprocessing import Preprocessing

__all__ = ["TileStep", "predict_probs", "runtime_probs", "original_size", "mask_fields"]


@dataclass(frozen=True)
class TileStep:
    """What one image's step needs: the model and its input (normalisation, device, memory format),
    the precision (``autocast``), the test-time augmentation, the tiles (size, overlap, batch) and
    the temperature each tile's logits are divided by before softmax (a fitted calibration; 1: none)."""

    model: Callable[[Any], Any]
    normalize: Callable[[Any], Any]
    device: Any
    num_classes: int
    tile_size: int
    tile_overlap: float
    tta: str = "none"
    autocast: Callable[[], Any] = nullcontext
    batch_size: int = 8
    channels_last: bool = False
    temperature: float = 1.0

    @classmethod
    def of(cls, model: Callable[[Any], Any], pre: "Preprocessing", normalize: Callable[[Any], Any], device: Any,
           tta: str | None = None, **options: Any) -> "TileStep":
        """The step of a model trained with preprocessing ``pre`` (its classes, tiles and saved
        test-time augmentation, unless ``tta`` says otherwise); ``options`` are the other fields."""
        return cls(model, normalize, device, len(pre.values), int(pre.tile_size), float(pre.tile_overlap),
                   pre.tta_mode if tta is None else tta, **options)


def predict_probs(step: TileStep, img: np.ndarray, out_size: tuple[int, int] | None = None) -> Any:
    """(C, H, W) class probabilities (a tensor on the step's device) of one preprocessed HxWx3 uint8
    image by blended tiles, resized (bilinear, on probabilities) to ``out_size`` = (H, W) when given."""
    import torch
    import torch.nn.functional as F

    from visionlab.engine.tiling import predict_tiled
    from visionlab.engine.tta import tta_logits

    x = step.normalize(torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None].to(step.device))[0]

    def forward(b: torch.Tensor) -> torch.Tensor:
        if step.channels_last:
            b = b.contiguous(memory_format=torch.channels_last)
        return tta_logits(_scaled(step), b, step.tta, step.autocast, dense=True)

    probs = predict_tiled(forward, x, step.num_classes, step.tile_size, step.tile_overlap, step.batch_size)
    if out_size is not None and tuple(probs.shape[1:]) != tuple(out_size):
        probs = F.interpolate(probs[None], size=tuple(out_size), mode="bilinear", align_corners=False)[0]
    return probs


def _scaled(step: TileStep) -> Callable[[Any], Any]:
    """The step's model with its logits divided by the step's temperature (each test-time view's,
    before its softmax: as the torch-free runtime divides the .onnx logits)."""
    if step.temperature == 1.0:
        return step.model
    return lambda b: step.model(b).float() / step.temperature


def runtime_probs(runtime: Any, img: np.ndarray, out_size: tuple[int, int] | None = None) -> np.ndarray:
    """:func:`predict_probs` in numpy, through an exported model (a :class:`visionlab.runtime.Runtime`:
    its ``normalize``, its ``probs`` with the test-time views, its preprocessing's tiles)."""
    from visionlab.data.arrays import predict_tiled, resize_bilinear

    pre = runtime.preprocessing
    x = runtime.normalize(img.transpose(2, 0, 1)[None])[0]
    probs = predict_tiled(runtime.probs, x, len(runtime.classes), int(pre.tile_size), float(pre.tile_overlap))
    if out_size is not None:
        probs = resize_bilinear(probs, out_size)
    return probs


def original_size(pre: "Preprocessing", original: Any) -> tuple[int, int] | None:
    """(H, W) of the image before preprocessing when the preprocessing scaled it (``seg_scale``),
    else None: the size a prediction is brought back to."""
    if pre.scale == 1.0:
        return None
    from visionlab.data.io import load_image

    w, h = load_image(original).size
    return h, w


def mask_fields(channel: np.ndarray, values: Sequence[int], classes: Sequence[str]) -> dict[str, Any]:
    """A result's fields from the HxW map of winning class indices: the mask in the dataset's pixel
    ``values``, each class's share of the pixels, and the largest share as label and confidence."""
    shares = np.bincount(channel.ravel(), minlength=len(classes)) / channel.size
    return {"label": classes[int(shares.argmax())], "confidence": float(shares.max()),
            "class_shares": {c: round(float(s), 4) for c, s in zip(classes, shares)},
            "mask": np.asarray(values, dtype=np.uint8)[channel]}
