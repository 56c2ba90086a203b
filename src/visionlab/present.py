"""The presentation layer: what the CLI (and the API's convenience functions) print and write.

The library computes values (:class:`visionlab.kinds.EvaluationReport`, one
:class:`visionlab.kinds.Prediction` per image); this module turns them into rich tables in the
terminal and into files: metrics.json, the confusion matrix as CSV and PNG, predictions.csv,
the example thumbnails, and the predictions as CSV or JSON (with masks beside them for kinds
that draw them). Nothing here knows a task kind by name: it asks the kind object.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from visionlab.errors import VisionlabError
from visionlab.kinds import EvaluationReport, Kind, Prediction, get_kind

__all__ = ["console", "check_output_file", "check_writable", "show_evaluation", "write_evaluation", "write_examples",
           "show_skipped", "show_predictions", "write_predictions"]


def console(given: Any = None) -> Any:
    """``given``, or a rich console on stdout."""
    from rich.console import Console

    return given or Console()


# ------------------------------------------------------------------------------ evaluation


def show_evaluation(report: EvaluationReport, out: Any) -> None:
    """The evaluation's tables: summary metrics, per-class scores, confusion matrix."""
    from visionlab.engine.metrics import render_report

    title = f"{report.task} | {report.split} split of {report.data} | {report.images} images" + (
        " | SYNTHETIC DATA" if report.synthetic else "")
    render_report(report.detail, report.classes, console=out, title=title, columns=get_kind(report.kind).per_class_columns)


def _inert_row(row: dict[str, Any]) -> dict[str, Any]:
    from visionlab.engine.metrics import inert_text

    return {k: inert_text(v) for k, v in row.items()}


def write_evaluation(report: EvaluationReport, folder: Path) -> list[str]:
    """metrics.json, the confusion matrix (CSV and PNG), predictions.csv (one row per image, in the
    runner's order: the images worth a look first) and examples/; returns what was written, in words."""
    from visionlab.engine.metrics import write_confusion_csv
    from visionlab.engine.plots import save_confusion_matrix

    folder.mkdir(parents=True, exist_ok=True)
    data = report.to_dict()
    (folder / "metrics.json").write_text(json.dumps(data, indent=2, default=float))
    written = ["metrics.json"]
    cm = data.get("confusion_matrix") or []
    if len(cm):
        write_confusion_csv(cm, report.classes, folder / "confusion_matrix.csv")
        save_confusion_matrix(cm, report.classes, folder / "confusion_matrix.png")
        written.append("confusion_matrix.csv/png")
    if report.files:
        import pandas as pd

        kind = get_kind(report.kind)
        pd.DataFrame([_inert_row(kind.flat_row(r)) for r in report.files]).to_csv(folder / "predictions.csv", index=False)
        written.append(f"predictions.csv ({report.files_note})" if report.files_note else "predictions.csv")
    if report.examples is not None:  # also when there is none (no mistakes): examples.json says so
        write_examples(report.examples, folder / "examples")
        n = len(report.examples)
        written.append(f"examples/ ({n} image{'' if n == 1 else 's'} worth a look)")
    return written


def write_examples(examples: list[dict[str, Any]], folder: Path) -> None:
    """Each example's images as JPEG files, and examples.json that lists them with the fields."""
    folder.mkdir(parents=True, exist_ok=True)
    listing = []
    for n, ex in enumerate(examples, 1):
        files = {}
        for caption, image in ex["images"].items():
            name = f"{n:02d}-{caption}.jpg"
            image.convert("RGB").save(folder / name, quality=85)
            files[caption] = name
        listing.append({"title": ex["title"], "images": files, "fields": ex["fields"]})
    (folder / "examples.json").write_text(json.dumps(listing, indent=2))


# ------------------------------------------------------------------------------ prediction


def check_output_file(path: Path) -> None:
    """Fail now, before any work, when ``path`` is no .csv/.json file name or cannot be written."""
    if path.suffix.lower() not in (".csv", ".json"):
        raise VisionlabError(f"--out {path}: unknown format.", "Use a .csv or .json file name.")
    if path.is_dir():
        raise VisionlabError(f"--out {path} is a folder.", "Pass a file name ending in .csv or .json.")
    check_writable(path.parent, f"--out {path}")


def check_writable(folder: Path, what: str) -> None:
    """Fail now, not after every prediction, when ``folder`` cannot be created or written to."""
    import tempfile

    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder, prefix=".visionlab-write-check-"):
            pass
    except OSError as exc:
        where = exc.filename or folder
        raise VisionlabError(f"{what}: cannot write to {folder} ({exc.strerror or type(exc).__name__}: {where}).",
                             "Pass an --out in a folder you can write to.") from None


def show_skipped(preds: Sequence[Prediction], out: Any) -> None:
    """The table of entries that were not predicted, and why."""
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="skipped")
    table.add_column("path", overflow="fold")
    table.add_column("why", overflow="fold")
    for p in preds:
        table.add_row(escape(p.source), escape(p.skipped or ""))
    out.print(table)


def show_predictions(preds: Sequence[Prediction], kind: Kind, title: str, top_k: int, out: Any) -> None:
    """One row per entry: path, label, confidence and the kind's detail (top-k, class shares...)."""
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=title)
    for col in ("path", "label", "confidence", kind.detail_column.format(k=top_k)):
        table.add_column(col, overflow="fold")
    for p in preds:
        if p.skipped:
            table.add_row(escape(p.source), "[yellow]skipped[/]", "", escape(p.skipped))
        elif p.error:
            table.add_row(escape(p.source), "[red]error[/]", "", escape(p.error))
        else:
            table.add_row(escape(p.source), *p.cells())
    out.print(table)


def write_predictions(preds: Sequence[Prediction], path: Path) -> None:
    """The results as JSON (one object per entry) or CSV (one flat row per entry)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".json":
        path.write_text(json.dumps([p.to_dict() for p in preds], indent=2))
        return
    if path.suffix.lower() != ".csv":
        raise VisionlabError(f"--out {path}: unknown format.", "Use a .csv or .json file name.")
    import pandas as pd

    pd.DataFrame([_inert_row(p.csv_row()) for p in preds]).to_csv(path, index=False)
