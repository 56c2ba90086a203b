"""Figures written next to a run: confusion matrix, reliability diagram, training curves, mask overlays.

Figures are drawn on a ``matplotlib.figure.Figure`` with the Agg canvas, never through
``pyplot``, so nothing here changes the global backend, opens a window or leaks figures;
matplotlib is imported only when a figure is drawn.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from numbers import Real
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageColor

__all__ = [
    "colorize_mask",
    "default_color",
    "overlay_mask",
    "save_confusion_matrix",
    "save_reliability_diagram",
    "save_training_curves",
]

# tab10 followed by the lighter half of tab20: distinct colours for up to 20 classes.
_PALETTE = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
    "#bcbd22", "#17becf", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94",
    "#f7b6d2", "#c7c7c7", "#dbdb8d", "#9edae5",
)


def _figure(width: float, height: float) -> Any:
    """A Figure bound to an Agg canvas (no pyplot, no global backend state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, bbox_inches="tight")
    return path


def save_confusion_matrix(
    cm: Any,
    class_names: Sequence[str],
    path: str | os.PathLike,
    normalize: bool = True,
    title: str = "Confusion matrix",
) -> Path:
    """PNG of a confusion matrix (rows = true): counts in the cells, colours row-normalised.

    With ``normalize`` the colour (and a second line in each cell) is the share of the true
    class, so rare classes are as readable as frequent ones; otherwise colours follow counts.
    """
    counts = np.asarray(cm, dtype=np.int64)
    n = len(class_names)
    if counts.shape != (n, n):
        raise ValueError(f"confusion matrix shape {counts.shape} does not match {n} class names")
    rows = counts.sum(axis=1, keepdims=True)
    shares = np.divide(counts, rows, out=np.zeros(counts.shape, dtype=np.float64), where=rows > 0)
    values = shares if normalize else counts.astype(np.float64)

    side = min(max(4.0, 0.55 * n + 2.5), 16.0)
    font = 10 if n <= 8 else 9 if n <= 14 else 8
    fig = _figure(side + 1.2, side)
    ax = fig.add_subplot(1, 1, 1)
    vmax = 1.0 if normalize else max(float(values.max()), 1.0)
    image = ax.imshow(values, cmap="Blues", vmin=0.0, vmax=vmax, interpolation="nearest")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of true class" if normalize else "count")
    ax.set_xticks(range(n), labels=[str(c) for c in class_names], rotation=45, ha="right", fontsize=font)
    ax.set_yticks(range(n), labels=[str(c) for c in class_names], fontsize=font)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    for i in range(n):
        for j in range(n):
            text = _compact(int(counts[i, j]))
            if normalize and n <= 12:
                share = shares[i, j]
                text += "\n<1%" if 0 < share < 0.005 else f"\n{share:.0%}"
            dark = values[i, j] / vmax > 0.55
            ax.text(j, i, text, ha="center", va="center", fontsize=font - 1, color="white" if dark else "black")
    return _save(fig, path)


def save_reliability_diagram(reliability: Mapping[str, Mapping[str, Sequence[Any]]], path: str | os.PathLike,
                             titles: Mapping[str, str] | None = None) -> Path:
    """PNG of a reliability diagram, one panel per entry of ``reliability`` (e.g. "before" and "after"
    calibration: equal-width confidence bins with their mean confidence, accuracy and count): each
    bin's accuracy as a bar over its confidence range, its mean confidence as a red mark, the diagonal
    of perfect calibration, and its number of images on the bar; ``titles`` names the panels."""
    fig = _figure(5.2 * len(reliability), 4.6)
    for i, (name, bins) in enumerate(reliability.items()):
        edges = np.asarray(bins["edges"], dtype=np.float64)
        width, left = np.diff(edges), edges[:-1]
        acc = np.array([a if a is not None else 0.0 for a in bins["accuracy"]])
        ax = fig.add_subplot(1, len(reliability), i + 1)
        ax.bar(left, acc, width=width, align="edge", color="#1f77b4", edgecolor="white", label="accuracy")
        filled = [j for j, c in enumerate(bins["confidence"]) if c is not None]
        ax.plot([left[j] + width[j] / 2 for j in filled], [bins["confidence"][j] for j in filled], "_", color="#d62728",
                markersize=12, mew=2.5, label="mean confidence")
        ax.plot([0, 1], [0, 1], "--", color="#7f7f7f", linewidth=1, label="perfectly calibrated")
        for j, n in enumerate(bins["count"]):
            if n:
                high = acc[j] > 0.85
                ax.text(left[j] + width[j] / 2, acc[j] - 0.02 if high else acc[j] + 0.01, _compact(int(n)), ha="center",
                        va="top" if high else "bottom", fontsize=6, rotation=90, color="white" if high else "black")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.05)
        ax.set_xlabel("confidence (probability of the top class)")
        ax.set_ylabel("accuracy (share right)")
        ax.set_title((titles or {}).get(name, name), fontsize=10)
        ax.legend(loc="upper left", fontsize=7)
    return _save(fig, path)


def _compact(count: int) -> str:
    """Short cell text for large (pixel) counts: 12,345 / 123k / 12.3M."""
    if count < 100_000:
        return f"{count:,}"
    if count < 1_000_000:
        return f"{count / 1e3:.0f}k"
    return f"{count / 1e6:.1f}M" if count < 1_000_000_000 else f"{count / 1e9:.1f}G"


