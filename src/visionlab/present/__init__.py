"""The presentation layer: everything the CLI prints and the tables and files it writes.

The library computes values (an :class:`~visionlab.kinds.EvaluationReport`, one
:class:`~visionlab.kinds.Prediction` per image, a doctor's :class:`~visionlab.data.doctor.Report`,
the runtime's rows, an :class:`~visionlab.export.ExportResult`) and prints nothing; the modules
here show them, each driven by what the task kind declares, never by its name:

* :mod:`visionlab.present.evaluation`: ``evaluate``'s tables, metrics.json, the confusion matrix
  (CSV and PNG), predictions.csv and the example thumbnails;
* :mod:`visionlab.present.predictions`: ``predict``'s table, its closing line and its CSV/JSON;
* :mod:`visionlab.present.doctor`: ``visionlab data check``'s tables or JSON;
* :mod:`visionlab.present.training`: a training run's progress display (a callback of the trainer);
* :mod:`visionlab.present.runtime`: the torch-free runtime's lines, masks and JSON (no rich);
* :mod:`visionlab.present.messages`: the lines of checkpoint lookup, the demo, export, download and serve.

This module is cheap to import (rich is imported when a console is made), so the torch-free
runtime can use :mod:`visionlab.present.runtime` without torch or rich.
"""

from __future__ import annotations

from typing import Any

__all__ = ["console"]


def console(given: Any = None) -> Any:
    """``given``, or a rich console on stdout: where the CLI and the API's functions show things."""
    if given is not None:
        return given
    from rich.console import Console

    return Console()
