"""What an image goes through before the network sees it, as one typed record that travels with the weights.

:class:`Preprocessing` is built by a kind's runner from the config and the model's weights
(:func:`visionlab.models.model_weights`), saved in every checkpoint and every ``.onnx`` file's
metadata as a plain dict (:meth:`Preprocessing.to_dict`, which ``torch.load(weights_only=True)``
reads) and rebuilt from one (:meth:`Preprocessing.from_dict`, older checkpoints' dicts too; every field checked, so a
damaged record is a ValueError naming the field, never a wrong answer later). It is
also a read-only mapping of that dict, so code that reads ``pre["image_size"]`` (the decoder, the
decode cache's key) reads the same values. Torch-free.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from numbers import Real
from typing import Any, Iterator, Mapping

from visionlab.data.geometry import TTA_MODES
from visionlab.errors import VisionlabError

__all__ = ["Preprocessing", "MissingKey", "RESIZE_MODES", "SIZE_RANGE"]

#: ``squash``: decoded and resized to image_size x image_size (whole-image models); ``scale``: decoded
#: and scaled by seg_scale, whole images tiled later (dense models).
RESIZE_MODES = ("squash", "scale")
#: The sides (image_size, tile_size) a saved record may hold, px: the recipes use 64-384 and the config
#: takes image_size >= 16, tile_size >= 32; outside this a record is damaged (0 fails in Pillow, 100000
#: decodes for minutes).
SIZE_RANGE = (8, 4096)


class MissingKey(VisionlabError, KeyError):
    """A key the reader needs is not in the record (a kind's own key, e.g. a threshold): one line, and
    still a KeyError, so ``get`` and ``in`` work as on any mapping."""

    def __str__(self) -> str:
        return str(self.args[0])


def _floats(values: Any) -> tuple[float, ...]:
    return tuple(float(v) for v in values)


def _is_number(v: Any) -> bool:
    return isinstance(v, Real) and not isinstance(v, bool) and math.isfinite(v)


def _whole(key: str, v: Any, low: int, high: int) -> int:
    if not (_is_number(v) and float(v).is_integer() and low <= v <= high):
        raise ValueError(f"{key} is {v!r}, not a whole number in {low}..{high}")
    return int(v)


def _fraction(key: str, v: Any, low: float, high: float) -> float:
    if not (_is_number(v) and low <= v <= high):
        raise ValueError(f"{key} is {v!r}, not a number in [{low}, {high}]")
    return float(v)


def _three(key: str, v: Any) -> tuple[float, ...]:
    if not (isinstance(v, (list, tuple)) and len(v) == 3 and all(_is_number(x) for x in v)):
        raise ValueError(f"{key} is {v!r}, not three numbers")
    return _floats(v)


def _choice(key: str, v: Any, choices: tuple[str, ...]) -> str:
    if v not in choices:
        raise ValueError(f"{key} is {v!r}, not one of {', '.join(choices)}")
    return str(v)


def _pixel_values(key: str, v: Any) -> tuple[int, ...]:
    if not isinstance(v, (list, tuple)):
        raise ValueError(f"{key} is {v!r}, not a list of pixel values")
    return tuple(_whole(key, x, 0, 255) for x in v)


def _checked(values: dict[str, Any]) -> dict[str, Any]:
    """``values`` (a saved record's named fields) with each checked and typed; ValueError naming the
    first field that is missing or wrong (a damaged checkpoint or .onnx file)."""
    missing = [k for k in ("kind", "image_size", "mean", "std") if values.get(k) is None]
    if missing:
        raise ValueError(f"{missing[0]} is missing")
    if not isinstance(values["kind"], str) or not values["kind"]:
        raise ValueError(f"kind is {values['kind']!r}, not a kind's name")
    low, high = SIZE_RANGE
    checks = {"image_size": lambda k, v: _whole(k, v, low, high), "tile_size": lambda k, v: _whole(k, v, low, high),
              "mean": _three, "std": _three, "resize": lambda k, v: _choice(k, v, RESIZE_MODES),
              "tta": lambda k, v: _choice(k, v, TTA_MODES), "tile_overlap": lambda k, v: _fraction(k, v, 0.0, 0.9),
              "seg_scale": lambda k, v: _fraction(k, v, 0.05, 4.0), "ignore_index": lambda k, v: _whole(k, v, 0, 255),
              "values": _pixel_values, "ignored_values": _pixel_values}
    out = {k: checks[k](k, v) if k in checks and v is not None else v for k, v in values.items()}
    if min(out["std"]) <= 0:
        raise ValueError(f"std is {values['std']!r}, not three numbers > 0")
    if out.get("background_removal") is not None and not isinstance(out["background_removal"], bool):
        raise ValueError(f"background_removal is {out['background_removal']!r}, not true or false")
    if out.get("colors") is not None and not isinstance(out["colors"], (list, tuple)):
        raise ValueError(f"colors is {out['colors']!r}, not a list")
    return out


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
        """The record of a saved dict (a checkpoint's, an .onnx file's, one of an older version), its
        fields checked: ValueError names the first one missing or wrong (the record is damaged)."""
        if isinstance(data, Preprocessing):
            return data
        if not isinstance(data, Mapping):
            raise ValueError(f"the record is {type(data).__name__}, not a mapping of its fields")
        named = {f.name for f in fields(cls)} - {"extra"}
        values = _checked({k: v for k, v in data.items() if k in named})
        return cls(**values, extra={k: v for k, v in data.items() if k not in named})

    # ------------------------------------------------------------ read-only mapping of to_dict()
    def __getitem__(self, key: str) -> Any:
        saved = self.to_dict()
        if key not in saved:  # a kind reads a key its record lacks: the file is damaged or of another version
            raise MissingKey(f"the preprocessing record of this {self.kind} model has no {key!r}, which its kind reads: "
                             "the checkpoint or .onnx file is damaged or was written by another version of the kind.",
                             "Train (or export) it again, or pass the run's other checkpoint.")
        return saved[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.to_dict())

    def __len__(self) -> int:
        return len(self.to_dict())
