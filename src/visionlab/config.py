"""Typed training configuration: defaults <- configs/<task>.yaml <- --config FILE <- --set key=value.

Every key is a field of :class:`Config`; an unknown key is an error that lists the valid ones,
values are coerced to the field's type and checked against the allowed choices. The resolved
config is written into every run folder and saved in every checkpoint. No torch import here.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Iterable, Mapping, get_type_hints

import yaml

from visionlab.data.augment import Augment
from visionlab.errors import VisionlabError

__all__ = [
    "Config", "AUGMENT_DEFAULTS", "RESUME_SAFE_KEYS", "TRACKER_NAMES", "load_config", "config_path", "parse_overrides", "config_from_dict",
    "dump_config", "resume_config", "resume_differences", "check_resume",
]

# Keys a resumed run may change: how long and where it runs, not what it learns from or what it is.
# ``out`` only says where to look for the run; ``track`` only where else it is logged.
RESUME_SAFE_KEYS = frozenset({
    "epochs", "early_stopping", "device", "num_workers", "cache", "cache_budget_mb", "compile",
    "checkpoint_every_steps", "checkpoint_every_minutes", "out", "track",
})

# Experiment trackers the config key ``track`` may name (visionlab.engine.tracking implements them).
TRACKER_NAMES = ("tensorboard", "mlflow")

# The ``augment`` keys, their defaults and their meaning: visionlab.data.augment.Augment (one for both kinds).
AUGMENT_DEFAULTS: dict[str, Any] = Augment().as_config()

_CHOICES = {
    "optimizer": ("adamw", "sgd"),
    "schedule": ("cosine", "onecycle", "constant"),
    "precision": ("auto", "fp32", "bf16", "fp16"),
    "cache": ("auto", "memory", "disk", "none"),
    "class_weights": ("none", "balanced"),
    "sampler": ("none", "balanced"),
    "loss": ("ce", "focal", "focal+dice", "ce+dice", "focal+lovasz", "ce+lovasz"),
    "tta": ("none", "hflip", "flips", "d4"),
}


@dataclass
class Config:
    """All knobs of one training run. ``configs/<task>.yaml`` documents each key."""

    task: str = ""
    # data
    data: str = "synthetic"
    classes: list[str] | None = None
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    seed: int = 42
    # model and preprocessing
    model: str = ""
    model_args: dict = field(default_factory=dict)
    image_size: int = 0
    background_removal: bool = False
    # optimisation
    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.05
    optimizer: str = "adamw"
    schedule: str = "cosine"
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.0
    mixup: float = 0.0  # Beta(alpha, alpha) of mixup between pairs of training images (0 = off; classifiers only)
    cutmix: float = 0.0  # Beta(alpha, alpha) of CutMix (0 = off; segmentation pastes mask and image); with mixup, one per batch
    class_weights: str = "none"
    sampler: str = "none"
    grad_clip: float = 0.0
    accumulate: int = 1  # gradient accumulation: one optimiser step every K batches (global batch = batch_size x processes x K)
    backbone_lr_scale: float = 1.0  # lr of the pretrained body relative to lr (the new head always gets lr)
    ema: float = 0.0  # decay of an exponential moving average of the weights (0 = off); evaluated and saved
    tta: str = "none"  # test-time augmentation: none | hflip | flips | d4 (saved with the weights; per tile for segmentation)
    early_stopping: int = 5
    monitor: str = ""
    max_steps_per_epoch: int = 0
    checkpoint_every_steps: int = 0  # also write last.pt every N optimiser steps, resumable mid-epoch (0 = epoch ends only)
    checkpoint_every_minutes: float = 0.0  # ... or every M minutes of training (0 = off)
    augment: dict = field(default_factory=lambda: dict(AUGMENT_DEFAULTS))
    # segmentation
    loss: str = "ce"
    focal_gamma: float = 2.0
    tile_size: int = 256
    tile_overlap: float = 0.25
    crops_per_image: int = 16
    seg_scale: float = 1.0
    ignore_classes: list[str] = field(default_factory=list)
    # runtime
    device: str = "auto"
    precision: str = "auto"
    channels_last: bool = True
    compile: bool = False
    sync_batchnorm: bool = False  # under torchrun on CUDA: batch-norm statistics over the global batch
    cache: str = "auto"
    cache_budget_mb: int = 4096
    num_workers: int = -1
    out: str = "runs"
    name: str | None = None
    track: list[str] = field(default_factory=list)  # experiment trackers besides metrics.csv: tensorboard, mlflow

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def is_synthetic(self) -> bool:
        return str(self.data).lower() == "synthetic"


def _valid_keys() -> list[str]:
    return [f.name for f in fields(Config)]


def _unknown_key(key: str, where: str) -> VisionlabError:
    valid = _valid_keys()
    close = difflib.get_close_matches(key, valid, n=1)
    hint = f"Did you mean {close[0]!r}? " if close else ""
    return VisionlabError(f"unknown config key {key!r} in {where}.", f"{hint}Valid keys: {', '.join(valid)}.")


def _coerce(key: str, value: Any, where: str) -> Any:
    hints = get_type_hints(Config)
    typ = hints[key]

    def bad(expected: str) -> VisionlabError:
        return VisionlabError(f"config key {key!r} in {where} must be {expected}, got {value!r}.", "Fix the value.")

    if value is None:
        if "None" in str(typ):
            return None
        raise bad(str(typ).replace("typing.", ""))
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise bad("true or false")
    if typ is int:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise bad("an integer")
        try:
            f = float(value)
        except ValueError:
            raise bad("an integer") from None
        if f != int(f):
            raise bad("an integer")
        return int(f)
    if typ is float:
        if isinstance(value, bool):
            raise bad("a number")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise bad("a number") from None
    if typ is dict:
        if not isinstance(value, dict):
            raise bad("a mapping")
        return dict(value)
    if "list" in str(typ):
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise bad("a list")
        return [str(v) for v in value]
    # str or str | None
    if isinstance(value, (dict, list)):
        raise bad("a string")
    return str(value)


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


def _validate(cfg: Config) -> Config:
    for key, choices in _CHOICES.items():
        if getattr(cfg, key) not in choices:
            raise VisionlabError(f"config key {key!r} must be one of {', '.join(choices)}, got {getattr(cfg, key)!r}.", "Fix the value.")
    unknown_aug = sorted(set(cfg.augment) - set(AUGMENT_DEFAULTS))
    if unknown_aug:
        raise VisionlabError(
            f"unknown augment key(s) {', '.join(unknown_aug)}.", f"Valid augment keys: {', '.join(AUGMENT_DEFAULTS)}."
        )
    cfg.augment = {k: _coerce_augment(k, v) for k, v in {**AUGMENT_DEFAULTS, **cfg.augment}.items()}
    cfg.track = _trackers(cfg.track)
    checks = [
        (cfg.epochs >= 1, "epochs must be >= 1"),
        (cfg.batch_size >= 1, "batch_size must be >= 1"),
        (cfg.lr > 0, "lr must be > 0"),
        (0 <= cfg.val_fraction < 1 and 0 <= cfg.test_fraction < 1 and cfg.val_fraction + cfg.test_fraction < 1,
         "val_fraction and test_fraction must be in [0, 1) and sum to less than 1"),
        (cfg.image_size >= 16, "image_size must be >= 16"),
        (0 <= cfg.tile_overlap < 0.9, "tile_overlap must be in [0, 0.9)"),
        (cfg.tile_size >= 32 and cfg.tile_size % 32 == 0, "tile_size must be a multiple of 32 (U-Net downsamples 5 times)"),
        (0.05 <= cfg.seg_scale <= 4, "seg_scale must be in [0.05, 4]"),
        (0 < cfg.backbone_lr_scale <= 10, "backbone_lr_scale must be in (0, 10]"),
        (0 <= cfg.ema < 1, "ema must be in [0, 1) (0 = off; 0.99-0.9999 usual)"),
        (0 <= cfg.mixup <= 10 and 0 <= cfg.cutmix <= 10, "mixup and cutmix are Beta alphas in [0, 10] (0 = off; 0.2-1 usual)"),
        (cfg.accumulate >= 1, "accumulate must be >= 1 (1 = a step per batch)"),
        (cfg.checkpoint_every_steps >= 0 and cfg.checkpoint_every_minutes >= 0,
         "checkpoint_every_steps and checkpoint_every_minutes must be >= 0 (0 = off)"),
    ]
    for ok, msg in checks:
        if not ok:
            raise VisionlabError(f"invalid config: {msg}.", "Fix the value in the config or --set.")
    return cfg


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


def config_path(task: str) -> Path | None:
    """The packaged default recipe for ``task`` (``configs/<task>.yaml``), if any."""
    here = Path(__file__).resolve().parent
    for cand in (here / "configs" / f"{task}.yaml", here.parents[1] / "configs" / f"{task}.yaml"):
        if cand.exists():
            return cand
    return None


def _read_yaml(path: Path) -> dict[str, Any]:
    p = Path(path).expanduser()
    if not p.exists():
        raise VisionlabError(f"config file {p} does not exist.", "Check the --config path.")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise VisionlabError(f"config file {p} is not valid YAML ({str(exc).splitlines()[0]}).", "Fix the syntax.") from None
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
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
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


def _merge(base: dict[str, Any], layer: Mapping[str, Any], where: str) -> dict[str, Any]:
    valid = set(_valid_keys())
    if "model" in layer and layer["model"] != base.get("model"):
        base["model_args"] = {}  # another model: the previous model's arguments do not apply
    for key, value in layer.items():
        if key not in valid:
            raise _unknown_key(key, where)
        if key in ("augment", "model_args") and isinstance(value, Mapping) and isinstance(base.get(key), dict):
            base[key] = {**base[key], **value}
        else:
            base[key] = _coerce(key, value, where)
    return base


def load_config(
    task: str,
    config: str | os.PathLike | None = None,
    overrides: Iterable[str] | Mapping[str, Any] | None = None,
) -> Config:
    """Resolve the config of ``task``: dataclass defaults, the task's recipe, a user file, overrides."""
    from visionlab.registry import get_task

    spec = get_task(task)
    values: dict[str, Any] = asdict(Config())
    values.update(task=spec.name, model=spec.model, image_size=spec.input_size)
    default = config_path(spec.name)
    if default is not None:
        _merge(values, _read_yaml(default), str(default))
    if config is not None:
        user = _read_yaml(Path(config))
        if "task" in user and user["task"] != spec.name:
            raise VisionlabError(f"config file {config} is for task {user['task']!r}, not {spec.name!r}.", "Pass the matching --task.")
        _merge(values, user, str(config))
    _merge(values, parse_overrides(overrides), "--set")
    values["task"] = spec.name
    return _validate(Config(**values))