def _is_number(value: Any) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool)


def _series(history: Sequence[Mapping[str, Any]], key: str) -> list[float]:
    """Values of ``key`` per epoch; missing or non-numeric entries become NaN (a gap)."""
    return [float(row[key]) if _is_number(row.get(key)) else math.nan for row in history]


def save_training_curves(history: Sequence[Mapping[str, Any]], path: str | os.PathLike) -> Path:
    """PNG with loss (train and val), every numeric ``val_*`` metric, and the learning rate.

    ``history`` is one dict per epoch (``epoch``, ``train_loss``, ``val_loss``, ``val_accuracy``,
    ``lr``, ...). A ``train_<m>`` curve is drawn dashed next to its ``val_<m>`` when both exist.
    """
    if not history:
        raise ValueError("history is empty: nothing to plot")
    keys: list[str] = []
    for row in history:
        keys.extend(k for k, v in row.items() if k not in keys and _is_number(v))
    x = _series(history, "epoch") if "epoch" in keys else [float(i + 1) for i in range(len(history))]

    loss_keys = [k for k in keys if k.endswith("loss")]
    val_keys = [k for k in keys if k.startswith("val_") and not k.endswith("loss")]
    lr_keys = [k for k in keys if k == "lr" or k.startswith("lr_") or k.endswith("_lr")]
    panels = [p for p in (("loss", loss_keys), ("validation metrics", val_keys), ("learning rate", lr_keys)) if p[1]]
    if not panels:
        raise ValueError(f"history has no loss, val_* or lr values to plot (keys: {keys})")

    fig = _figure(5.0 * len(panels), 4.0)
    marker = "o" if len(history) <= 30 else None
    for idx, (name, panel_keys) in enumerate(panels, start=1):
        ax = fig.add_subplot(1, len(panels), idx)
        for n, key in enumerate(panel_keys):
            color = _PALETTE[n % len(_PALETTE)]
            ax.plot(x, _series(history, key), marker=marker, markersize=3, color=color, label=key)
            twin = "train_" + key[len("val_"):]
            if name == "validation metrics" and twin in keys:
                ax.plot(x, _series(history, twin), linestyle="--", color=color, alpha=0.7, label=twin)
        if name == "learning rate":
            lrs = [v for k in panel_keys for v in _series(history, k) if v > 0]
            if lrs and max(lrs) / min(lrs) > 20:
                ax.set_yscale("log")
        ax.set_title(name)
        ax.set_xlabel("epoch")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def default_color(value: int) -> str:
    """The ``#RRGGBB`` a mask value is drawn in when its class names no colour (cycles after 20)."""
    return _PALETTE[value % len(_PALETTE)]


def _rgb_table(colors: Mapping[int, str]) -> np.ndarray:
    """(256, 4) RGBA lookup: given colours, the default palette for other ids, alpha 255."""
    table = np.zeros((256, 4), dtype=np.uint8)
    for i in range(256):
        table[i, :3] = ImageColor.getrgb(default_color(i))[:3]
    for idx, color in colors.items():
        if not 0 <= int(idx) <= 255:
            raise ValueError(f"class index {idx} is outside 0..255")
        try:
            table[int(idx), :3] = ImageColor.getrgb(color)[:3]
        except ValueError:
            raise ValueError(f"class {idx}: {color!r} is not a colour (use '#RRGGBB')") from None
    table[:, 3] = 255
    return table


def colorize_mask(mask: np.ndarray, colors: Mapping[int, str], ignore_index: int = 255) -> Image.Image:
    """RGBA image of a class-index mask (H, W); ``ignore_index`` pixels are fully transparent.

    Class ids without an entry in ``colors`` get the default palette colour rather than
    disappearing. Use ``.convert("RGB")`` before saving as JPEG.
    """
    arr = np.asarray(mask)
    if arr.ndim != 2:
        raise ValueError(f"mask must be (H, W), got shape {arr.shape}")
    if arr.size and (arr.min() < 0 or arr.max() > 255):
        raise ValueError(f"mask values must be in 0..255, got {arr.min()}..{arr.max()}")
    arr = arr.astype(np.uint8, copy=False)
    table = _rgb_table(colors)
    if 0 <= ignore_index <= 255:
        table[ignore_index, 3] = 0
    return Image.fromarray(table[arr])


def overlay_mask(
    image: Image.Image,
    mask: np.ndarray,
    colors: Mapping[int, str],
    alpha: float = 0.45,
    ignore_index: int = 255,
) -> Image.Image:
    """RGB ``image`` with the mask's class colours blended in at ``alpha``; ignore pixels untouched."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    arr = np.asarray(mask)
    if arr.shape[:2] != (image.height, image.width):
        raise ValueError(f"mask is {arr.shape[1]}x{arr.shape[0]} but image is {image.width}x{image.height}")
    colored = colorize_mask(arr, colors, ignore_index)
    layer = np.asarray(colored).copy()
    layer[..., 3] = (layer[..., 3].astype(np.float32) * alpha).round().astype(np.uint8)
    base = image.convert("RGBA")
    return Image.alpha_composite(base, Image.fromarray(layer)).convert("RGB")
