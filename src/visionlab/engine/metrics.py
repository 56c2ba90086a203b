"""What every kind's meter shares: class names checked against the model's outputs, and
undefined values (a class that never occurs) reported as ``None``, never averaged in as 0.

A meter has one small interface (``update``, ``reset``, ``compute``, ``report``, ``primary``);
each kind's lives with its kind (:mod:`visionlab.kinds.classification.meter`,
:mod:`visionlab.kinds.segmentation.meter`), and the kind says which metrics are better higher.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["nan_to_none", "check_class_names"]


def nan_to_none(value: float) -> float | None:
    """``value`` as a float, or None where it is undefined (NaN, infinite, None)."""
    return None if value is None or not math.isfinite(value) else float(value)


def check_class_names(class_names: Sequence[str] | None, num_classes: int) -> list[str]:
    """The report's class names: ``class_names`` checked against ``num_classes`` (unique), or 0, 1, ...."""
    if class_names is None:
        return [str(i) for i in range(num_classes)]
    names = [str(n) for n in class_names]
    if len(names) != num_classes:
        raise ValueError(f"got {len(names)} class names for {num_classes} classes")
    if len(set(names)) != len(names):
        raise ValueError(f"class names must be unique, got {names}")
    return names
