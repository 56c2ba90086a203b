"""Typed training configuration: defaults <- configs/<task>.yaml <- --config FILE <- --set key=value.

:class:`Config` is the one place where every key, its default and its meaning are written; a
recipe (``configs/<task>.yaml``) lists only what it chooses, and the resolved config, complete, is
written into every run folder and saved in every checkpoint. An unknown key is an error that lists
the valid ones, values are coerced to the field's type and checked against the allowed choices.
A kind's own keys (segmentation's ``tile_size``, a classifier's ``mixup``, a plugin kind's) are
the fields of the options dataclass the kind declares (``Kind.options``), routed there by name;
one set on a task of another kind is refused. This module looks no task or kind up by name: the
caller passes them (:func:`visionlab.api.load_config`). No torch import here.
"""

from __future__ import annotations

import copy
import difflib
import math
import os
import types
import typing
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Iterable, Mapping, get_type_hints

import yaml

from visionlab.data.augment import Augment
from visionlab.errors import VisionlabError
from visionlab.kinds.base import KindOptions

__all__ = [
    "Config", "AUGMENT_DEFAULTS", "PRECISIONS", "RESUME_SAFE_KEYS", "TRACKER_NAMES", "setting", "resolve_config",
    "parse_overrides", "config_from_dict", "dump_config", "resume_config", "resume_differences", "check_resume", "clashing_keys",
]

# Experiment trackers the config key ``track`` may name (visionlab.engine.tracking implements them).
#: The numeric precisions of training (the config key) and of evaluate, predict and serve (--precision).
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
TRACKER_NAMES = ("tensorboard", "mlflow")

# The ``augment`` keys, their defaults and their meaning: visionlab.data.augment.Augment (one for both kinds).
AUGMENT_DEFAULTS: dict[str, Any] = Augment().as_config()


