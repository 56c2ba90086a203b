"""Exported ``.onnx`` files inside visionlab's own torch code paths: :func:`onnx_state` reads a
file's metadata into a checkpoint-like dict, :class:`OnnxModule` runs it like the PyTorch model
(:func:`visionlab.engine.checkpoint.load_model` returns one for such a state)."""

from __future__ import annotations

import os
from typing import Any

import torch

from visionlab.onnx_file import open_session, read_metadata

__all__ = ["OnnxModule", "onnx_state"]


class OnnxModule(torch.nn.Module):
    """An exported file behaving like the PyTorch model inside visionlab's own code paths:
    a float NCHW tensor in (any device; run on the CPU by onnxruntime), float32 logits out on
    the input's device. Test-time augmentation, tiling and metrics are reused unchanged."""

    def __init__(self, path: str | os.PathLike, threads: int | None = None) -> None:
        super().__init__()
        self.path = str(path)
        # as many threads as torch would use here (OMP_NUM_THREADS / torch.set_num_threads), one inter-op
        self.session = open_session(path, threads or torch.get_num_threads())
        self._input = self.session.get_inputs()[0].name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_all(x)[0]

    def forward_all(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Every output of the graph (a classifier's logits and its unknown detector's score, when exported with one)."""
        arr = x.detach().to("cpu", torch.float32).contiguous().numpy()
        return tuple(torch.from_numpy(out).to(x.device) for out in self.session.run(None, {self._input: arr}))

    def extra_repr(self) -> str:
        return f"path={self.path!r}"


def onnx_state(path: str | os.PathLike) -> dict[str, Any]:
    """A checkpoint-like dict (no weights) rebuilt from an exported file's metadata.

    ``state["onnx"]`` holds the path; :func:`visionlab.engine.checkpoint.load_model` turns it
    into an :class:`OnnxModule`. The config is the training run's, with fp32 and the default
    memory format, as the file runs in onnxruntime's fp32."""
    meta = read_metadata(open_session(path, threads=1, optimize=False), path)
    config = dict(meta["config"], precision="fp32", channels_last=False)
    return {"task": meta["task"], "kind": meta["kind"], "classes": list(meta["classes"]),
            "preprocessing": dict(meta["preprocessing"]), "config": config, "model_name": meta.get("model_name", ""),
            "model_args": dict(meta["model_args"]), "data": dict(meta["data"]),
            "visionlab_version": meta.get("visionlab_version", ""), "checkpoint_sha256": meta.get("checkpoint_sha256", ""),
            "onnx": str(path), **({"calibration": dict(meta["calibration"])} if meta.get("calibration") else {}),
            **({"unknown": dict(meta["unknown"])} if meta.get("unknown") else {})}