def resume_differences(saved: Config, requested: Config) -> dict[str, tuple[Any, Any]]:
    """Keys whose value differs between a run's saved config and a requested one: {key: (saved, requested)}."""
    a, b = saved.to_dict(), requested.to_dict()
    diff = {k: (a[k], b[k]) for k in a if a[k] != b[k]}
    if "data" in diff and not saved.is_synthetic and not requested.is_synthetic:
        same = Path(str(a["data"])).expanduser().resolve() == Path(str(b["data"])).expanduser().resolve()
        if same:  # the same folder, spelt another way
            del diff["data"]
    return diff


def resume_config(
    saved: Mapping[str, Any] | Config,
    config: str | os.PathLike | None = None,
    overrides: Iterable[str] | Mapping[str, Any] | None = None,
) -> tuple[Config, dict[str, tuple[Any, Any]]]:
    """The config a resumed run continues with: the run's own resolved config, with only the
    resume-safe keys (:data:`RESUME_SAFE_KEYS`) changed by ``config``/``overrides``.

    A layer that would change anything else (data, model, image size, classes, lr, ...) is an
    error that names the differences. Returns the config and the keys it changed."""
    base = saved if isinstance(saved, Config) else config_from_dict(saved)
    values = base.to_dict()
    if config is not None:
        _merge(values, _read_yaml(Path(config)), str(config))
    _merge(values, parse_overrides(overrides), "--set")
    values["task"] = base.task
    cfg = _validate(Config(**values))
    return cfg, check_resume(base, cfg)


def check_resume(saved: Config, cfg: Config) -> dict[str, tuple[Any, Any]]:
    """The resume-safe keys ``cfg`` changes from a run's ``saved`` config; any other change is an error."""
    changed = resume_differences(saved, cfg)
    unsafe = {k: v for k, v in changed.items() if k not in RESUME_SAFE_KEYS}
    if unsafe:
        what = "; ".join(f"{k}: run {a!r}, asked {b!r}" for k, (a, b) in unsafe.items())
        raise VisionlabError(
            f"cannot resume with a different {', '.join(unsafe)} ({what}).",
            f"Resume continues the run as it was (only {', '.join(sorted(RESUME_SAFE_KEYS - {'out'}))} may change); "
            "drop those options, or start a new run without --resume.",
        )
    return {k: v for k, v in changed.items() if k != "out"}


def config_from_dict(data: Mapping[str, Any]) -> Config:
    """Rebuild a Config saved in a checkpoint (unknown keys from other versions are dropped)."""
    valid = set(_valid_keys())
    return Config(**{k: v for k, v in data.items() if k in valid})


def dump_config(cfg: Config, path: str | os.PathLike) -> None:
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))