def setting(default: Any, doc: str, *, choices: tuple[str, ...] = (), resume_safe: bool = False,
            instead: Mapping[str, str] | None = None) -> Any:
    """One config key: a dataclass field of :class:`Config` or of a kind's options
    (:class:`~visionlab.kinds.base.KindOptions`), with its default and one-line meaning, written there and nowhere else.

    ``choices``: its allowed values; ``resume_safe``: a resumed run may change it; ``instead``: what
    a task of another kind uses in its place, keyed by that kind's name (``{"segmentation": "..."}``),
    said when the key is set on a task of that kind and on no other.
    """
    if instead is not None and not isinstance(instead, Mapping):
        raise TypeError(f"setting(instead=...) is keyed by the kind it advises, e.g. instead={{'segmentation': {instead!r}}}")
    meta = {"doc": doc, "choices": choices, "resume_safe": resume_safe, "instead": dict(instead or {})}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class Config:
    """All knobs of one training run, each with its default and meaning; recipes set only what they choose.

    The keys every kind reads are fields here; those of one kind of task (segmentation's
    ``tile_size``, a classifier's ``mixup``) are the fields of its :attr:`options`, the
    :class:`~visionlab.kinds.base.KindOptions` dataclass its kind declares. Recipes, resolved
    configs and checkpoints write both flat (:meth:`to_dict`).
    """

    # --- task and data
    task: str = setting("", "registered task name (set by load_config)")
    data: str = setting("synthetic", "dataset folder or CSV, or 'synthetic' for generated images")
    classes: list[str] | None = setting(None, "null = every class folder, sorted; or a list to choose and order them")
    val_fraction: float = setting(0.15, "held out for validation when the data has no val/ split (fixed seed; classes stratified; "
                                  "segmentation: whole images)")
    test_fraction: float = setting(0.15, "held out for testing when the data has no test/ split")
    seed: int = setting(42, "seed of the splits, initialisation and augmentation")
    # --- model and preprocessing
    model: str = setting("", "any name from visionlab.models.list_models() (default: the task's model)")
    model_args: dict = setting({}, "arguments of the model builder, e.g. {weights: imagenet}; reset when the model changes")
    image_size: int = setting(0, "images are decoded once and resized (squashed) to this size, px (default: the task's)")
    # --- optimisation
    epochs: int = setting(10, "training epochs", resume_safe=True)
    batch_size: int = setting(32, "images (segmentation: crops) per batch and process")
    lr: float = setting(1e-3, "peak learning rate")
    weight_decay: float = setting(0.05, "decoupled weight decay")
    optimizer: str = setting("adamw", "adamw | sgd", choices=("adamw", "sgd"))
    schedule: str = setting("cosine", "cosine (after linear warmup) | onecycle | constant", choices=("cosine", "onecycle", "constant"))
    warmup_epochs: float = setting(1.0, "epochs of linear learning-rate warmup")
    cutmix: float = setting(0.0, "Beta(alpha, alpha) of CutMix (0 = off; segmentation pastes mask and image); with mixup, one per batch")
    class_weights: str = setting("none", "none | balanced: inverse class frequency in the loss (segmentation: pixel frequency, "
                                 "on the ce term)", choices=("none", "balanced"))
    sampler: str = setting("none", "none | balanced: oversample rare classes (segmentation: half the crops are centred on a "
                           "random class present)", choices=("none", "balanced"))
    grad_clip: float = setting(0.0, "clip the gradient norm to this (0 = off)")
    accumulate: int = setting(1, "gradient accumulation: one optimiser step every K batches (global batch = batch_size x processes x K)")
    backbone_lr_scale: float = setting(1.0, "lr of the pretrained body relative to lr (the new head always gets lr)")
    ema: float = setting(0.0, "decay of an exponential moving average of the weights (0 = off); evaluated and saved")
    tta: str = setting("none", "test-time augmentation: none | hflip | flips | d4 (saved with the weights; per tile for segmentation)",
                       choices=("none", "hflip", "flips", "d4"))
    early_stopping: int = setting(5, "epochs without improvement of 'monitor' before stopping (0 = off)", resume_safe=True)
    monitor: str = setting("", "metric that picks best.pt, e.g. val_accuracy (default: val_ plus the kind's primary metric)")
    max_steps_per_epoch: int = setting(0, "cap on the training steps of an epoch (0 = a full pass)")
    checkpoint_every_steps: int = setting(0, "also write last.pt every N optimiser steps, resumable mid-epoch (0 = epoch ends only)",
                                          resume_safe=True)
    checkpoint_every_minutes: float = setting(10.0, "... or every M minutes of training, so long epochs on big data resume "
                                              "mid-epoch (0 = off)", resume_safe=True)
    augment: dict = setting(AUGMENT_DEFAULTS, "training-batch augmentation, keys of AUGMENT_DEFAULTS (validation and test are never augmented)")
    options: KindOptions = field(default_factory=KindOptions, metadata={
        "doc": "the keys of the task's kind (its Kind.options), written flat beside these in recipes and resolved configs",
        "choices": (), "resume_safe": False, "instead": {}})
    # --- runtime
    device: str = setting("auto", "auto | cpu | cuda | cuda:N", resume_safe=True)
    precision: str = setting("auto", "auto (bf16 where the CPU/GPU has it) | fp32 | bf16 | fp16 (CUDA)",
                             choices=PRECISIONS)
    channels_last: bool = setting(True, "channels-last memory format for the model and batches")
    compile: bool = setting(False, "torch.compile the model", resume_safe=True)
    sync_batchnorm: bool = setting(False, "under torchrun on CUDA: batch-norm statistics over the global batch")
    cache: str = setting("auto", "decode cache: auto (RAM + reusable memory-mapped file) | memory | disk | none (stream)",
                         choices=("auto", "memory", "disk", "none"), resume_safe=True)
    cache_budget_mb: int = setting(4096, "the in-memory cache never holds more than this, MiB", resume_safe=True)
    num_workers: int = setting(-1, "data-loading worker processes (-1 = auto)", resume_safe=True)
    out: str = setting("runs", "runs go to <out>/<task>/<name>/ (on resume: only where to look for the run)", resume_safe=True)
    name: str | None = setting(None, "run folder name (default: a timestamp)")
    track: list[str] = setting([], "experiment trackers besides metrics.csv: tensorboard, mlflow (on resume: only where else "
                               "it is logged)", resume_safe=True)

    def to_dict(self) -> dict[str, Any]:
        """Every key, flat: the common ones in order, the kind's options where :attr:`options` stands."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            out.update(asdict(value) if f.name == "options" else {f.name: copy.deepcopy(value)})
        return out

    @property
    def is_synthetic(self) -> bool:
        return str(self.data).lower() == "synthetic"


# Keys a resumed run may change: how long and where it runs, not what it learns from or what it is.
RESUME_SAFE_KEYS = frozenset(f.name for f in fields(Config) if f.metadata["resume_safe"])


def _common() -> list[Any]:
    """The fields of :class:`Config` every kind reads (all but ``options``)."""
    return [f for f in fields(Config) if f.name != "options"]


def _field_default(f: Any) -> Any:
    return f.default_factory() if f.default is MISSING else f.default


def _option_fields(options: type[KindOptions]) -> dict[str, Any]:
    return {f.name: f for f in fields(options)}


def clashing_keys(options: type[KindOptions]) -> list[str]:
    """The keys of a kind's ``options`` that are also keys of :class:`Config`: written flat beside the
    common ones, such a key would shadow the common key (its checks, its meaning), so a kind may not declare one."""
    return sorted(set(_option_fields(options)) & {f.name for f in fields(Config)})


def _valid_keys(options: type[KindOptions]) -> list[str]:
    """The keys a task whose kind declares ``options`` reads: the common ones, then the kind's."""
    return [f.name for f in _common()] + list(_option_fields(options))


