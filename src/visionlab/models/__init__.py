"""The model zoo: one registry of small builder functions (timm / torchvision style).

Every builder takes ``num_classes`` and ``in_chans`` and returns an ``nn.Module``. Builders are
registered with :func:`register_model`, which also records the preprocessing that belongs to
the model (mean, std, input size, pretrained weights) so it can travel with every checkpoint,
and the keyword arguments that build it without any pretrained weights (used to count
parameters and in tests, never downloading anything).

Importing this package does not import torch; the built-in builders are registered on first use.
"""

from __future__ import annotations

import fnmatch
import inspect
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping

from visionlab.errors import VisionlabError

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

__all__ = [
    "register_model",
    "build_model",
    "list_models",
    "model_defaults",
    "no_weights_kwargs",
    "count_parameters",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "HALF",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HALF = (0.5, 0.5, 0.5)

Defaults = Callable[[dict[str, Any]], dict[str, Any]] | Mapping[str, Any]


@dataclass(frozen=True)
class _Entry:
    name: str
    fn: Callable[..., "nn.Module"]
    defaults: Defaults
    no_weights: dict[str, Any] = field(default_factory=dict)


_MODELS: dict[str, _Entry] = {}
_BUILTIN_MODULES = ("small_cnn", "backbones", "segmentation")
_loaded = False


def register_model(
    fn: Callable[..., "nn.Module"] | None = None,
    *,
    name: str | None = None,
    defaults: Defaults | None = None,
    no_weights: Mapping[str, Any] | None = None,
):
    """Register a builder under its function name (or ``name``); a duplicate name is refused.

    ``defaults`` is a dict, or a function of the builder's bound arguments, giving
    ``mean``, ``std``, ``input_size`` and ``pretrained``. ``no_weights`` holds the keyword
    arguments that switch pretrained weights off. Usable bare (``@register_model``) or with
    arguments (``@register_model(defaults=...)``).
    """

    def decorator(f: Callable[..., "nn.Module"]) -> Callable[..., "nn.Module"]:
        key = name or f.__name__
        if key in _MODELS:
            raise ValueError(f"model {key!r} is already registered")
        params = inspect.signature(f).parameters
        for required in ("num_classes", "in_chans"):
            if required not in params:
                raise ValueError(f"builder {key!r} must accept {required!r}")
        _MODELS[key] = _Entry(
            key, f, defaults if defaults is not None else {"mean": HALF, "std": HALF, "input_size": 224, "pretrained": None},
            dict(no_weights or {}),
        )
        return f

    return decorator(fn) if fn is not None else decorator


def _ensure_builtin() -> None:
    global _loaded
    if not _loaded:
        import importlib

        from visionlab.plugins import load_plugins

        for mod in _BUILTIN_MODULES:
            importlib.import_module(f"{__name__}.{mod}")
        _loaded = True
        load_plugins()  # a plugin may register models of its own


def list_models(pattern: str | None = None) -> list[str]:
    """Registered model names, sorted; ``pattern`` filters with shell wildcards (``'*cnn'``)."""
    _ensure_builtin()
    names = sorted(_MODELS)
    return [n for n in names if fnmatch.fnmatch(n, pattern)] if pattern else names


def _entry(name: str) -> _Entry:
    _ensure_builtin()
    try:
        return _MODELS[name]
    except KeyError:
        raise VisionlabError(f"unknown model {name!r}.", f"Known models: {', '.join(sorted(_MODELS))}.") from None


def _accepted(entry: _Entry) -> list[str]:
    return [p for p in inspect.signature(entry.fn).parameters if p != "num_classes"]


def _bind(entry: _Entry, num_classes: int | None, kwargs: dict[str, Any]) -> inspect.BoundArguments:
    sig = inspect.signature(entry.fn)
    has_var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values())
    unknown = [k for k in kwargs if k not in sig.parameters or k == "num_classes"]
    if unknown and not has_var_kw:
        raise VisionlabError(
            f"model {entry.name!r} does not accept {', '.join(map(repr, unknown))}.",
            f"Accepted arguments: {', '.join(_accepted(entry))}.",
        )
    bound = sig.bind_partial(**({"num_classes": num_classes} if num_classes is not None else {}), **kwargs)
    bound.apply_defaults()
    return bound


def build_model(name: str, num_classes: int, **kwargs: Any) -> "nn.Module":
    """Build a registered model with a ``num_classes``-way head (or ``num_classes`` mask channels).

    Unknown names and unknown keyword arguments fail with the list of valid ones. Pretrained
    weights, where the builder uses them, are loaded here and nowhere else.
    """
    entry = _entry(name)
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise VisionlabError(f"num_classes must be a positive integer, got {num_classes!r}.")
    bound = _bind(entry, num_classes, kwargs)
    return entry.fn(*bound.args, **bound.kwargs)


def model_defaults(name: str, **kwargs: Any) -> dict[str, Any]:
    """The preprocessing that belongs to a model built with ``kwargs``.

    Returns ``{"mean": [r, g, b], "std": [r, g, b], "input_size": int, "pretrained": str | None}``;
    ``pretrained`` names the weights the builder would load (``None`` for random init).
    """
    entry = _entry(name)
    bound = _bind(entry, None, kwargs)
    d = entry.defaults(dict(bound.arguments)) if callable(entry.defaults) else dict(entry.defaults)
    return {
        "mean": [float(v) for v in d["mean"]],
        "std": [float(v) for v in d["std"]],
        "input_size": int(d["input_size"]),
        "pretrained": None if d.get("pretrained") is None else str(d["pretrained"]),
    }


def no_weights_kwargs(name: str) -> dict[str, Any]:
    """Keyword arguments that build ``name`` with random init, downloading and reading nothing."""
    return dict(_entry(name).no_weights)


def count_parameters(task_name: str) -> int:
    """Parameters of a task's seed-faithful model with its default arguments (built with random
    init: nothing is downloaded)."""
    from visionlab.registry import get_task

    spec = get_task(task_name)
    name = spec.seed_model or spec.model
    model = build_model(name, len(spec.default_classes), **no_weights_kwargs(name))
    return sum(p.numel() for p in model.parameters())
