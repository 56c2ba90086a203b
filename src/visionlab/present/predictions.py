"""``predict``'s output: the table of predictions (and of skipped entries), its closing lines and
the predictions as CSV or JSON. The detail column is the one the kind names; each row's cells
come from the prediction itself (:meth:`visionlab.kinds.Prediction.cells`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from visionlab.errors import VisionlabError
from visionlab.kinds import Kind, Prediction
from visionlab.present.evaluation import inert_row

__all__ = ["check_output_file", "check_writable", "show_skipped", "show_predictions", "show_top_k_clipped", "show_closing",
           "write_predictions"]



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
            table.add_row(escape(p.source), *(escape(c) for c in p.cells()))  # class names are data, not markup
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

    pd.DataFrame([inert_row(p.csv_row()) for p in preds]).to_csv(path, index=False)


def show_top_k_clipped(asked: int, shown: int, out: Any) -> None:
    """The note that ``--top-k`` asked for more classes than the model has."""
    out.print(f"--top-k {asked} is more than the model's {shown} classes: all {shown} are shown.")


#: What a file column of the predictions holds, in words (a kind's own columns are named by their column).
_FILE_WORDS = {"mask": "masks", "overlay": "overlays", "confidence_map": "confidence maps", "explanation": "explanations (<image>_why.png)"}


def _files_in_words(columns: Sequence[str]) -> str:
    words = [_FILE_WORDS.get(c, c) for c in columns]
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def show_closing(preds: Sequence[Prediction], out_path: Path | None, mask_dir: Path | None, out: Any) -> None:
    """The closing line (how many were predicted, unreadable, skipped) and where files went."""
    errors = sum(1 for p in preds if p.error)
    skipped = sum(1 for p in preds if p.skipped)
    predicted = len(preds) - errors - skipped
    closing = [f"{predicted} predicted"]
    if errors:
        closing.append(f"[yellow]{errors} of {predicted + errors} image(s) could not be read[/]")
    if skipped:
        closing.append(f"[yellow]{skipped} skipped[/]")
    out.print(", ".join(closing) + (" (listed above)." if errors or skipped else "."))
    written = list(dict.fromkeys(k for p in preds for k in p.files))  # the file columns: mask, overlay, explanation
    if mask_dir is not None and written:
        out.print(f"{_files_in_words(written)} written to {mask_dir}")
    if out_path is not None:
        out.print(f"wrote {out_path}")
