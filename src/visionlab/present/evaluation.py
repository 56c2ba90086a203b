"""``evaluate``'s output: its tables in the terminal and its files.

The tables (summary metrics, per-class scores with the columns the kind lists, the confusion
matrix) and the files: metrics.json, the confusion matrix as CSV and PNG, predictions.csv and
the example thumbnails. Every CSV cell passes through :func:`inert_text`.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from visionlab.kinds import EvaluationReport, get_kind

__all__ = ["show_evaluation", "show_tables", "show_written", "show_evaluating_first", "write_evaluation", "write_examples",
           "write_confusion_csv", "inert_text", "inert_row"]


def show_evaluation(report: EvaluationReport, out: Any) -> None:
    """The evaluation's tables: summary metrics, per-class scores, confusion matrix."""
    title = f"{report.task} | {report.split} split of {report.data} | {report.images} images" + (
        " | SYNTHETIC DATA" if report.synthetic else "")
    show_tables(report.detail, report.classes, out, title=title, columns=get_kind(report.kind).per_class_columns)
    u = report.detail.get("unknown")
    if u:  # what the unknown detector did on these known photos; the accuracy above is of all of them
        on = f", accuracy on those {u['accuracy_accepted']:.4f}" if u.get("accuracy_accepted") is not None else ""
        out.print(f"unknown detector: threshold {u['threshold']:.4f} accepts {u['accepted']} of {u['images']} known photos "
                  f"({u['known_accepted']:.1%}){on}; the rest would be answered 'unknown' (--unknown off: never)",
                  markup=False, highlight=False)


def show_written(folder: Path, written: Sequence[str], out: Any) -> None:
    """The line that says where the evaluation's files went, and which."""
    out.print(f"wrote to {folder}: " + ", ".join(written))


def show_evaluating_first(run: Path, checkpoint: Path, out: Any) -> None:
    """The line of ``visionlab report`` on a run that has no evaluation yet."""
    out.print(f"{run} has no evaluation yet: evaluating {checkpoint.name} on its test split first")


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else ""
    if isinstance(value, (int, np.integer)):
        return f"{int(value):,}"
    if isinstance(value, (float, np.floating)):
        return "-" if not math.isfinite(value) else f"{value:.{digits}f}"
    return str(value)


def show_tables(
    report: dict[str, Any],
    class_names: Sequence[str] | None = None,
    console: Any = None,
    title: str = "Evaluation",
    columns: Sequence[str] | None = None,
) -> None:
    """A meter's report as rich tables: summary metrics, per-class scores, confusion matrix.

    ``columns`` are the per-class columns, in order (default: those the report's kind lists)."""
    from rich.table import Table

    from visionlab.present import console as default_console

    console = default_console(console)
    from rich.markup import escape

    # class names are the data's folder names: shown as written, never read as rich markup ('[x]')
    names = [escape(str(n)) for n in (class_names if class_names is not None else report["class_names"])]
    primary = report.get("primary")

    summary = Table(title=f"{title}: summary", show_header=True, header_style="bold")
    summary.add_column("metric")
    summary.add_column("value", justify="right")
    for key, value in report["metrics"].items():
        label = f"[bold]{key}[/bold]" if key == primary else key
        summary.add_row(label, _fmt(value))
    count_key = "num_samples" if "num_samples" in report else "num_pixels"
    if count_key in report:
        summary.add_row(count_key.replace("num_", ""), _fmt(report[count_key]))
    console.print(summary)

    per_class = report.get("per_class", {})
    if per_class:
        columns = get_kind(report["kind"]).per_class_columns if columns is None else columns
        table = Table(title=f"{title}: per class", header_style="bold")
        table.add_column("class")
        for col in columns:
            table.add_column(col, justify="right")
        for name, stats in zip(names, per_class.values()):
            suffix = " (excluded)" if stats.get("excluded") else ""
            table.add_row(name + suffix, *(_fmt(stats.get(col)) for col in columns))
        console.print(table)

    cm = report.get("confusion_matrix")
    if cm:
        table = Table(title=f"{title}: confusion matrix (rows = true, columns = predicted)", header_style="bold")
        table.add_column("true \\ pred")
        for name in names:
            table.add_column(name, justify="right")
        for i, (name, row) in enumerate(zip(names, cm)):
            cells = [f"[green]{_fmt(v)}[/green]" if j == i else _fmt(v) for j, v in enumerate(row)]
            table.add_row(name, *cells)
        console.print(table)


