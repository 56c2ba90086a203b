"""Semantic segmentation of large aerial images: random crops to train, blended tiles to infer.

Images are never squashed: training samples random ``tile_size`` crops of the full images
(optionally biased towards rare classes), evaluation and prediction run sliding windows over
the whole image (:func:`visionlab.kinds.segmentation.step.predict_probs`). Masks are only ever resized
with nearest neighbour; ``ignore_index`` (255) and the classes in ``ignore_classes`` count in
neither loss nor metrics.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
import torch.nn.functional as F

from visionlab.data.augment import Augment
from visionlab.data.cache import RecordCache, build_record_cache, decode_each
from visionlab.data.io import UnreadableImage, load_mask, resize_mask
from visionlab.data.preprocessing import Preprocessing
from visionlab.data.transforms import Normalize, cutmix_pairs, load_for_model
from visionlab.engine.distributed import shard_batch
from visionlab.errors import VisionlabError
from visionlab.kinds.base import temperature_of
from visionlab.data.splits import split_indices, split_keys
from visionlab.engine.runner import EvalResult, TaskRunner, default_workers, loader_generator, resolve_data_path, thumbnail
from visionlab.kinds.segmentation.layout import SegmentationIndex, find_segmentation
from visionlab.kinds.segmentation.meter import SegmentationMeter
from visionlab.kinds.segmentation.step import TileStep, predict_probs

__all__ = ["SegmentationRunner", "segmentation_preprocessing", "value_lut"]


def value_lut(values: list[int], ignore_index: int, ignored_values: list[int] = ()) -> np.ndarray:
    """256-entry table: mask pixel value -> channel index (ignore_index for unknown/ignored)."""
    lut = np.full(256, ignore_index, dtype=np.uint8)
    for ch, v in enumerate(values):
        if v not in ignored_values:
            lut[v] = ch
    return lut


def segmentation_preprocessing(cfg: Any, index: SegmentationIndex) -> Preprocessing:
    """The preprocessing that travels with the weights and every checkpoint: whole images scaled by
    ``seg_scale`` (never squashed: tiled instead), normalised as the encoder's weights were trained,
    with the masks' pixel values, colours and ignored values of ``index``'s classes."""
    from visionlab.models import model_weights

    w = model_weights(cfg.model, **cfg.model_args)
    opts = cfg.options
    ignored = [c.value for c in index.classes if c.name in set(opts.ignore_classes)]
    return Preprocessing(kind="segmentation", resize="scale", image_size=int(opts.tile_size), tile_size=int(opts.tile_size),
                         tile_overlap=float(opts.tile_overlap), seg_scale=float(opts.seg_scale), mean=w.mean, std=w.std,
                         values=tuple(c.value for c in index.classes), colors=tuple(c.color for c in index.classes),
                         ignore_index=int(index.ignore_index), ignored_values=tuple(ignored), tta=str(cfg.tta))


class _CropDataset(torch.utils.data.Dataset):
    """``crops_per_image`` random crops per training image, augmented as :class:`Augment` describes:
    zoom and shift move the crop window, the rest is albumentations on the crop and its mask."""

    def __init__(self, runner: "SegmentationRunner", indices: np.ndarray, epoch: int) -> None:
        import albumentations as A
        import cv2

        cfg = runner.cfg
        self.r, self.indices, self.epoch = runner, indices, epoch
        self.tile = cfg.options.tile_size
        self.aug = aug = Augment.from_config(cfg.augment)
        ops = [A.PadIfNeeded(self.tile, self.tile, border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=runner.ignore_index)]
        if aug.hflip:
            ops.append(A.HorizontalFlip(p=0.5))
        if aug.vflip:
            ops.append(A.VerticalFlip(p=0.5))
        if aug.rot90:
            ops.append(A.RandomRotate90(p=0.5))
        if aug.rotate > 0:
            ops.append(A.Rotate(limit=aug.rotate, border_mode=cv2.BORDER_REFLECT_101, p=0.5))
        if aug.brightness or aug.contrast or aug.saturation or aug.hue:
            ops.append(A.ColorJitter(brightness=aug.brightness, contrast=aug.contrast, saturation=aug.saturation,
                                     hue=min(0.5, aug.hue), p=0.8))
        self.transform = A.Compose(ops)

    def __len__(self) -> int:
        return len(self.indices) * self.r.cfg.options.crops_per_image

    def _crop_origin(self, mask: np.ndarray, rng: np.random.Generator, t: int) -> tuple[int, int]:
        h, w = mask.shape
        if self.r.cfg.sampler == "balanced" and rng.random() < 0.5:
            present = [c for c in np.unique(mask[:: 8, :: 8]) if c != self.r.ignore_index]
            if present:
                c = present[int(rng.integers(len(present)))]
                ys, xs = np.nonzero(mask[:: 8, :: 8] == c)
                j = int(rng.integers(len(ys)))
                cy, cx = ys[j] * 8, xs[j] * 8
                return (int(np.clip(cy - t // 2, 0, max(0, h - t))), int(np.clip(cx - t // 2, 0, max(0, w - t))))
        return int(rng.integers(0, max(1, h - t + 1))), int(rng.integers(0, max(1, w - t + 1)))

    def __getitem__(self, i: int):
        rng = np.random.default_rng((self.r.cfg.seed, self.epoch, i))
        k = int(self.indices[i // self.r.cfg.options.crops_per_image])
        img, mask = self.r.train_pair(k)
        t = self.tile
        # 'scale': the side of the region that fills the crop, relative to tile_size; 'translate': the
        # window moves by up to that fraction of tile_size (clipped to the image). Masks: nearest only.
        c = t if self.aug.scale == (1.0, 1.0) else max(8, round(t * rng.uniform(*self.aug.scale)))
        y, x = self._crop_origin(mask, rng, c)
        if self.aug.translate > 0:
            dy, dx = np.rint(rng.uniform(-1.0, 1.0, 2) * self.aug.translate * t).astype(int)
            y, x = int(np.clip(y + dy, 0, max(0, mask.shape[0] - c))), int(np.clip(x + dx, 0, max(0, mask.shape[1] - c)))
        img, mask = img[y : y + c, x : x + c], mask[y : y + c, x : x + c]
        if c != t:
            import cv2

            size = (max(1, round(img.shape[1] * t / c)), max(1, round(img.shape[0] * t / c)))
            img = cv2.resize(img, size, interpolation=cv2.INTER_AREA if c > t else cv2.INTER_LINEAR)
            mask = resize_mask(mask, size)
        if hasattr(self.transform, "set_random_seed"):  # albumentations 2: its own RNG, unseeded by default
            self.transform.set_random_seed(int(rng.integers(2**31)))  # same seed, same crops and augmentation
        out = self.transform(image=img, mask=mask)
        return torch.from_numpy(np.ascontiguousarray(out["image"])).permute(2, 0, 1), torch.from_numpy(out["mask"].astype(np.int64))


class SegmentationRunner(TaskRunner):
    def split_files(self, split: str) -> list[Path]:
        return [Path(self.index.images[i]) for i in self.splits[split]]

    def prepare(self, console: Any = None) -> None:
        cfg = self.cfg
        root = resolve_data_path(cfg, self.spec, self.task_kind)
        self.index: SegmentationIndex = find_segmentation(root)
        self.classes = self.index.class_names
        unknown = [c for c in cfg.options.ignore_classes if c not in self.classes]
        if unknown:
            raise VisionlabError(f"ignore_classes {unknown} are not in classes.json ({', '.join(self.classes)}).", "Fix 'ignore_classes'.")
        self.ignore_index = self.index.ignore_index
        self.preprocessing = Preprocessing.from_dict(self.fixed_preprocessing or segmentation_preprocessing(cfg, self.index))
        self.lut = value_lut(list(self.preprocessing.values), self.ignore_index, list(self.preprocessing.ignored_values))
        self.exclude = [i for i, c in enumerate(self.classes) if c in set(cfg.options.ignore_classes)]
        self.normalize = Normalize(self.preprocessing.mean, self.preprocessing.std).to(self.device)
        keys = split_keys(self.index.images, self.index.root)
        self.splits = split_indices(keys, None, self.index.splits, cfg.val_fraction, cfg.test_fraction, cfg.seed)
        if len(self.splits["train"]) == 0:
            raise VisionlabError(f"no training images in {root}.", "Add images or lower val/test fractions.")
        self._full_masks: dict[int, np.ndarray] = {}
        counts = np.zeros(len(self.classes), dtype=np.float64)  # the training masks' pixels per class
        train = set(self.splits["train"].tolist())

        def count(k: int, pair: tuple[np.ndarray, np.ndarray]) -> None:
            if k in train:
                counts[:] += np.bincount(pair[1].ravel(), minlength=256)[: len(self.classes)]

        self.cache: RecordCache | None = None
        if cfg.cache == "none":  # decode every pair once to find the unreadable ones; decoded again when used
            ok, _ = decode_each(self.index.images, self._decode_pair, count)
        else:
            self.cache = build_record_cache(self.index.images, self._decode_pair, self._decoding(), mode=self.cache_mode,
                                            budget_mb=cfg.cache_budget_mb, depends=self.index.masks)
            ok = self.cache.ok
            for k in sorted(train):
                if ok[k]:
                    count(k, self.cache[k])
        for s in self.splits:
            self.splits[s] = self.splits[s][ok[self.splits[s]]]
        self._shares = counts / max(1.0, counts.sum())
        self.data_info = {
            "root": str(self.index.root),
            "synthetic": cfg.is_synthetic,
            "images": len(self.index),
            "unreadable": [str(self.index.images[k]) for k in np.flatnonzero(~ok)],
            "split_sizes": {k: int(len(v)) for k, v in self.splits.items()},
            "pixel_shares": {c: round(float(s), 4) for c, s in zip(self.classes, self._shares)},
            "cache": f"{self.cache.location} ({self.cache.nbytes / 2**20:.0f} MB)" if self.cache else "none",
        }

    def _decoding(self) -> dict[str, Any]:
        """What a decoded pair depends on besides its two files (the decode cache's key)."""
        return {"kind": "segmentation", "seg_scale": self.preprocessing.scale, "mask_lut": self.lut.tolist()}

    def _decode_pair(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Image ``k`` as the model sees it and its mask of class indices at the same size (nearest neighbour only)."""
        img = load_for_model(self.index.images[k], self.preprocessing)
        mask = self.lut[load_mask(self.index.masks[k])]
        h, w = img.shape[:2]
        if mask.shape != (h, w):
            mask = resize_mask(mask, (w, h))
        return img, mask

    def train_pair(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        if self.cache is not None:
            return self.cache[k]
        try:
            return self._decode_pair(k)
        except UnreadableImage:
            raise VisionlabError(f"{self.index.images[k]} became unreadable during training.", "Restore the file.") from None

    def _pixel_shares(self) -> np.ndarray:
        """Each class's share of the labelled pixels of the training masks."""
        return self._shares

    # ----------------------------------------------------------------- batches
    def num_train_batches(self) -> int:
        return self.global_batches(len(self.splits["train"]) * self.cfg.options.crops_per_image)

    def train_batches(self, epoch: int, start_step: int = 0) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
        ds = _CropDataset(self, self.splits["train"], epoch)
        # the crop order of a shuffled DataLoader with this generator (a worker-seed draw, then randperm), written
        # out so that a resumed epoch can start at any batch
        gen = loader_generator(self.cfg.seed, epoch)
        torch.empty((), dtype=torch.int64).random_(generator=gen)
        order = torch.randperm(len(ds), generator=gen).tolist()
        bs = self.cfg.batch_size
        mine = [i for step in range(start_step, self.num_train_batches()) for i in shard_batch(order, step, bs, self.dist)]
        loader = torch.utils.data.DataLoader(ds, batch_size=bs, sampler=mine, drop_last=False,
                                             generator=loader_generator(self.cfg.seed, epoch),
                                             num_workers=default_workers(self.cfg, self.device),
                                             pin_memory=self.device.type == "cuda")
        yield from loader

    # ------------------------------------------------------------------- step
    def on_device(self, x: torch.Tensor, train: bool) -> torch.Tensor:
        x = self.normalize(x)
        if self.cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def mix(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return cutmix_pairs(x, y, self.cfg.cutmix) if self.cfg.cutmix > 0 else (x, y)

    def _class_weights(self) -> torch.Tensor | None:
        if self.cfg.class_weights != "balanced":
            return None
        share = self._pixel_shares()
        w = np.where(share > 0, 1.0 / np.sqrt(np.maximum(share, 1e-6)), 0.0)
        w = w / w[w > 0].mean()
        return torch.tensor(w, dtype=torch.float32, device=self.device)

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if not hasattr(self, "_loss_fns"):
            from segmentation_models_pytorch.losses import DiceLoss, FocalLoss, LovaszLoss

            parts = self.cfg.options.loss.split("+")
            fns = []
            weight = self._class_weights()
            for p in parts:
                if p == "ce":
                    fns.append(lambda o, t, w=weight: F.cross_entropy(o, t, weight=w, ignore_index=self.ignore_index))
                elif p == "focal":
                    fns.append(FocalLoss(mode="multiclass", gamma=self.cfg.options.focal_gamma, ignore_index=self.ignore_index))
                elif p == "dice":
                    fns.append(DiceLoss(mode="multiclass", ignore_index=self.ignore_index, from_logits=True))
                elif p == "lovasz":  # Lovasz-softmax: a convex surrogate of per-class IoU (Berman et al. 2018)
                    fns.append(LovaszLoss(mode="multiclass", ignore_index=self.ignore_index, from_logits=True))
            self._loss_fns = fns
        output = output.float()
        return sum(fn(output, target) for fn in self._loss_fns)

    def _eval_mask(self, k: int, shape: tuple[int, int]) -> np.ndarray:
        """The mask at the image's original resolution (metrics are always computed there)."""
        if self.cfg.options.seg_scale == 1.0:
            return self.train_pair(k)[1]
        if k not in self._full_masks:
            self._full_masks[k] = self.lut[load_mask(self.index.masks[k])]
        return self._full_masks[k]

    @property
    def temperature(self) -> float:
        """What every tile's logits are divided by before softmax: the model's fitted temperature, 1
        without one or when :attr:`calibrated` is off."""
        return temperature_of(self.calibration, self.calibrated)

    def _steps(self, model: torch.nn.Module, autocast: Any, batch_size: int | None) -> tuple[TileStep, TileStep | None]:
        """The step that scores (the temperature applied) and, when that is not the raw softmax, the raw one."""
        step = TileStep.of(model, self.preprocessing, self.normalize, self.device, autocast=autocast,
                           batch_size=batch_size or 8, channels_last=self.cfg.channels_last, temperature=self.temperature)
        return step, (dataclasses.replace(step, temperature=1.0) if step.temperature != 1.0 else None)

    @torch.inference_mode()
    def evaluate(self, model: torch.nn.Module, split: str, autocast: Any, batch_size: int | None = None) -> EvalResult:
        from visionlab.kinds.segmentation.calibration import PixelCalibration

        meter, calibration = self._meter(), PixelCalibration(len(self.splits[split]), self.ignore_index)
        model.eval()
        step, raw = self._steps(model, autocast, batch_size)
        rows: list[dict[str, Any]] = []
        worst: list[tuple[float, int, np.ndarray, np.ndarray]] = []  # (mIoU, k, truth, prediction), the lowest kept
        for k in self.shard(self.splits[split]):
            img = self.train_pair(int(k))[0]
            mask = self._eval_mask(int(k), img.shape[:2])
            probs = predict_probs(step, img, out_size=mask.shape)
            calibration.update(int(k), probs, mask, predict_probs(raw, img, out_size=mask.shape) if raw else None)
            pred = probs.argmax(0).cpu()
            image = self._meter()  # this image's pixels: its own scores, then added to the split's
            image.update(pred[None], torch.from_numpy(mask.astype(np.int64))[None])
            meter.merge(image)
            if self.examples:  # evaluate only: per-image scores, and the worst images kept as thumbnails
                row = image.image_scores()
                rows.append({"path": str(self.index.images[int(k)]), **row})
                if row["miou"] is not None:
                    worst = sorted(worst + [(row["miou"], int(k), *self._small_masks(mask, pred.numpy()))])[: self.examples]
        merged = self.merge_shards({"meter": meter, "rows": rows, "worst": worst, "calibration": calibration})
        meter, rows, worst = merged["meter"], merged["rows"], sorted(merged["worst"], key=lambda w: (w[0], w[1]))[: self.examples]
        if len(self.splits[split]) == 0:
            return EvalResult({}, {}, self.primary)
        metrics = {k: float(v) for k, v in meter.compute().items() if v is not None and np.isscalar(v)}
        rows.sort(key=lambda r: (r["miou"] is None, r["miou"] or 0.0))
        return EvalResult(metrics, self._calibration_report(meter.report(self.classes), merged["calibration"]), self.primary,
                          rows or None, "lowest IoU first", [self._example(*w) for w in worst])

    def _calibration_report(self, report: dict[str, Any], calibration: Any) -> dict[str, Any]:
        """The meter's report with the pixels' calibration: ECE, NLL and Brier score as scored and, as
        ``*_before``, of the raw softmax, the reliability bins of both, and the temperature applied."""
        measured = calibration.report()
        if not measured:
            return report
        report["metrics"].update(measured["metrics"])
        report["reliability"] = measured["reliability"]
        report["calibration"] = {"temperature": self.temperature, "applied": bool(self.calibration) and self.calibrated,
                                 "unit": "pixel", "pixels": measured["pixels"],
                                 **({"fitted": self.calibration} if self.calibration else {})}
        return report

    def _meter(self) -> SegmentationMeter:
        """An empty meter of this dataset's classes, ignore index and excluded classes."""
        return SegmentationMeter(len(self.classes), ignore_index=self.ignore_index, exclude=self.exclude)

    def _small_masks(self, truth: np.ndarray, pred: np.ndarray, side: int = 320) -> tuple[np.ndarray, np.ndarray]:
        h, w = truth.shape
        size = (max(1, round(w * min(1.0, side / max(h, w)))), max(1, round(h * min(1.0, side / max(h, w)))))
        return resize_mask(truth, size), resize_mask(pred.astype(np.uint8), size)

    def _example(self, miou: float, k: int, truth: np.ndarray, pred: np.ndarray) -> dict[str, Any]:
        """Photo, truth and prediction of one image, side by side, in the dataset's class colours."""
        from PIL import Image

        from visionlab.engine.plots import overlay_mask

        photo = Image.fromarray(self.train_pair(k)[0]).resize((truth.shape[1], truth.shape[0]), Image.BILINEAR)
        colors = {i: c for i, c in enumerate(self.preprocessing.colors) if c}
        layers = {name: overlay_mask(photo, m, colors, alpha=0.55, ignore_index=self.ignore_index)
                  for name, m in (("truth", truth), ("prediction", pred))}
        return {"title": str(self.index.images[k]), "images": {"photo": thumbnail(photo), **layers},
                "fields": {"mIoU": f"{miou:.3f}"}}