def _unknown_key(key: Any, where: str, options: type[KindOptions]) -> VisionlabError:
    valid = _valid_keys(options)
    close = difflib.get_close_matches(key, valid, n=1) if isinstance(key, str) else []
    hint = f"Did you mean {close[0]!r}? " if close else ""
    return VisionlabError(f"unknown config key {key!r} in {where}.", f"{hint}Valid keys: {', '.join(valid)}.")


def _foreign_key(key: str, value: Any, kind: Any, others: Iterable[Any], task: str, explicit: bool) -> bool:
    """Whether ``key`` belongs to another kind than ``kind`` (one of ``others``); False when none has it.

    Set on purpose (``explicit``: --set, a keyword of train) it is refused, at any value: a classifier
    has no tile_size to use, and a user who sets one made a mistake. In a file (a recipe, --config) one
    at its default there is dropped: the resolved configs of older versions held every kind's keys, at
    their defaults where unused; away from its default it is refused. The refusal says what a task of
    ``kind`` uses instead where the key's owner says so for that kind (``setting(instead=...)``)."""
    owners = [(k, _option_fields(k.options)[key]) for k in others if key in _option_fields(k.options)]
    at_default = any(value == _field_default(f) for _, f in owners)
    if not owners or (at_default and not explicit):
        return bool(owners)
    advice = next((f.metadata["instead"][kind.name] for _, f in owners if kind.name in f.metadata["instead"]), "")
    owner, f = owners[0]
    keep = "" if explicit else f" (or set it to {_field_default(f)!r})"
    raise VisionlabError(
        f"{key}={value!r} is a {owner.name} key; {task} is a {kind.name} task and does not use it.",
        f"Remove {key!r}{keep}{'; ' + advice if advice else ''}.",
    )


#: What a value of each field type must be, as the errors say it.
_EXPECTED = {bool: "true or false", int: "an integer", float: "a number", dict: "a mapping", list: "a list", str: "a string"}
#: What a value that means "none" is written as, where a field may be None (``max_side: int | None``).
_NONE_WORDS = ("none", "null", "~")