#: How a text cell starts that a spreadsheet runs as a formula (CSV injection).
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def inert_text(value: Any) -> Any:
    """``value`` with a leading ``'`` when it is text a spreadsheet would run as a formula (a file
    or a class named ``=HYPERLINK(...)``), anything else as it is: every CSV visionlab writes
    passes its cells through it (the JSON outputs keep the names exactly)."""
    return "'" + value if isinstance(value, str) and value.startswith(_FORMULA_START) else value


def write_confusion_csv(cm: Any, class_names: Sequence[str], path: str | os.PathLike) -> Path:
    """Write a confusion matrix as CSV (rows = true, columns = predicted); returns the path."""
    import pandas as pd

    arr = np.asarray(cm)
    names = [inert_text(str(n)) for n in class_names]
    if arr.shape != (len(names), len(names)):
        raise ValueError(f"confusion matrix shape {arr.shape} does not match {len(names)} class names")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame(arr, index=pd.Index(names, name="true"), columns=names)
    frame.to_csv(path)
    return path


def inert_row(row: dict[str, Any]) -> dict[str, Any]:
    """A CSV row whose text cells no spreadsheet runs as formulas (:func:`inert_text`)."""
    return {k: inert_text(v) for k, v in row.items()}


def write_evaluation(report: EvaluationReport, folder: Path) -> list[str]:
    """metrics.json, the confusion matrix (CSV and PNG), the reliability diagram (PNG, when the kind
    measures calibration), predictions.csv (one row per image, in the runner's order: the images
    worth a look first) and examples/; returns what was written, in words."""
    from visionlab.engine.plots import save_confusion_matrix, save_reliability_diagram

    folder.mkdir(parents=True, exist_ok=True)
    data = report.to_dict()
    (folder / "metrics.json").write_text(json.dumps(data, indent=2, default=float))
    written = ["metrics.json"]
    cm = data.get("confusion_matrix") or []
    if len(cm):
        write_confusion_csv(cm, report.classes, folder / "confusion_matrix.csv")
        save_confusion_matrix(cm, report.classes, folder / "confusion_matrix.png")
        written.append("confusion_matrix.csv/png")
    if data.get("reliability"):
        save_reliability_diagram(data["reliability"], folder / "reliability.png", _reliability_titles(data))
        written.append("reliability.png")
    if report.files:
        import pandas as pd

        kind = get_kind(report.kind)
        pd.DataFrame([inert_row(kind.flat_row(r)) for r in report.files]).to_csv(folder / "predictions.csv", index=False)
        written.append(f"predictions.csv ({report.files_note})" if report.files_note else "predictions.csv")
    if report.examples is not None:  # also when there is none (no mistakes): examples.json says so
        write_examples(report.examples, folder / "examples")
        n = len(report.examples)
        written.append(f"examples/ ({n} image{'' if n == 1 else 's'} worth a look)")
    return written


def _reliability_titles(data: dict[str, Any]) -> dict[str, str]:
    """The reliability diagram's panel titles: what was scored, and its ECE."""
    metrics, cal = data.get("metrics", {}), data.get("calibration") or {}
    after = f"temperature {cal['temperature']:.3f}" if cal.get("applied") else "no temperature applied (raw softmax)"
    titles = {"before": "before: raw softmax", "after": f"after: {after}"}
    for name, key in (("before", "ece_before"), ("after", "ece")):
        if isinstance(metrics.get(key), float):
            titles[name] += f", ECE {metrics[key]:.3f}"
    return titles


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
