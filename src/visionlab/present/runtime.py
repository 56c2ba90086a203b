"""The torch-free runtime's output (``python -m visionlab.runtime``): one tab-separated line per
image (path, label, confidence, the top classes, class shares or labels' probabilities), the masks and
confidence maps as PNG files, the rows as JSON, and its one-line errors on stderr.

Plain ``print``, no rich: the runtime's install (numpy, Pillow, onnxruntime) has no rich.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Iterable

from visionlab.data.io import printable_name

__all__ = ["show_rows", "show_error", "show_note"]


def show_note(note: str) -> None:
    """A notice about the model (one line on stderr, so the rows on stdout stay rows)."""
    print(note, file=sys.stderr)


def show_error(message: str) -> None:
    """``error: message`` on stderr."""
    print(f"error: {message}", file=sys.stderr)


def show_rows(rows: Iterable[dict[str, Any]], masks: Path | None, out: Path | None) -> None:
    """A line per row; each mask into ``masks`` (``<stem>_mask.png``, named in the row as ``mask_file``)
    and its confidence map beside it (``<stem>_confidence.png``, as ``confidence_file``); the rows,
    those arrays left out, as JSON into ``out``."""
    from PIL import Image

    rows = list(rows)
    taken: set[str] = set()
    for r in rows:
        if r["error"] or r.get("skipped"):
            print(f"{printable_name(r['path'])}\t{'error' if r['error'] else 'skipped'}\t{r['error'] or r['skipped']}")
            continue
        scores = r.get("class_shares") or r.get("probabilities") or {}  # per-pixel shares, or several labels' probabilities
        detail = r.get("top_k") or [{"label": c, "probability": s} for c, s in scores.items() if s > 0.005]
        guess = f"none of the classes (best guess {r['guess']}, score {r['known_score']:.3f}): " if r.get("unknown") else ""
        print(f"{printable_name(r['path'])}\t{r['label']}\t{r['confidence']:.3f}\t{guess}" + ", ".join(f"{d['label']} {d['probability']:.2f}" for d in detail))
        if masks is not None and r.get("mask") is not None:
            masks.mkdir(parents=True, exist_ok=True)
            stem = base = Path(r["path"]).stem
            while stem in taken:  # the same name from another folder: a mask of its own
                stem = f"{base}-{len(taken)}"
            taken.add(stem)
            r["mask_file"] = str(masks / f"{stem}_mask.png")
            Image.fromarray(r["mask"]).save(r["mask_file"])
            if r.get("confidence_map") is not None:
                from visionlab.kinds.segmentation.confidence import confidence_image

                r["confidence_file"] = str(masks / f"{stem}_confidence.png")
                confidence_image(r["confidence_map"]).save(r["confidence_file"])
    if out is not None:
        out.write_text(json.dumps([{k: v for k, v in r.items() if k not in ("mask", "confidence_map")} for r in rows], indent=2))