def _field_type(typ: Any) -> tuple[Any, bool]:
    """The type a field holds (``list`` for ``list[str]``) and whether it may be None: ``int | None``,
    ``Optional[int]`` and their string forms (``from __future__ import annotations``, resolved by
    :func:`typing.get_type_hints`) are ``(int, True)``."""
    nullable = False
    if typing.get_origin(typ) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(typ) if a is not type(None)]
        nullable = len(args) < len(typing.get_args(typ))
        typ = args[0] if len(args) == 1 else str
    return (typing.get_origin(typ) or typ), nullable


def _needs_value(key: str, where: str, typ: Any, default: Any) -> VisionlabError:
    """The error of a key given no value (``--set lr=``, ``lr:`` in a file), with an example where the default makes one."""
    example = ""
    if typ in (bool, int, float, str) and default not in (None, ""):
        text = str(default).lower() if isinstance(default, bool) else str(default)
        example = f", e.g. --set {key}={text}" if where == "--set" else f", e.g. {key}: {text}"
    return VisionlabError(f"config key {key!r} in {where} needs a value ({_EXPECTED.get(typ, 'a value')}){example}.",
                          "Give the value, or leave the key out for its default.")


def _coerce(key: str, value: Any, where: str, owner: type) -> Any:
    """``value`` in the type of the field ``key`` of ``owner`` (:class:`Config` or a kind's options);
    None (or none/null for a number or a bool) where the field may be None."""
    typ, nullable = _field_type(get_type_hints(owner)[key])

    def bad(expected: str) -> VisionlabError:
        return VisionlabError(f"config key {key!r} in {where} must be {expected}, got {value!r}.", "Fix the value.")

    if nullable and typ in (bool, int, float) and isinstance(value, str) and value.strip().lower() in _NONE_WORDS:
        value = None
    if value is None:
        if nullable:
            return None
        raise _needs_value(key, where, typ, _field_default(_option_fields(owner)[key]))
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise bad(_EXPECTED[bool])
    if typ is int:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise bad(_EXPECTED[int])
        try:
            f = float(value)
        except ValueError:
            raise bad(_EXPECTED[int]) from None
        if not math.isfinite(f) or f != int(f):
            raise bad(_EXPECTED[int])
        return int(f)
    if typ is float:
        return _number(value, bad)
    if typ is dict:
        if not isinstance(value, dict):
            raise bad(_EXPECTED[dict])
        return dict(value)
    if typ is list:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise bad(_EXPECTED[list])
        return [str(v) for v in value]
    # str (or a type no branch knows: kept as its text)
    if isinstance(value, (dict, list)):
        raise bad(_EXPECTED[str])
    return str(value)


def _number(value: Any, bad: Any) -> float:
    """A finite float of ``value`` (not a bool), else ``bad(expected)`` raised."""
    if isinstance(value, bool):
        raise bad(_EXPECTED[float])
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise bad(_EXPECTED[float]) from None
    if not math.isfinite(number):
        raise bad("a finite number")
    return number


def _coerce_augment(key: str, value: Any) -> Any:
    """An ``augment`` value in the type of its default: a bool, a number >= 0, or [min, max] for scale."""
    default = AUGMENT_DEFAULTS[key]

    def bad(expected: str) -> VisionlabError:
        return VisionlabError(f"augment key {key!r} must be {expected}, got {value!r}.", "Fix the value.")

    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        if isinstance(value, (int, str)) and str(value).lower() in ("true", "false", "yes", "no", "1", "0"):
            return str(value).lower() in ("true", "yes", "1")
        raise bad("true or false")
    if isinstance(default, list):  # scale: [min, max]; one number x means [x, 1]
        values = value if isinstance(value, (list, tuple)) else [value, 1.0]
        try:
            lo, hi = (float(v) for v in values)
        except (TypeError, ValueError):
            raise bad("[min, max] with 0 < min <= max") from None
        if isinstance(value, bool) or not 0 < lo <= hi:
            raise bad("[min, max] with 0 < min <= max")
        return [lo, hi]
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise bad("a number >= 0") from None
    if isinstance(value, bool) or not number >= 0:
        raise bad("a number >= 0")
    return number


