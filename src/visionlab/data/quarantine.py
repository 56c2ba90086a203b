"""A quarantine for photos whose label is in doubt: moved into ``DIR/<given label>/<file>`` with a
manifest (``DIR/moved.csv``: source, moved_to, given_label), and moved back by that manifest.

Both refuse, before moving anything, what would overwrite a file; nothing is ever deleted.
Torch-free; used by ``visionlab data suspects --move-to`` and ``--undo``.
"""

from __future__ import annotations

import csv
import os
import shutil
from pathlib import Path
from typing import Sequence

from visionlab.errors import VisionlabError

__all__ = ["MANIFEST", "check_move_target", "move_files", "undo_move"]

#: The manifest a move writes into its folder (what was moved from where), read by the undo.
MANIFEST = "moved.csv"


def check_move_target(dest: Path, data_root: Path) -> None:
    """``dest`` can take a move: a folder (or nothing yet) outside the dataset (its class folders
    would be read as classes) holding no earlier manifest; else one line."""
    dest, root = Path(dest).expanduser().resolve(), Path(data_root).expanduser().resolve()
    root_dir = root if root.is_dir() else root.parent
    if dest.is_relative_to(root_dir):
        raise VisionlabError(f"--move-to {dest} is inside the dataset folder {root_dir}; its class folders would be read as data.",
                             "Pass a folder outside the dataset, e.g. beside it.")
    if dest.exists() and not dest.is_dir():
        raise VisionlabError(f"--move-to {dest} is a file.", "Pass a folder.")
    if (dest / MANIFEST).exists():
        raise VisionlabError(f"{dest} already holds the {MANIFEST} of an earlier move.",
                             f"Undo it first (visionlab data suspects --undo {dest}) or pass another folder.")


def move_files(items: Sequence[tuple[str, str]], dest: Path) -> list[tuple[str, str]]:
    """Move each (photo, given label) to ``dest/<label>/<file name>`` and write the manifest first.
    Refuses, before moving anything, a target that exists or that two photos would share.
    Returns the (source, target) pairs."""
    dest = Path(dest).expanduser().resolve()
    pairs = [(os.path.abspath(src), str(dest / label / Path(src).name)) for src, label in items]
    targets = [t for _, t in pairs]
    clash = next((t for t in targets if os.path.lexists(t) or targets.count(t) > 1), None)
    if clash is not None:
        raise VisionlabError(f"nothing was moved: {clash} exists already, or two flagged photos share that name.",
                             "Pass another --move-to folder, or rename the photos.")
    dest.mkdir(parents=True, exist_ok=True)
    with (dest / MANIFEST).open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["source", "moved_to", "given_label"])
        w.writerows((src, dst, label) for (src, dst), (_, label) in zip(pairs, items))
    for src, dst in pairs:
        Path(dst).parent.mkdir(parents=True, exist_ok=True)
        shutil.move(src, dst)
    return pairs


def undo_move(folder: Path) -> list[tuple[str, str]]:
    """Move the photos listed in ``folder/moved.csv`` back where they were, then remove the manifest
    and the class folders the move made that are now empty. Refuses, before moving anything, when a
    photo is gone from the quarantine or its old place is taken. Returns the (quarantined, restored) pairs."""
    folder = Path(folder).expanduser()
    manifest = folder / MANIFEST
    if not manifest.is_file():
        raise VisionlabError(f"{folder} holds no {MANIFEST}; nothing to undo.", "Pass the folder that was given to --move-to.")
    with manifest.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if rows and not {"source", "moved_to"} <= set(rows[0]):
        raise VisionlabError(f"{manifest} is damaged (no source and moved_to columns).", "Move the photos back by hand.")
    gone = next((r["moved_to"] for r in rows if not os.path.lexists(r["moved_to"])), None)
    taken = next((r["source"] for r in rows if os.path.lexists(r["source"])), None)
    if gone or taken:
        what = f"{gone} is no longer in the quarantine" if gone else f"{taken} exists again"
        raise VisionlabError(f"nothing was moved back: {what}.", "Settle that file by hand, then run the undo again.")
    for r in rows:
        Path(r["source"]).parent.mkdir(parents=True, exist_ok=True)
        shutil.move(r["moved_to"], r["source"])
    manifest.unlink()
    for d in sorted({Path(r["moved_to"]).parent for r in rows}):
        if d.is_dir() and not any(d.iterdir()):
            d.rmdir()
    return [(r["moved_to"], r["source"]) for r in rows]
