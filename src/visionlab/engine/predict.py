"""Inference from a checkpoint alone: :func:`load` returns a :class:`Predictor`.

Images are decoded by a DataLoader with the exact preprocessing saved in the checkpoint and run
in batches under ``inference_mode``; segmentation runs blended tiles per image, batched. An
unreadable file becomes a result with an ``error`` and does not stop the batch.
"""

from __future__ import annotations

import base64
import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from visionlab.data.io import InputEntry, UnreadableImage, expand_inputs, load_for_model, scan_inputs
from visionlab.data.transforms import Normalize
from visionlab.engine.checkpoint import load_checkpoint, model_from_state
from visionlab.engine.device import resolve_device, resolve_precision
from visionlab.engine.tta import tta_logits
from visionlab.errors import VisionlabError

__all__ = ["Predictor", "Prediction", "InputEntry", "load", "scan_inputs", "expand_inputs"]  # the input scan lives in data.io (torch-free)


@dataclass
class Prediction:
    """One image's result. Classification: label, confidence, top_k. Segmentation: mask
    (H x W array of the dataset's pixel values), class_shares and the legend that colours it
    (one ``{"name", "value", "color"}`` per class)."""

    source: str
    label: str | None = None
    confidence: float | None = None
    top_k: list[tuple[str, float]] = field(default_factory=list)
    mask: np.ndarray | None = None
    class_shares: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    skipped: str | None = None  # why an entry was not predicted (not an image, a broken link, ...)
    legend: list[dict[str, Any]] = field(default_factory=list)
    ignore_index: int = 255

    def to_dict(self) -> dict[str, Any]:
        d = {"path": self.source, "label": self.label, "confidence": self.confidence, "error": self.error, "skipped": self.skipped}
        if self.top_k:
            d["top_k"] = [{"label": lab, "probability": p} for lab, p in self.top_k]
        if self.class_shares:
            d["class_shares"] = self.class_shares
        return d

    def overlay(self, image: Any = None) -> Any:
        """The mask in its legend's colours, blended over ``image`` when given (anything
        :func:`~visionlab.data.io.load_image` reads: a path, a file object, a PIL image)."""
        from visionlab.data.io import load_image
        from visionlab.engine.plots import colorize_mask, overlay_mask

        if self.mask is None:
            raise ValueError(f"{self.source}: this prediction has no mask")
        colors = {int(c["value"]): c["color"] for c in self.legend}
        if image is None:
            return colorize_mask(self.mask, colors, ignore_index=self.ignore_index)
        image = load_image(image)
        if image.size != (self.mask.shape[1], self.mask.shape[0]):
            image = image.resize((self.mask.shape[1], self.mask.shape[0]))
        return overlay_mask(image, self.mask, colors, ignore_index=self.ignore_index)

    def to_json(self, image: Any = None) -> dict[str, Any]:
        """JSON-ready result for an HTTP answer: whatever fields this result has, images as base64
        (``mask_png``: pixel value = class value; ``overlay_jpeg``: the mask blended over ``image``,
        which is only read when the result has a mask)."""
        d = {k: v for k, v in self.to_dict().items() if k != "path" and v is not None}
        if self.mask is not None:
            from PIL import Image

            d["mask_png"] = _base64(Image.fromarray(self.mask), "PNG")
            d["overlay_jpeg"] = _base64(self.overlay(image).convert("RGB"), "JPEG", quality=88)
            d["legend"] = self.legend
        return d


def _base64(image: Any, fmt: str, **options: Any) -> str:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **options)
    return base64.b64encode(buf.getvalue()).decode("ascii")


class _Images(torch.utils.data.Dataset):
    def __init__(self, items: Sequence[Any], pre: dict[str, Any]) -> None:
        self.items, self.pre = items, pre

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        try:
            return i, torch.from_numpy(np.ascontiguousarray(load_for_model(self.items[i], self.pre))), None
        except UnreadableImage as exc:  # reported per image, never fatal
            return i, None, str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def _collate(batch: list) -> list:
    return batch