def _check_choices(values: Any) -> None:
    """Every field of the dataclass ``values`` (the config, a kind's options) that lists choices holds one of them."""
    for f in fields(values):
        value, choices = getattr(values, f.name), f.metadata.get("choices", ())
        if choices and value not in choices:
            raise VisionlabError(f"config key {f.name!r} must be one of {', '.join(choices)}, got {value!r}.", "Fix the value.")


def _validate(cfg: Config) -> Config:
    """Choices, types of the augment keys and ranges, of the common keys and of the kind's options."""
    _check_choices(cfg)
    _check_choices(cfg.options)
    unknown_aug = sorted(str(k) for k in set(cfg.augment) - set(AUGMENT_DEFAULTS))
    if unknown_aug:
        raise VisionlabError(
            f"unknown augment key(s) {', '.join(unknown_aug)}.", f"Valid augment keys: {', '.join(AUGMENT_DEFAULTS)}."
        )
    not_names = [k for k in cfg.model_args if not (isinstance(k, str) and k.isidentifier())]
    if not_names:
        raise VisionlabError(f"model_args keys must be argument names of the model builder, got {not_names[0]!r}.", "Fix the key.")
    _check_in_chans(cfg.model, cfg.model_args)
    cfg.augment = {k: _coerce_augment(k, v) for k, v in {**AUGMENT_DEFAULTS, **cfg.augment}.items()}
    cfg.track = _trackers(cfg.track)
    checks = [
        (cfg.epochs >= 1, "epochs must be >= 1"),
        (cfg.batch_size >= 1, "batch_size must be >= 1"),
        (cfg.lr > 0, "lr must be > 0"),
        (0 <= cfg.val_fraction < 1 and 0 <= cfg.test_fraction < 1 and cfg.val_fraction + cfg.test_fraction < 1,
         "val_fraction and test_fraction must be in [0, 1) and sum to less than 1"),
        (16 <= cfg.image_size <= 4096, "image_size must be in 16..4096"),
        (0 < cfg.backbone_lr_scale <= 10, "backbone_lr_scale must be in (0, 10]"),
        (0 <= cfg.ema < 1, "ema must be in [0, 1) (0 = off; 0.99-0.9999 usual)"),
        (0 <= cfg.cutmix <= 10, "cutmix is a Beta alpha in [0, 10] (0 = off; 0.2-1 usual)"),
        (cfg.accumulate >= 1, "accumulate must be >= 1 (1 = a step per batch)"),
        (cfg.checkpoint_every_steps >= 0 and cfg.checkpoint_every_minutes >= 0,
         "checkpoint_every_steps and checkpoint_every_minutes must be >= 0 (0 = off)"),
        (0 <= cfg.seed < 2**32, "seed must be in [0, 2**32)"),
        (cfg.max_steps_per_epoch >= 0, "max_steps_per_epoch must be >= 0 (0 = a full pass)"),
        (cfg.early_stopping >= 0, "early_stopping must be >= 0 (0 = off)"),
        (min(cfg.weight_decay, cfg.grad_clip, cfg.warmup_epochs) >= 0, "weight_decay, grad_clip and warmup_epochs must be >= 0"),
        (cfg.num_workers >= -1 and cfg.cache_budget_mb >= 0, "num_workers must be >= -1 (-1 = auto) and cache_budget_mb >= 0"),
        *cfg.options.checks(),
    ]
    for ok, msg in checks:
        if not ok:
            raise VisionlabError(f"invalid config: {msg}.", "Fix the value in the config or --set.")
    _check_name(cfg.name)
    return cfg


