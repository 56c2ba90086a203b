"""``visionlab data suspects``'s output: a line per fold, the table of flagged photos, suspects.csv,
suspects.html (a thumbnail of each photo with its given and suggested label, in the report's
style) and the lines of a move to the quarantine and of its undo.
"""

from __future__ import annotations

import csv
import time
from pathlib import Path
from typing import Any, Sequence

from visionlab.present.evaluation import inert_row

__all__ = ["show_features", "show_fold", "show_suspects", "write_suspects", "render_suspects", "show_moved", "show_undone", "CSV_NAME", "HTML_NAME"]

CSV_NAME, HTML_NAME = "suspects.csv", "suspects.html"
#: Thumbnails on the page, and their longest side in px (the CSV lists every flagged photo).
MAX_CARDS, THUMB_SIDE = 500, 160
COLUMNS = ("path", "given_label", "suggested_label", "score", "given_probability", "suggested_probability")


def show_features(before: int, done: int, total: int, out: Any) -> None:
    """``--method features``' pass over the photos (a batch took it from ``before`` to ``done`` of
    ``total``): a line when it starts and each time it passes a tenth of the photos."""
    if before == 0:
        out.print(f"frozen features of the recipe's backbone: {total:,} photos and their mirror images, once")
    if done * 10 // total > before * 10 // total:
        out.print(f"frozen features: {done:,} of {total:,} photos ({done / total:.0%})")


def show_fold(done: Any, out: Any) -> None:
    """One fold's line: what it trained on, how long, and what it predicted."""
    if done.head:
        out.print(f"fold {done.fold}/{done.folds}: {done.head} of the other folds ({done.trained_on:,} photos) predicted the "
                  f"{done.held_out:,} held out")
        return
    out.print(f"fold {done.fold}/{done.folds}: {done.epochs} epoch(s) on the other folds ({done.trained_on:,} photos, "
              f"validation carved from them) and a prediction of the {done.held_out:,} held out in {done.seconds:.0f} s")


def show_suspects(result: Any, out: Any, moving: bool = False, rows: int = 20) -> None:
    """The most suspicious photos as a table, how the budget was spent and where the files went
    (``moving``: a move to the quarantine follows; else how to ask for one)."""
    from rich.table import Table

    n = len(result.suspects)
    out.print(f"{n:,} of {result.images:,} photos flagged as probably mislabelled ({result.seconds:.0f} s; {result.budget})")
    spent = sum(f.seconds for f in result.folds)
    if result.budget_seconds and spent > 1.1 * result.budget_seconds:
        out.print(f"the trainings took {spent / 60:.1f} min, over the budget of {result.budget_seconds / 60:g} min: an epoch is never "
                  "cut short, and each fold trained at least one; pass more --minutes, or fewer --folds")
    if result.unreadable:
        out.print(f"{len(result.unreadable)} unreadable photo(s) left out, e.g. {result.unreadable[0]}")
    if n:
        table = Table(title=f"{result.task}: most suspicious first" + (f" (top {rows} of {n:,})" if n > rows else ""))
        for col in ("photo", "given", "suggested", "score", "p(given)"):
            table.add_column(col, overflow="fold")
        for s in result.suspects[:rows]:
            table.add_row(s.path, s.label, s.suggested, f"{s.score:.3f}", f"{s.given_probability:.3f}")
        out.print(table)
    out.print(f"wrote to {result.out_dir}: " + ", ".join(p.name for p in result.files))
    if n and not moving:
        out.print("no photo was moved; to move the flagged ones into a quarantine folder: add --move-to DIR")


