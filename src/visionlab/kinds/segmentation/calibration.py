"""How well a segmentation's per-pixel probabilities are calibrated, and its temperature.

Evaluation (:class:`PixelCalibration`): expected calibration error (torchmetrics, 15 bins), NLL
and Brier score over the labelled pixels (255 and the ``ignore_classes`` left out), and the
reliability diagram's bins: the classifiers' :func:`~visionlab.kinds.classification.meter.calibration_metrics`
and :func:`~visionlab.kinds.classification.meter.reliability_bins`, on the per-pixel probabilities of
the blended tiles at the masks' resolution. A split holds millions of pixels, so each image gives
a seeded random sample of its labelled pixels (all of them when there are few; about
:data:`PIXEL_BUDGET` over the split), the same pixels every run.

The temperature (:func:`fit_pixel_temperature`, Guo et al. 2017 as for classifiers: one scalar by
NLL, :func:`~visionlab.kinds.classification.calibration.fit_temperature`) is fitted on labelled
pixels of the validation images' tiles, each view of the test-time augmentation kept apart, at the
scale the model sees, and kept only when it lowers the ECE of those pixels too (else 1, saying
why). Stored in a checkpoint as ``calibration`` (as a classifier's), it divides every tile's logits
before softmax on every surface (the blended tiles, the .onnx runtime). Training does not fit it:
on landcover it lowered the validation pixels' ECE and raised the test split's
(``benchmarks/README.md``, ``seg_calibration.py``), so the segmentation kind does not calibrate, and
``benchmarks/seg_calibration.py --refit`` fits it into a copy of a checkpoint to measure it again.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from visionlab.kinds.segmentation.step import TileStep

__all__ = ["PIXEL_BUDGET", "PixelCalibration", "pixel_views", "fit_pixel_temperature"]

#: About how many labelled pixels of a split the calibration metrics sample (spread over its images).
PIXEL_BUDGET = 2_000_000
#: The fewest pixels an image gives (all of them when it has fewer).
MIN_PIXELS_PER_IMAGE = 50_000
#: Labelled pixels sampled per tile to fit the temperature on.
FIT_PIXELS_PER_TILE = 1024


class PixelCalibration:
    """A seeded sample of each evaluated image's labelled pixels: their probabilities as scored
    (``update``'s ``probs``) and, when a temperature was applied, of the raw softmax (``raw``)."""

    def __init__(self, images: int, ignore_index: int = 255) -> None:
        self.per_image = max(MIN_PIXELS_PER_IMAGE, PIXEL_BUDGET // max(1, images))
        self.ignore_index = int(ignore_index)
        self.labelled = 0
        self.parts: dict[str, list[torch.Tensor]] = {"after": [], "before": [], "target": []}

    @torch.inference_mode()
    def update(self, key: int, probs: torch.Tensor, mask: np.ndarray, raw: torch.Tensor | None = None) -> None:
        """Add image ``key`` (its sample's seed): (C, H, W) probabilities and its H x W mask of class indices."""
        target = torch.from_numpy(np.ascontiguousarray(mask).astype(np.int64)).reshape(-1)
        keep = torch.nonzero(target != self.ignore_index)[:, 0]
        self.labelled += int(len(keep))
        pick = keep[torch.randperm(len(keep), generator=torch.Generator().manual_seed(int(key)))[: self.per_image]]
        self.parts["target"].append(target[pick])
        for name, p in (("after", probs), ("before", raw if raw is not None else probs)):
            self.parts[name].append(p.reshape(p.shape[0], -1)[:, pick.to(p.device)].T.float().cpu())

    def merge(self, *others: "PixelCalibration") -> "PixelCalibration":
        """This sample with those of ``others`` added (the parts of a sharded evaluation)."""
        for o in others:
            self.labelled += o.labelled
            for name in self.parts:
                self.parts[name] += o.parts[name]
        return self

    def report(self) -> dict[str, Any]:
        """``metrics`` (``ece``, ``nll``, ``brier`` as scored and as ``*_before`` of the raw softmax),
        the ``reliability`` bins of both and how many pixels were counted; empty without any."""
        from visionlab.kinds.classification.meter import calibration_metrics, reliability_bins

        if not self.parts["target"] or not sum(len(t) for t in self.parts["target"]):
            return {}
        y = torch.cat(self.parts["target"])
        after, before = (torch.cat(self.parts[n]) for n in ("after", "before"))
        metrics = calibration_metrics(after.clamp_min(1e-12).log(), y)
        metrics.update({f"{k}_before": v for k, v in calibration_metrics(before.clamp_min(1e-12).log(), y).items()})
        target = y.numpy()
        return {"metrics": metrics, "pixels": {"sampled": int(len(y)), "labelled": self.labelled},
                "reliability": {"before": reliability_bins(before.numpy(), target), "after": reliability_bins(after.numpy(), target)}}


def pixel_views(step: TileStep, img: np.ndarray, mask: np.ndarray, ignore_index: int, generator: torch.Generator,
                per_tile: int = FIT_PIXELS_PER_TILE) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw logits ((V, n, C), on the CPU) of each test-time view at up to ``per_tile`` labelled
    pixels of every tile of one image (HxWx3 uint8, as the model sees it), and their class indices.

    The mask rides through the same tiling as a fourth channel (:func:`visionlab.engine.tiling.predict_tiled`
    pads by reflection, so padded pixels keep the labels of the pixels they copy): the tiles are
    exactly those that prediction blends."""
    from visionlab.engine.tiling import predict_tiled
    from visionlab.engine.tta import dense_view_logits

    x = step.normalize(torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None].to(step.device))[0]
    x = torch.cat([x, torch.from_numpy(mask.astype(np.float32)).to(x.device)[None]])
    views: list[torch.Tensor] = []
    targets: list[torch.Tensor] = []

    def forward(b: torch.Tensor) -> torch.Tensor:
        t, b = b[:, 3].round().long(), b[:, :3]
        if step.channels_last:
            b = b.contiguous(memory_format=torch.channels_last)
        v = dense_view_logits(step.model, b, step.tta, step.autocast)  # (V, B, C, h, w)
        keep = torch.nonzero(t != ignore_index)
        pick = keep[torch.randperm(len(keep), generator=generator)[: per_tile * len(b)].to(keep.device)]
        i, yy, xx = pick.unbind(1)
        views.append(v.permute(0, 1, 3, 4, 2)[:, i, yy, xx].cpu())
        targets.append(t[i, yy, xx].cpu())
        return v[0]

    with torch.inference_mode():
        predict_tiled(forward, x, step.num_classes, step.tile_size, step.tile_overlap, step.batch_size)
    return torch.cat(views, 1), torch.cat(targets)


def fit_pixel_temperature(runner: Any, model: torch.nn.Module, split: str = "val") -> dict[str, Any] | None:
    """The temperature of ``model`` fitted on labelled pixels of ``runner``'s ``split`` (in fp32, as
    evaluate runs), kept only where it also lowers their ECE; None without labelled pixels there."""
    from visionlab.engine.device import resolve_precision
    from visionlab.engine.tta import mean_scores
    from visionlab.kinds.classification.calibration import fit_temperature
    from visionlab.kinds.classification.meter import calibration_metrics

    model.eval()
    step = TileStep.of(model, runner.preprocessing, runner.normalize, runner.device,
                       autocast=resolve_precision("fp32", runner.device).autocast, channels_last=runner.cfg.channels_last)
    gen = torch.Generator().manual_seed(int(runner.cfg.seed))
    parts = [pixel_views(step, *runner.train_pair(int(k)), runner.ignore_index, gen) for k in runner.splits[split]]
    if not parts or not sum(len(y) for _, y in parts):
        return None
    views, y = torch.cat([v for v, _ in parts], 1).clone(), torch.cat([t for _, t in parts]).clone()
    fit = fit_temperature(views, y)
    ece_before = calibration_metrics(mean_scores(views, 1.0), y)["ece"]
    ece_after = calibration_metrics(mean_scores(views, fit.temperature), y)["ece"]
    keep = ece_after < ece_before
    return {"temperature": fit.temperature if keep else 1.0, "fitted_on": split, "images": len(parts), "pixels": int(len(y)),
            "nll_before": fit.nll_before, "nll_after": fit.nll_after if keep else fit.nll_before,
            "ece_before": ece_before, "ece_after": ece_after if keep else ece_before,
            "method": fit.method if keep else f"none: T = {fit.temperature:.3f} did not lower the ECE"}