class Predictor:
    """A trained model with its classes and preprocessing, ready to predict."""

    def __init__(self, state: dict[str, Any], device: str = "auto", source: str | None = None) -> None:
        self.state = state
        self.source = source
        self.task: str = state["task"]
        self.kind: str = state["kind"]
        self.classes: list[str] = list(state["classes"])
        self.preprocessing: dict[str, Any] = dict(state["preprocessing"])
        self.synthetic: bool = bool(state.get("data", {}).get("synthetic", False))
        self.device = resolve_device(device)
        self.precision = resolve_precision(state["config"].get("precision", "auto"), self.device)
        self.model = model_from_state(state).to(self.device).eval()
        self.channels_last = bool(state["config"].get("channels_last", False))
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.normalize = Normalize(self.preprocessing["mean"], self.preprocessing["std"]).to(self.device)
        self.tta: str = str(self.preprocessing.get("tta", "none"))  # as validated; set another mode to change it
        self.input_size = int(self.preprocessing["image_size"])  # classifier input, or segmentation tile

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, device: str = "auto", task: str | None = None) -> "Predictor":
        return cls(load_checkpoint(path, expect_task=task), device=device, source=str(path))

    def __repr__(self) -> str:
        return f"Predictor(task={self.task!r}, classes={self.classes}, device={self.device})"

    @torch.inference_mode()
    def predict(self, images: Any, top_k: int = 3, batch_size: int = 32, num_workers: int | None = None) -> list[Prediction]:
        """Predict one image or a list of them (paths, PIL images or HxWx3 uint8 arrays).

        ``top_k`` (>= 1) is clipped to the number of classes."""
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
            raise VisionlabError(f"top_k must be an integer >= 1, got {top_k!r}.", "Pass e.g. top_k=3.")
        if isinstance(images, (str, os.PathLike, np.ndarray)) or hasattr(images, "getpixel"):
            images = [images]
        images = list(images)
        names = [os.fspath(x) if isinstance(x, (str, os.PathLike)) else f"<image {i}>" for i, x in enumerate(images)]
        if num_workers is None:
            num_workers = 0 if len(images) < 64 or (os.cpu_count() or 1) <= 2 else 2
        loader = torch.utils.data.DataLoader(
            _Images(images, self.preprocessing), batch_size=batch_size if self.kind == "classification" else 1,
            collate_fn=_collate, num_workers=num_workers)
        results: list[Prediction | None] = [None] * len(images)
        for batch in loader:
            ok = [(i, x) for i, x, err in batch if err is None]
            for i, _, err in batch:
                if err is not None:
                    results[i] = Prediction(names[i], error=err)
            if not ok:
                continue
            idx = [i for i, _ in ok]
            preds = self.predict_arrays([x.numpy() for _, x in ok], top_k, [names[i] for i in idx], [images[i] for i in idx])
            for i, pred in zip(idx, preds):
                results[i] = pred
        return [r for r in results if r is not None]

    def preprocess(self, image: Any) -> np.ndarray:
        """One image (path, file object, PIL image or array) -> the HxWx3 uint8 array
        :meth:`predict_arrays` takes; decoded exactly as :meth:`predict` decodes a file."""
        return np.ascontiguousarray(load_for_model(image, self.preprocessing))

    @torch.inference_mode()
    def predict_arrays(self, arrays: Sequence[np.ndarray], top_k: int = 3, sources: Sequence[str] | None = None,
                       originals: Sequence[Any] | None = None) -> list[Prediction]:
        """The model step on images already :meth:`preprocess`-ed, one result per image, in order.

        ``originals`` are the images before preprocessing (needed to map a scaled segmentation
        back to the original resolution); ``sources`` name the results."""
        if not len(arrays):
            return []
        sources = list(sources) if sources is not None else [f"<image {i}>" for i in range(len(arrays))]
        originals = list(originals) if originals is not None else list(arrays)
        if self.kind == "segmentation":
            return [self._segment(s, o, a) for s, o, a in zip(sources, originals, arrays)]
        preds = self._classify(torch.stack([torch.from_numpy(np.ascontiguousarray(a)) for a in arrays]), top_k)
        for pred, s in zip(preds, sources):
            pred.source = s
        return preds

    def warmup(self) -> None:
        """One forward pass on a blank image of the input size (first-call allocations, lazy inits)."""
        from PIL import Image

        self.predict(Image.new("RGB", (self.input_size, self.input_size), (128, 128, 128)), top_k=1)

    def _classify(self, x: torch.Tensor, top_k: int) -> list[Prediction]:
        x = self.normalize(x.permute(0, 3, 1, 2).to(self.device))
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        probs = tta_logits(self.model, x, self.tta, self.precision.autocast).softmax(1).cpu()
        k = min(top_k, len(self.classes))
        conf, idx = probs.topk(k, dim=1)
        out = []
        for c_row, i_row in zip(conf.tolist(), idx.tolist()):
            top = [(self.classes[j], float(c)) for c, j in zip(c_row, i_row)]
            out.append(Prediction("", label=top[0][0], confidence=top[0][1], top_k=top))
        return out

    def _segment(self, name: str, original: Any, img: np.ndarray) -> Prediction:
        from visionlab.tasks.segmentation import predict_probs

        out_size = None
        if float(self.preprocessing.get("seg_scale", 1.0)) != 1.0:  # back to the original resolution
            from visionlab.data.io import load_image

            w, h = load_image(original).size
            out_size = (h, w)
        probs = predict_probs(self.model, img, self.preprocessing, self.normalize, self.precision.autocast,
                              channels_last=self.channels_last, out_size=out_size, tta=self.tta)
        channel = probs.argmax(0).cpu().numpy().astype(np.uint8)
        values = np.asarray(self.preprocessing["values"], dtype=np.uint8)
        mask = values[channel]
        shares = np.bincount(channel.ravel(), minlength=len(self.classes)) / channel.size
        return Prediction(name, mask=mask, class_shares={c: round(float(s), 4) for c, s in zip(self.classes, shares)},
                          label=self.classes[int(shares.argmax())], confidence=float(shares.max()),
                          legend=self.legend(), ignore_index=int(self.preprocessing["ignore_index"]))

    def legend(self) -> list[dict[str, Any]]:
        """Segmentation: each class's name, pixel value and the colour its masks are drawn in."""
        from visionlab.engine.plots import default_color

        pre = self.preprocessing
        return [{"name": c, "value": int(v), "color": col or default_color(int(v))}
                for c, v, col in zip(self.classes, pre["values"], pre["colors"])]


def load(checkpoint: str | os.PathLike | None = None, device: str = "auto", task: str | None = None) -> Predictor:
    """Load a trained model for prediction: a checkpoint path, or the latest run of ``task``."""
    from visionlab.engine.runs import latest_checkpoint

    path = Path(checkpoint) if checkpoint else latest_checkpoint(task)
    return Predictor.from_checkpoint(path, device=device, task=task)
