"""What an image goes through before the network sees it, as one typed record that travels with the weights.

:class:`Preprocessing` is built by a kind's runner from the config and the model's weights
(:func:`visionlab.models.model_weights`), saved in every checkpoint and every ``.onnx`` file's
metadata as a plain dict (:meth:`Preprocessing.to_dict`, which ``torch.load(weights_only=True)``
reads) and rebuilt from one (:meth:`Preprocessing.from_dict`, older checkpoints' dicts too). It is
also a read-only mapping of that dict, so code that reads ``pre["image_size"]`` (the decoder, the
decode cache's key) reads the same values. Torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Iterator, Mapping

__all__ = ["Preprocessing", "RESIZE_MODES"]

#: ``squash``: decoded and resized to image_size x image_size (whole-image models); ``scale``: decoded
#: and scaled by seg_scale, whole images tiled later (dense models).
RESIZE_MODES = ("squash", "scale")


def _floats(values: Any) -> tuple[float, ...]:
    return tuple(float(v) for v in values)


@dataclass(frozen=True)
class Preprocessing(Mapping[str, Any]):
    """The decoding, resizing, normalisation and test-time augmentation of one model's inputs.

    The fields after ``tta`` belong to some kinds only and are ``None`` where a kind has no use for
    them (left out of :meth:`to_dict`): background removal for classifiers; the tiles, scale and
    the masks' pixel values, colours and ignored values for segmentation. ``extra`` keeps keys a
    plugin kind saves that this record does not name, so its dicts round-trip unchanged."""

    kind: str
    image_size: int  # the classifier's input side, or the segmentation tile
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resize: str | None = None  # RESIZE_MODES; records written before the key have none (scaled)
    tta: str | None = None  # test-time augmentation (visionlab.engine.tta.TTA_MODES); None in old records = 'none'
    background_removal: bool | None = None
    tile_size: int | None = None
    tile_overlap: float | None = None
    seg_scale: float | None = None
    values: tuple[int, ...] | None = None  # mask pixel value of each class, in class order
    colors: tuple[Any, ...] | None = None  # each class's colour in the dataset (None where it names none)
    ignore_index: int | None = None
    ignored_values: tuple[int, ...] | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "mean", _floats(self.mean))
        object.__setattr__(self, "std", _floats(self.std))
        for name in ("values", "ignored_values"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, tuple(int(v) for v in getattr(self, name)))
        if self.colors is not None:
            object.__setattr__(self, "colors", tuple(self.colors))

    @property
    def tta_mode(self) -> str:
        """The test-time augmentation ('none' when the record says none)."""
        return self.tta or "none"

    @property
    def scale(self) -> float:
        """The factor images are scaled by before tiling (1 where the record says none)."""
        return 1.0 if self.seg_scale is None else float(self.seg_scale)

    def replace(self, **changes: Any) -> "Preprocessing":
        """This record with ``changes`` (e.g. another ``tta``)."""
        return Preprocessing.from_dict({**self.to_dict(), **changes})

    def to_dict(self) -> dict[str, Any]:
        """The plain dict saved in checkpoints and .onnx metadata: lists, numbers, strings; no ``None`` fields."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "extra" or value is None:
                continue
            out[f.name] = [list(c) if isinstance(c, (list, tuple)) else c for c in value] if isinstance(value, tuple) else value
        return {**out, **{k: v for k, v in self.extra.items() if k not in out}}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Preprocessing":
        """The record of a saved dict (a checkpoint's, an .onnx file's, one of an older version)."""
        if isinstance(data, Preprocessing):
            return data
        named = {f.name for f in fields(cls)} - {"extra"}
        values = {k: v for k, v in data.items() if k in named}
        for key, typ in (("image_size", int), ("tile_size", int), ("ignore_index", int), ("tile_overlap", float),
                         ("seg_scale", float), ("background_removal", bool), ("tta", str), ("resize", str)):
            if values.get(key) is not None:
                values[key] = typ(values[key])
        return cls(**values, extra={k: v for k, v in data.items() if k not in named})

    # ------------------------------------------------------------ read-only mapping of to_dict()
    def __getitem__(self, key: str) -> Any:
        return self.to_dict()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.to_dict())

    def __len__(self) -> int:
        return len(self.to_dict())
