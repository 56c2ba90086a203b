"""The segmentation kind: a class per pixel (``images/``, ``masks/`` and ``classes.json``).

Everything the kind is lives in this package: the layout (``layout``: :class:`SegmentationIndex`), the
runner (``runner``: data, training step, evaluation), the one decode-and-run step that predict, evaluate,
serve and the runtime share (``step``: blended tiles over each whole image), the meter (``meter``), the
data doctor's mask checks (``checks``), the per-pixel confidence map (``confidence``), the pixel-level
calibration (``calibration``: the ECE that evaluate reports, and a temperature that training does not
fit, as it raised the test split's ECE where it was measured) and the synthetic data (``synthetic``). Predictions are
answered by :class:`MaskPrediction` (mask, class shares, legend, confidence map).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from visionlab.data.geometry import TTA_MODES
from visionlab.kinds.base import Kind, LoadedModel, Output, Prediction, free_stem, image_base64, save_output
from visionlab.kinds.segmentation.options import SegmentationOptions

if TYPE_CHECKING:  # pragma: no cover
    from visionlab.kinds.segmentation.step import TileStep

__all__ = ["KIND", "SegmentationKind", "MaskPrediction"]


@dataclass
class MaskPrediction(Prediction):
    """A mask (H x W array of the dataset's pixel values), each class's share of the pixels and the
    legend that colours it (one ``{"name", "value", "color"}`` per class); ``label`` is the class
    with the most pixels, ``confidence`` its share. ``confidence_map`` (H x W, float32) is each
    pixel's probability of the class the mask shows there, ``mean_confidence`` its mean."""

    mask: Any = None
    class_shares: dict[str, float] = field(default_factory=dict)
    legend: list[dict[str, Any]] = field(default_factory=list)
    ignore_index: int = 255
    confidence_map: Any = None
    mean_confidence: float | None = None

    def extra(self) -> dict[str, Any]:
        out: dict[str, Any] = {"class_shares": self.class_shares} if self.class_shares else {}
        return {**out, "mean_confidence": self.mean_confidence} if self.mean_confidence is not None else out

    def flat_extra(self) -> dict[str, Any]:
        """class_shares as share_<class> columns, then mean_confidence."""
        shares = {f"share_{c}": s for c, s in self.class_shares.items()}
        return {**shares, "mean_confidence": self.mean_confidence} if self.mean_confidence is not None else shares

    def detail(self) -> str:
        return ", ".join(f"{c} {s:.0%}" for c, s in sorted(self.class_shares.items(), key=lambda kv: -kv[1]) if s > 0.005)

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
        """Also ``mask_png`` (pixel value = class value), ``overlay_jpeg`` (the mask blended over
        ``image``) and ``confidence_map`` (the confidence map in colour with its legend, as
        <stem>_confidence.png) as base64, and the ``legend``."""
        d = super().to_json(image)
        if self.mask is not None:
            from PIL import Image

            d["mask_png"] = image_base64(Image.fromarray(self.mask), "PNG")
            d["overlay_jpeg"] = image_base64(self.overlay(image).convert("RGB"), "JPEG", quality=88)
            d["legend"] = self.legend
        if self.confidence_map is not None:
            from visionlab.kinds.segmentation.confidence import confidence_image

            d["confidence_map"] = image_base64(confidence_image(self.confidence_map), "PNG", compress_level=1)  # fast: per request
        return d

    def write_files(self, folder: Path, taken: set[str]) -> None:
        """<stem>_mask.png, <stem>_overlay.png and <stem>_confidence.png (the confidence map in colour,
        its legend under it) in ``folder`` (a stem seen before gets -2, -3, ...)."""
        from PIL import Image

        from visionlab.data.io import UnreadableImage

        folder.mkdir(parents=True, exist_ok=True)
        # same file name from another folder, or a user's file of that name there: a stem of its own
        stem = free_stem(self.source, taken, folder, ("_mask.png", "_overlay.png", "_confidence.png"))
        mask_path, overlay_path = folder / f"{stem}_mask.png", folder / f"{stem}_overlay.png"
        save_output(Image.fromarray(self.mask), mask_path, "mask")
        try:
            overlay = self.overlay(self.source)
        except UnreadableImage:  # the photo is unreadable now: the mask alone, in colour
            overlay = self.overlay()
        save_output(overlay, overlay_path, "overlay")
        self.files = {"mask": str(mask_path), "overlay": str(overlay_path)}
        if self.confidence_map is not None:
            from visionlab.kinds.segmentation.confidence import confidence_image

            save_output(confidence_image(self.confidence_map), folder / f"{stem}_confidence.png", "confidence")
            self.files["confidence_map"] = str(folder / f"{stem}_confidence.png")


class SegmentationKind(Kind):
    name = "segmentation"
    options = SegmentationOptions
    outputs = (Output("logits", "pixel", "softmax", "logits over the classes, per pixel"),)
    primary = "miou"
    headline = ("miou", "pixel_accuracy")
    tta_modes = TTA_MODES
    max_quantization_drop = 0.01
    input_key = "tile_size"
    demo_options = {"epochs": 3, "batch_size": 8, "tile_size": 128, "crops_per_image": 8, "early_stopping": 0}
    per_class_columns = ("iou", "dice", "precision", "recall", "pixel_share", "support")
    confusion_unit = "pixels"
    examples_heading = "Worst images by IoU"
    examples_note = "photo, true mask and predicted mask, lowest mIoU first"
    detail_column = "class shares"
    writes_files = True
    tiled = True  # each image is tiled, and its tiles are batched
    general_recipe = "segment"

    def runner(self, cfg: Any, spec: Any, device: Any) -> Any:
        from visionlab.kinds.segmentation.runner import SegmentationRunner

        return SegmentationRunner(cfg, spec, device, self)

    def make_synthetic(self, root: Path, classes: list[str], seed: int) -> None:
        from visionlab.kinds.segmentation.synthetic import make_segmentation

        make_segmentation(root, classes, seed=seed)

    def demo_inputs(self, root: Path) -> list[Path]:
        """The first two images."""
        from visionlab.data.io import expand_inputs

        return [Path(p) for p in expand_inputs([root / "images"])[:2]]

    def check_data(self, path: Any, classes: list[str] | None = None, **options: Any) -> Any:
        from visionlab.kinds.segmentation.checks import check_segmentation

        return check_segmentation(path, **options)

    def dataset_classes(self, path: Path) -> list[str]:
        from visionlab.kinds.segmentation.layout import find_segmentation

        return find_segmentation(path).class_names

    def recognizes(self, path: Path) -> bool:
        from visionlab.kinds.segmentation.checks import looks_like_segmentation

        return looks_like_segmentation(path)

    def predict_arrays(self, model: LoadedModel, arrays: Sequence[Any], top_k: int, sources: Sequence[str],
                       originals: Sequence[Any]) -> list[Prediction]:
        from visionlab.kinds.segmentation.step import TileStep

        step = TileStep.of(model.model, model.preprocessing, model.normalize, model.device, tta=model.tta,
                           autocast=model.autocast, channels_last=model.channels_last, temperature=model.temperature)
        return [self._segment(model, step, s, o, a) for s, o, a in zip(sources, originals, arrays)]

    def _segment(self, model: LoadedModel, step: TileStep, name: str, original: Any, img: Any) -> MaskPrediction:
        """Blended tiles over the whole image, back at its original resolution when it was scaled."""
        import numpy as np

        from visionlab.kinds.segmentation.confidence import confidence_fields
        from visionlab.kinds.segmentation.step import mask_fields, original_size, predict_probs

        pre = model.preprocessing
        probs = predict_probs(step, img, out_size=original_size(pre, original)).float().cpu().numpy()
        fields = mask_fields(probs.argmax(0).astype(np.uint8), pre.values, model.classes)
        return MaskPrediction(name, **fields, **confidence_fields(probs), legend=self.legend(model), ignore_index=pre.ignore_index)

    def explain(self, model: LoadedModel, arrays: Sequence[Any], predictions: Sequence[Any]) -> list[Any]:
        """The confidence map is a segmentation's explanation: per input (a preprocessed HxWx3 uint8
        array and its :class:`MaskPrediction`), the map's colours blended over the photo, RGB uint8 at
        the prediction's size. A prediction without a map (an error) is segmented again here."""
        from visionlab.kinds.segmentation.confidence import confidence_overlay

        out = []
        for img, pred in zip(arrays, predictions):
            conf = getattr(pred, "confidence_map", None)
            if conf is None:
                conf = self.predict_arrays(model, [img], 1, [getattr(pred, "source", "<image>")], [img])[0].confidence_map
            out.append(confidence_overlay(img, conf))
        return out

    def sample_inputs(self, root: Path, count: int) -> list[Path]:
        """Photos of ``root/images`` (not the masks beside them)."""
        return super().sample_inputs(root / "images", count)

    def answer_difference(self, prediction: Any, row: Any) -> tuple[float, int, int]:
        """Each class's share of the pixels and each pixel's confidence, and the pixels of equal mask value."""
        import numpy as np

        diff = max(abs(s - row["class_shares"].get(c, float("inf"))) for c, s in prediction.class_shares.items())
        if prediction.mask.shape != row["mask"].shape:
            return float("inf"), 0, prediction.mask.size
        if prediction.confidence_map is not None and row.get("confidence_map") is not None:
            diff = max(diff, float(np.abs(prediction.confidence_map - row["confidence_map"]).max()))
        return diff, int((prediction.mask == row["mask"]).sum()), prediction.mask.size

    def runtime_rows(self, runtime: Any, batch: Sequence[tuple[Any, Any]], top_k: int) -> list[dict[str, Any]]:
        """Blended tiles through the ONNX model, back at the original resolution when the image was
        scaled; ``mask`` holds the dataset's pixel values, ``confidence_map`` each pixel's probability
        of its class (the file's temperature applied, as the predictor does)."""
        from visionlab.kinds.segmentation.confidence import confidence_fields
        from visionlab.kinds.segmentation.step import mask_fields, original_size, runtime_probs

        out = []
        for src, img in batch:
            probs = runtime_probs(runtime, img, out_size=original_size(runtime.preprocessing, src))
            fields = {**mask_fields(probs.argmax(0), runtime.preprocessing.values, runtime.classes), **confidence_fields(probs)}
            out.append({"label": fields["label"], "confidence": fields["confidence"], "error": None, **fields})  # as classifiers' rows
        return out

    @staticmethod
    def legend(model: Any) -> list[dict[str, Any]]:
        """Each class's name, pixel value and the colour its masks are drawn in (``model``: anything
        with ``classes`` and a ``preprocessing`` record: a loaded model, a runtime)."""
        from visionlab.engine.plots import default_color

        pre = model.preprocessing
        return [{"name": c, "value": int(v), "color": col or default_color(int(v))}
                for c, v, col in zip(model.classes, pre.values, pre.colors)]


#: The kind's one instance, registered by :mod:`visionlab.kinds` on first lookup.
KIND = SegmentationKind()
