"""Inference from a checkpoint alone: :func:`load` returns a :class:`Predictor`.

Images are decoded by a DataLoader with the exact preprocessing saved in the checkpoint and run
in batches under ``inference_mode``; segmentation runs blended tiles per image, batched. An
unreadable file becomes a result with an ``error`` and does not stop the batch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from visionlab.data.io import expand_inputs, load_for_model
from visionlab.data.transforms import Normalize
from visionlab.engine.checkpoint import load_checkpoint, model_from_state
from visionlab.engine.device import resolve_device, resolve_precision, tune_cpu_allocator
from visionlab.engine.tta import tta_logits
from visionlab.errors import VisionlabError

__all__ = ["Predictor", "Prediction", "load", "expand_inputs"]  # expand_inputs lives in data.io (torch-free)


@dataclass
class Prediction:
    """One image's result. Classification: label, confidence, top_k. Segmentation: mask
    (H x W array of the dataset's pixel values) and class_shares."""

    source: str
    label: str | None = None
    confidence: float | None = None
    top_k: list[tuple[str, float]] = field(default_factory=list)
    mask: np.ndarray | None = None
    class_shares: dict[str, float] = field(default_factory=dict)
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d = {"path": self.source, "label": self.label, "confidence": self.confidence, "error": self.error}
        if self.top_k:
            d["top_k"] = [{"label": lab, "probability": p} for lab, p in self.top_k]
        if self.class_shares:
            d["class_shares"] = self.class_shares
        return d


class _Images(torch.utils.data.Dataset):
    def __init__(self, items: Sequence[Any], pre: dict[str, Any]) -> None:
        self.items, self.pre = items, pre

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        try:
            return i, torch.from_numpy(np.ascontiguousarray(load_for_model(self.items[i], self.pre))), None
        except Exception as exc:  # reported per image, never fatal
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
        if self.device.type == "cpu":
            tune_cpu_allocator()  # batches of activations reuse heap memory instead of fresh pages
        self.precision = resolve_precision(state["config"].get("precision", "auto"), self.device)
        self.model = model_from_state(state).to(self.device).eval()
        self.channels_last = bool(state["config"].get("channels_last", False))
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.normalize = Normalize(self.preprocessing["mean"], self.preprocessing["std"]).to(self.device)
        self.tta: str = str(self.preprocessing.get("tta", "none"))  # as validated; set another mode to change it

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, device: str = "auto", task: str | None = None) -> "Predictor":
        return cls(load_checkpoint(path, expect_task=task), device=device, source=str(path))

    def __repr__(self) -> str:
        return f"Predictor(task={self.task!r}, classes={self.classes}, device={self.device})"

    @torch.inference_mode()
    def predict(self, images: Any, top_k: int = 3, batch_size: int = 32, num_workers: int | None = None) -> list[Prediction]:
        """Predict one image or a list of them (paths, PIL images or HxWx3 uint8 arrays)."""
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
            if self.kind == "segmentation":
                for i, x in ok:
                    results[i] = self._segment(names[i], images[i], x.numpy())
            else:
                for i, pred in zip([i for i, _ in ok], self._classify(torch.stack([x for _, x in ok]), top_k)):
                    pred.source = names[i]
                    results[i] = pred
        return [r for r in results if r is not None]

    def _classify(self, x: torch.Tensor, top_k: int) -> list[Prediction]:
        x = self.normalize(x.permute(0, 3, 1, 2).to(self.device))
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        probs = tta_logits(self.model, x, self.tta, self.precision.autocast).softmax(1).cpu()
        k = max(1, min(top_k, len(self.classes)))
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
                          label=self.classes[int(shares.argmax())], confidence=float(shares.max()))


def load(checkpoint: str | os.PathLike | None = None, device: str = "auto", task: str | None = None) -> Predictor:
    """Load a trained model for prediction: a checkpoint path, or the latest run of ``task``."""
    from visionlab.engine.runs import latest_checkpoint

    path = Path(checkpoint) if checkpoint else latest_checkpoint(task)
    return Predictor.from_checkpoint(path, device=device, task=task)
