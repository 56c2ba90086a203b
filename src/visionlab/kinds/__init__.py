"""The task-kind registry: ``classification``, ``segmentation`` and any kind a plugin registers.

A kind (:class:`~visionlab.kinds.base.Kind`) owns everything that differs between kinds; code
outside the kinds' own modules asks it and never compares kind names. The built-in kinds are
packages (``visionlab.kinds.<kind>``), each holding everything its kind is; they are imported by
module path on first lookup (their ``KIND``), so importing this module stays torch-free and cheap.
Registering a name twice is refused; an unknown name fails with the list of known ones.
Which kind a dataset folder is (:func:`guess_kind`) and the data doctor's check of one
(:func:`check_dataset`) ask the registered kinds, so they live here, not in :mod:`visionlab.data.doctor`.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from visionlab.errors import VisionlabError
from visionlab.kinds.base import EvaluationReport, Kind, KindOptions, LoadedModel, Output, Prediction
from visionlab.plugins import ENV_VAR, load_plugins

if TYPE_CHECKING:
    from visionlab.data.doctor import Report

__all__ = ["Kind", "KindOptions", "LoadedModel", "Output", "Prediction", "EvaluationReport", "register_kind", "get_kind", "kind_names", "runner_for",
           "guess_kind", "check_dataset"]

#: Built-in kinds: name -> the package whose ``KIND`` it is (imported on first lookup).
_BUILTIN = {"classification": "visionlab.kinds.classification", "segmentation": "visionlab.kinds.segmentation"}
_KINDS: dict[str, Kind] = {}


def register_kind(kind: Kind) -> Kind:
    """Add a kind (an instance of a :class:`Kind` subclass); a duplicate name is an error, and so is
    an option of its (:attr:`Kind.options`) named as a common config key (``lr``): written flat
    beside that key in recipes and configs, it would shadow it."""
    from visionlab.config import clashing_keys

    if not kind.name:
        raise ValueError(f"{type(kind).__name__} has no name")
    if kind.name in _KINDS or kind.name in _BUILTIN:
        raise ValueError(f"task kind {kind.name!r} is already registered")
    clash = clashing_keys(kind.options)
    if clash:
        raise VisionlabError(f"task kind {kind.name!r} declares the option(s) {', '.join(clash)} of "
                             f"{type(kind).__name__}.options, which are common config keys.",
                             "Rename them: a kind's keys sit flat beside the common ones and may not share their names.")
    _KINDS[kind.name] = kind
    return kind


def get_kind(name: str) -> Kind:
    """The kind called ``name``; an unknown name fails with the known ones."""
    if name not in _KINDS and name in _BUILTIN:
        _KINDS[name] = importlib.import_module(_BUILTIN[name]).KIND
    if name not in _KINDS:
        load_plugins()
    try:
        return _KINDS[name]
    except KeyError:
        raise VisionlabError(f"unknown task kind {name!r}.", f"Known kinds: {', '.join(kind_names())}. A plugin's kind is known once "
                             f"its plugin is installed or named ({ENV_VAR}=module).") from None


def kind_names() -> list[str]:
    """The built-in kinds, then those registered by plugins."""
    load_plugins()
    return list(_BUILTIN) + [k for k in _KINDS if k not in _BUILTIN]


def runner_for(cfg: Any, spec: Any, device: Any) -> Any:
    """The runner (:class:`visionlab.engine.runner.TaskRunner`) of one run of task ``spec``."""
    return get_kind(spec.kind).runner(cfg, spec, device)


def guess_kind(path: str | os.PathLike) -> str:
    """The name of the kind whose layout ``path`` has: each registered kind is asked
    (:meth:`visionlab.kinds.Kind.recognizes`), those registered last (plugins) first, so the
    most specific layout wins over the built-in fallback of class folders."""
    p = Path(path).expanduser()
    names = kind_names()
    return next((n for n in reversed(names) if get_kind(n).recognizes(p)), names[0])


def check_dataset(path: str | os.PathLike, kind: str | None = None, classes: list[str] | None = None, **options: Any) -> Report:
    """Inspect a dataset folder (or CSV) and return the data doctor's
    :class:`~visionlab.data.doctor.Report`; nothing is modified.

    ``kind`` (a task kind's name) is guessed when None (see :func:`guess_kind`); the kind runs
    its checks (:meth:`visionlab.kinds.Kind.check_data`). ``classes`` restricts a classification
    dataset to those class folders, as the config's ``classes`` does. The ``options`` are those of
    :func:`visionlab.data.doctor.check_files` and the kind's checks.
    """
    return get_kind(kind or guess_kind(path)).check_data(path, classes=classes, **options)