def _check_in_chans(model: str, args: Mapping[str, Any]) -> None:
    """Every image visionlab decodes is RGB (grey and CMYK photos are converted): a model built for
    other than 3 input channels would fail on the first batch, with a shape error."""
    chans = args.get("in_chans", 3)
    if chans != 3:
        raise VisionlabError(f"model {model!r} with model_args.in_chans={chans!r} would take {chans}-channel input, "
                             "but visionlab feeds it RGB images (3 channels; grey photos are converted).",
                             "Leave in_chans out of model_args.")


def _check_name(name: str | None) -> None:
    """A run's ``name`` is one folder inside ``<out>/<task>/``: '../x', 'a/b' or an absolute path would put it elsewhere."""
    if not name:
        return  # the default: a timestamp
    if name in (".", "..") or any(c in name for c in "/\\\0"):
        raise VisionlabError(f"invalid config: name must be one folder name (no '/', '\\' or '..'), got {name!r}.",
                             "Runs go to <out>/<task>/<name>/: choose where with --out, and give --name a plain name.")


def _trackers(names: list[str]) -> list[str]:
    """``track`` in a canonical form: lower case, each tracker once, 'none' dropped."""
    out: list[str] = []
    for name in (str(n).strip().lower() for n in names):
        if name in ("", "none") or name in out:
            continue
        if name not in TRACKER_NAMES:
            close = difflib.get_close_matches(name, TRACKER_NAMES, n=1)
            hint = f"Did you mean {close[0]!r}? " if close else ""
            raise VisionlabError(f"unknown tracker {name!r} in track.", f"{hint}Use {', '.join(TRACKER_NAMES)} or none.")
        out.append(name)
    return out


# What yaml.safe_load raises on bad input: its own errors, and Python's from a tag or a timestamp it
# cannot build (``!!int x``, ``2001-02-30``) or from nesting deeper than the interpreter's stack.
_YAML_ERRORS = (yaml.YAMLError, ValueError, TypeError, AttributeError, RecursionError)


# More values than a config can need (every key, a class list of thousands): what a YAML alias bomb
# ("billion laughs": aliases that repeat aliases) expands to, which printing or copying would then build.
_MAX_VALUES = 100_000


def _safe_yaml(text: str, where: str) -> Any:
    """``yaml.safe_load(text)``, refused when its aliases repeat one another into more than
    :data:`_MAX_VALUES` values or make a value contain itself (PyYAML shares an aliased node, so the
    load is cheap, but a message, a copy or a checkpoint of it is exponential, or endless)."""
    data = yaml.safe_load(text)
    sizes: dict[int, int] = {}

    def count(node: Any, inside: frozenset[int]) -> int:
        if not isinstance(node, (list, dict)):
            return 1
        if id(node) in inside:
            raise VisionlabError(f"{where} holds a value that contains itself (a YAML alias to its own anchor).",
                                 "Write the value out.")
        if id(node) not in sizes:
            children = [*node.keys(), *node.values()] if isinstance(node, dict) else node
            total = 1
            for child in children:
                total += count(child, inside | {id(node)})
                if total > _MAX_VALUES:
                    break
            sizes[id(node)] = total
        if sizes[id(node)] > _MAX_VALUES:
            raise VisionlabError(f"{where} expands to more than {_MAX_VALUES} values (YAML aliases repeating one another).",
                                 "Write the values out; a config needs a few hundred at most.")
        return sizes[id(node)]

    count(data, frozenset())
    return data


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _read_yaml(path: Path) -> dict[str, Any]:
    p = Path(path).expanduser()
    if not p.exists():
        raise VisionlabError(f"config file {p} does not exist.", "Check the --config path.")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise VisionlabError(f"config file {p} cannot be read as text ({_first_line(exc)}).", "Pass a YAML file.") from None
    try:
        data = _safe_yaml(text, f"config file {p}") or {}
    except _YAML_ERRORS as exc:
        raise VisionlabError(f"config file {p} is not valid YAML ({_first_line(exc)}).", "Fix the syntax.") from None
    if not isinstance(data, dict):
        raise VisionlabError(f"config file {p} must be a mapping of key: value.", "See configs/<task>.yaml.")
    return data


