"""The runner of the ``regression`` example kind (:mod:`regression_kind`), built on visionlab's
TaskRunner. It imports torch, so it is its own module, imported by ``RegressionKind.runner()`` when a
run starts: the kind's module stays torch-free, as the built-in kinds' packages are.
"""

from __future__ import annotations

from typing import Any, Iterable

import numpy as np
import torch
import torch.nn.functional as F

from visionlab.data.io import load_for_model
from visionlab.data.preprocessing import Preprocessing
from visionlab.data.transforms import Normalize
from visionlab.data.splits import split_indices, split_keys
from visionlab.engine.runner import EvalResult, TaskRunner, resolve_data_path
from visionlab.models import model_weights

from regression_kind import read_targets


class RegressionRunner(TaskRunner):
    """Every image decoded once into memory; batches in a seeded random order; MSE loss."""

    def prepare(self, console: Any = None) -> None:
        cfg = self.cfg
        root = resolve_data_path(cfg, self.spec, self.task_kind)
        self.paths, targets = read_targets(root)
        self.targets = np.asarray(targets, dtype=np.float32)
        self.classes = list(self.spec.default_classes)  # one output: the quantity's name
        w = model_weights(cfg.model, **cfg.model_args)
        self.preprocessing = self.fixed_preprocessing or Preprocessing(
            kind=self.spec.kind, resize="squash", image_size=int(cfg.image_size), mean=w.mean, std=w.std, tta="none")
        self.normalize = Normalize(self.preprocessing.mean, self.preprocessing.std).to(self.device)
        self.images = torch.from_numpy(np.stack([load_for_model(p, self.preprocessing) for p in self.paths])).permute(0, 3, 1, 2)
        self.splits = split_indices(split_keys(self.paths, root), None, [], cfg.val_fraction, cfg.test_fraction, cfg.seed)
        self.data_info = {"root": str(root), "synthetic": cfg.is_synthetic, "images": len(self.paths), "unreadable": [],
                          "split_sizes": {k: int(len(v)) for k, v in self.splits.items()}, "cache": "memory"}

    def has_split_folders(self) -> bool:
        return False

    def num_train_batches(self) -> int:
        return self.global_batches(len(self.splits["train"]))

    def train_batches(self, epoch: int, start_step: int = 0) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
        order = np.random.default_rng(self.cfg.seed * 1000 + epoch).permutation(self.splits["train"])
        bs = self.cfg.batch_size
        for step in range(start_step, self.num_train_batches()):
            idx = torch.from_numpy(order[step * bs : (step + 1) * bs])
            yield self.images[idx], torch.from_numpy(self.targets)[idx]

    def on_device(self, x: torch.Tensor, train: bool) -> torch.Tensor:
        return self.normalize(x.float().div_(255.0))

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        delta = self.cfg.options.huber_delta
        if delta > 0:
            return F.huber_loss(output.float()[:, 0], target.float(), delta=delta)
        return F.mse_loss(output.float()[:, 0], target.float())

    @torch.inference_mode()
    def evaluate(self, model: torch.nn.Module, split: str, autocast: Any, batch_size: int | None = None) -> EvalResult:
        model.eval()
        idx = self.splits[split]
        preds = []
        for chunk in self.iter_chunks(idx, batch_size or 64):
            x = self.on_device(self.images[torch.from_numpy(chunk)].to(self.device), train=False)
            with autocast():
                preds.append(model(x).float()[:, 0].cpu())
        if not len(idx):
            return EvalResult({}, {}, self.primary)
        pred, true = torch.cat(preds).numpy(), self.targets[idx]
        err = pred - true
        metrics = {"mae": float(np.abs(err).mean()), "rmse": float(np.sqrt((err**2).mean())), "loss": float((err**2).mean())}
        rows = sorted(({"path": str(self.paths[i]), "target": float(t), "predicted": round(float(p), 5),
                        "abs_error": round(abs(float(p - t)), 5)} for i, t, p in zip(idx, true, pred)),
                      key=lambda r: -r["abs_error"])
        report = {"kind": self.spec.kind, "primary": self.primary, "class_names": self.classes, "num_samples": int(len(idx)),
                  "metrics": metrics}
        return EvalResult(metrics, report, self.primary, rows, "largest error first")
