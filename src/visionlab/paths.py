"""Where visionlab keeps things on disk (no torch import)."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cache_home", "packaged_configs", "tasks_home"]


def cache_home() -> Path:
    """``$VISIONLAB_CACHE``, else ``$XDG_CACHE_HOME/visionlab``, else ``~/.cache/visionlab``.

    Holds the decoded-image cache (``images/``), synthetic datasets (``synthetic/``) and, unless
    ``$VISIONLAB_DATA`` says otherwise, downloaded datasets (``data/``).
    """
    env = os.environ.get("VISIONLAB_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "visionlab"


def tasks_home() -> Path:
    """``$VISIONLAB_TASKS``, else ``$XDG_CONFIG_HOME/visionlab/tasks``, else ``~/.config/visionlab/tasks``.

    Holds the user's task YAMLs (one ``<name>.yaml`` per task, as ``visionlab tasks new`` writes
    them), registered after the built-in tasks; the folder need not exist.
    """
    env = os.environ.get("VISIONLAB_TASKS")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CONFIG_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".config") / "visionlab" / "tasks"


def packaged_configs() -> Path | None:
    """The ``configs/`` folder shipped with visionlab (in the wheel, or in the source checkout), if any:
    the recipes, ``tasks/`` (the built-in tasks) and ``datasets/`` (the seed datasets)."""
    here = Path(__file__).resolve().parent
    return next((cand for cand in (here / "configs", here.parents[1] / "configs") if cand.is_dir()), None)