def parse_overrides(items: Iterable[str] | Mapping[str, Any] | None) -> dict[str, Any]:
    """``["lr=0.01", "augment.hflip=false"]`` -> ``{"lr": 0.01, "augment": {"hflip": False}}``."""
    if not items:
        return {}
    if isinstance(items, Mapping):
        return dict(items)
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise VisionlabError(f"override {item!r} is not key=value.", "Use --set key=value, e.g. --set lr=0.001.")
        key, raw = item.split("=", 1)
        key = key.strip()
        try:
            value = _safe_yaml(raw, f"override {key}") if raw.strip() else None
        except _YAML_ERRORS:  # not YAML: the text itself
            value = raw
        if key in ("data", "name", "out", "model", "device") and value is not None:
            value = raw  # keep paths and names verbatim
        if "." in key:
            head, sub = key.split(".", 1)
            out.setdefault(head, {})
            if not isinstance(out[head], dict):
                raise VisionlabError(f"override {item!r} conflicts with {head}={out[head]!r}.", "Give one or the other.")
            out[head][sub] = value
        else:
            out[key] = value
    return out


def _merge(base: dict[str, Any], layer: Mapping[str, Any], where: str, kind: Any, others: Iterable[Any] = ()) -> dict[str, Any]:
    """Lay the keys of ``layer`` over the flat ``base``: each routed by name to the common keys or to
    the options of ``kind``; a key of one of the ``others`` kinds is refused, or dropped where a file
    holds it at its default there (:func:`_foreign_key`; ``where`` is '--set' for the explicit layer)."""
    owners = {**{f.name: Config for f in _common()}, **{name: kind.options for name in _option_fields(kind.options)}}
    if "model" in layer and layer["model"] != base.get("model"):
        base["model_args"] = {}  # another model: the previous model's arguments do not apply
    for key, value in layer.items():
        if key not in owners:
            if isinstance(key, str) and _foreign_key(key, value, kind, others, str(base.get("task", "")), where == "--set"):
                continue
            raise _unknown_key(key, where, kind.options)
        if key in ("augment", "model_args") and isinstance(value, Mapping) and isinstance(base.get(key), dict):
            base[key] = {**base[key], **value}
        else:
            base[key] = _coerce(key, value, where, owners[key])
    return base


def _build(values: Mapping[str, Any], options: type[KindOptions]) -> Config:
    """The :class:`Config` of the flat ``values`` (every key of the common ones and of ``options``), validated."""
    own = _option_fields(options)
    common = {k: v for k, v in values.items() if k not in own}
    return _validate(Config(**common, options=options(**{k: values[k] for k in own})))


def resolve_config(
    spec: Any,
    kind: Any,
    config: str | os.PathLike | None = None,
    overrides: Iterable[str] | Mapping[str, Any] | None = None,
    others: Iterable[Any] = (),
) -> Config:
    """Resolve the config of the task ``spec`` (its name, model, input_size, recipe_path) of ``kind``
    (whose ``options`` class holds its own keys): dataclass defaults, the task's recipe, a user file,
    overrides. A key of one of the ``others`` kinds is refused with what to use instead (dropped at its
    default there). The caller looks the task and the kinds up (:func:`visionlab.api.load_config`)."""
    others = [k for k in others if k.name != kind.name]
    values = Config(options=kind.options()).to_dict()
    values.update(task=spec.name, model=spec.model, image_size=spec.input_size)
    default = spec.recipe_path
    if default is not None:
        recipe = _read_yaml(default)
        if default.stem.split("-")[0] != spec.name:  # another task's recipe (tasks new --from T): its data's
            recipe.pop("classes", None)  # class picks are not this task's, whose classes are its folder's
        _merge(values, recipe, str(default), kind, others)
    if config is not None:
        _merge(values, _user_config(config, spec.name, "Pass the matching --task."), str(config), kind, others)
    _merge(values, parse_overrides(overrides), "--set", kind, others)
    values["task"] = spec.name
    return _build(values, kind.options)