def write_suspects(result: Any, folder: Path) -> list[Path]:
    """suspects.csv (every flagged photo, most suspicious first) and suspects.html into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    csv_path, html_path = folder / CSV_NAME, folder / HTML_NAME
    with csv_path.open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows(inert_row(s.to_row()) for s in result.suspects)
    html_path.write_text(render_suspects(result), encoding="utf-8")
    return [csv_path, html_path]


def _thumbnail(path: str) -> str:
    """The photo as a small base64 JPEG ``<img>``, or a line saying it could not be read."""
    from visionlab.data.io import UnreadableImage, load_image
    from visionlab.kinds.base import image_base64
    from visionlab.report import esc

    try:
        image = load_image(path).convert("RGB")
    except UnreadableImage as exc:
        return f"<p class='missing'>not shown: {esc(str(exc))}</p>"
    image.thumbnail((THUMB_SIDE, THUMB_SIDE))
    return f"<figure><img src='data:image/jpeg;base64,{image_base64(image, 'JPEG', quality=85)}' alt='{esc(Path(path).name)}'></figure>"


def _card(s: Any) -> str:
    from visionlab.report import esc

    fields = {"given": s.label, "suggested": f"{s.suggested} ({s.suggested_probability:.0%})", "score": f"{s.score:.3f}",
              "p(given)": f"{s.given_probability:.3f}"}
    dl = "".join(f"<div><dt>{esc(k)}</dt><dd>{esc(v)}</dd></div>" for k, v in fields.items())
    return (f"<article class='example'><div class='figs'>{_thumbnail(s.path)}</div>"
            f"<p class='file' title='{esc(s.path)}'>{esc(Path(s.path).name)}</p><dl>{dl}</dl></article>")


def render_suspects(result: Any) -> str:
    """The HTML page: the facts, then a card per flagged photo (at most :data:`MAX_CARDS`)."""
    from visionlab._version import __version__
    from visionlab.report import _CSS, _section, esc

    n = len(result.suspects)
    facts = [("task", result.task), ("data", result.data), ("photos", f"{result.images:,}"), ("flagged", f"{n:,}"),
             ("folds", len(result.folds)), ("method", result.method)]
    head = ("<header><p class='eyebrow'>visionlab data suspects</p><h1>" + esc(f"{result.task}: labels probably wrong") + "</h1>"
            "<dl class='facts'>" + "".join(f"<div><dt>{esc(k)}</dt><dd>{esc(str(v))}</dd></div>" for k, v in facts) + "</dl></header>")
    note = ("<p class='note'>most suspicious first. score: cleanlab's label quality (self-confidence: the out-of-fold probability "
            "of the given label; 0 = surely wrong); suggested: the class the held-out model chose. Writing this page moved or deleted nothing."
            + (f" The first {MAX_CARDS} of {n:,} are shown; {CSV_NAME} lists all." if n > MAX_CARDS else "") + "</p>"
            + (f"<p class='note'>how: {esc(result.budget)}.</p>" if result.budget else ""))
    cards = "".join(_card(s) for s in result.suspects[:MAX_CARDS]) or "<p class='note'>no photo was flagged.</p>"
    made = time.strftime("%Y-%m-%d %H:%M")
    return (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><meta name='viewport' content='width=device-width, "
            f"initial-scale=1'><title>{esc(result.task)} suspects</title><style>{_CSS}</style></head><body><main>{head}"
            f"{_section('Photos whose label is probably wrong', note + '<div class=examples>' + cards + '</div>')}"
            f"<footer>made by visionlab {esc(__version__)} on {esc(made)}</footer></main></body></html>")


def show_moved(pairs: Sequence[tuple[str, str]], folder: Path, out: Any) -> None:
    """How many photos went to the quarantine, where the manifest is, and the command that undoes it."""
    from visionlab.data.quarantine import MANIFEST

    out.print(f"moved {len(pairs):,} flagged photo(s) into {folder} (class folders kept); manifest: {folder / MANIFEST}")
    out.print(f"undo with:  visionlab data suspects --undo {folder}")


def show_undone(pairs: Sequence[tuple[str, str]], folder: Path, out: Any) -> None:
    """How many photos went back to where they were."""
    out.print(f"moved {len(pairs):,} photo(s) from {folder} back to where they were")
