"""The task-kind registry: ``classification``, ``segmentation`` and any kind a plugin registers.

A kind (:class:`~visionlab.kinds.base.Kind`) owns everything that differs between kinds; code
outside the kinds' own modules asks it and never compares kind names. The built-in kinds are
packages (``visionlab.kinds.<kind>``), each holding everything its kind is; they are imported by
module path on first lookup (their ``KIND``), so importing this module stays torch-free and cheap.
Registering a name twice is refused; an unknown name fails with the list of known ones.
"""

from __future__ import annotations

import importlib
from typing import Any

from visionlab.errors import VisionlabError
from visionlab.kinds.base import EvaluationReport, Kind, KindOptions, Output, Prediction
from visionlab.plugins import load_plugins

__all__ = ["Kind", "KindOptions", "Output", "Prediction", "EvaluationReport", "register_kind", "get_kind", "kind_names", "runner_for"]

#: Built-in kinds: name -> the package whose ``KIND`` it is (imported on first lookup).
_BUILTIN = {"classification": "visionlab.kinds.classification", "segmentation": "visionlab.kinds.segmentation"}
_KINDS: dict[str, Kind] = {}


def register_kind(kind: Kind) -> Kind:
    """Add a kind (an instance of a :class:`Kind` subclass); a duplicate name is an error."""
    if not kind.name:
        raise ValueError(f"{type(kind).__name__} has no name")
    if kind.name in _KINDS or kind.name in _BUILTIN:
        raise ValueError(f"task kind {kind.name!r} is already registered")
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
        raise VisionlabError(f"unknown task kind {name!r}.", f"Known kinds: {', '.join(kind_names())}.") from None


def kind_names() -> list[str]:
    """The built-in kinds, then those registered by plugins."""
    load_plugins()
    return list(_BUILTIN) + [k for k in _KINDS if k not in _BUILTIN]


def runner_for(cfg: Any, spec: Any, device: Any) -> Any:
    """The runner (:class:`visionlab.engine.runner.TaskRunner`) of one run of task ``spec``."""
    return get_kind(spec.kind).runner(cfg, spec, device)