def resume_differences(saved: Config, requested: Config) -> dict[str, tuple[Any, Any]]:
    """Keys whose value differs between a run's saved config and a requested one: {key: (saved, requested)}."""
    a, b = saved.to_dict(), requested.to_dict()
    diff = {k: (a[k], b[k]) for k in a if a[k] != b[k]}
    if "data" in diff and not saved.is_synthetic and not requested.is_synthetic:
        same = Path(str(a["data"])).expanduser().resolve() == Path(str(b["data"])).expanduser().resolve()
        if same:  # the same folder, spelt another way
            del diff["data"]
    return diff


def _user_config(config: str | os.PathLike, task: str, hint: str) -> dict[str, Any]:
    """A user's config file, refused when it names another task than the one it configures."""
    user = _read_yaml(Path(config))
    if "task" in user and user["task"] != task:
        raise VisionlabError(f"config file {config} is for task {user['task']!r}, not {task!r}.", hint)
    return user


def resume_config(
    saved: Mapping[str, Any] | Config,
    kind: Any,
    config: str | os.PathLike | None = None,
    overrides: Iterable[str] | Mapping[str, Any] | None = None,
    others: Iterable[Any] = (),
) -> tuple[Config, dict[str, tuple[Any, Any]]]:
    """The config a resumed run of ``kind`` continues with: the run's own resolved config, with only the
    resume-safe keys (:data:`RESUME_SAFE_KEYS`) changed by ``config``/``overrides``.

    A layer that would change anything else (data, model, image size, classes, lr, ...) is an
    error that names the differences; a key of one of the ``others`` kinds is judged as
    :func:`resolve_config` judges it. Returns the config and the keys it changed."""
    others = [k for k in others if k.name != kind.name]
    base = saved if isinstance(saved, Config) else config_from_dict(saved, kind.options)
    values = base.to_dict()
    if config is not None:
        _merge(values, _user_config(config, base.task, "A resumed run keeps its task: pass a config of that task, or none."),
               str(config), kind, others)
    _merge(values, parse_overrides(overrides), "--set", kind, others)
    values["task"] = base.task
    cfg = _build(values, kind.options)
    return cfg, check_resume(base, cfg)


def check_resume(saved: Config, cfg: Config) -> dict[str, tuple[Any, Any]]:
    """The resume-safe keys ``cfg`` changes from a run's ``saved`` config; any other change is an error."""
    changed = resume_differences(saved, cfg)
    safe = RESUME_SAFE_KEYS | {f.name for f in fields(saved.options) if f.metadata["resume_safe"]}
    unsafe = {k: v for k, v in changed.items() if k not in safe}
    if unsafe:
        what = "; ".join(f"{k}: run {a!r}, asked {b!r}" for k, (a, b) in unsafe.items())
        raise VisionlabError(
            f"cannot resume with a different {', '.join(unsafe)} ({what}).",
            f"Resume continues the run as it was (only {', '.join(sorted(safe - {'out'}))} may change); "
            "drop those options, or start a new run without --resume.",
        )
    return {k: v for k, v in changed.items() if k != "out"}


def config_from_dict(data: Mapping[str, Any], options: type[KindOptions]) -> Config:
    """Rebuild a Config saved flat in a run folder or a checkpoint, the kind's keys into ``options`` (the
    kind's :attr:`~visionlab.kinds.base.Kind.options`); keys neither knows (other versions', other kinds'
    keys that older versions saved in every config) are dropped."""
    own = _option_fields(options)
    common = {f.name for f in _common()}
    return Config(**{k: v for k, v in data.items() if k in common},
                  options=options(**{k: v for k, v in data.items() if k in own}))


def dump_config(cfg: Config, path: str | os.PathLike) -> None:
    """The resolved config, flat, as YAML (a valid --config of its task)."""
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))

