"""Small CNNs trained from scratch: one configurable :class:`SmallCNN`, registered three times.

The three seed projects were Keras CNNs: conv-BN-ReLU blocks with max-pooling, then dense
layers. They differ only in widths, head and input size, so each task is a few lines of
arguments (as timm's ``resnet18`` is a call to ``_create_resnet``). Convolutions use ``same``
padding and every block halves the resolution, so any input size of at least ``2**blocks``
pixels works.

What each seed had, and what we chose (parameter counts for the default number of classes):

========== ================================================ ===================================================
model      seed                                             here
========== ================================================ ===================================================
minerals   conv 64-128-256-512 + BN + max-pool, global avg  the same: GAP, dense 256, dropout 0.5, 96 px;
           pool, dense 256, dropout; 96 px                  1.69 M parameters (7 classes)
waste      conv 32-64-128-256, flatten (12x12x256 at        flatten kept, but the 14x14 map (224 px, same
           224 px, valid padding), dense 128-64, dropout    padding) is average-pooled to 7x7 first, VGG-style:
           0.2; about 5.1 M parameters, 4.7 M of them in    2.00 M parameters (2 classes); ``flatten_grid=14``
           the first dense layer                            gives the seed's layout (6.82 M)
cracks     3 conv blocks 32-64-128, flatten (17x17x128 at   flatten kept, the 16x16 map (128 px) average-pooled
           150 px), dense 512, dropout; about 19 M          to 4x4 first: 1.14 M parameters (2 classes); the
           parameters, 99 % of them in the dense layer      seed's 19 M would be a 3-conv net bigger than ResNet18
========== ================================================ ===================================================

With ``pool='flatten'`` the map is adaptively average-pooled to ``flatten_grid`` x ``flatten_grid``
(default: the map size at ``input_size``, i.e. a plain flatten there), so the parameter count
does not depend on the input size.
"""

from __future__ import annotations

from typing import Any, Literal, Sequence

import torch
from torch import nn

from visionlab.errors import VisionlabError
from visionlab.models import HALF, Weights, register_model

__all__ = ["SmallCNN", "minerals_cnn", "waste_cnn", "cracks_cnn"]

Pool = Literal["gap", "flatten", "maxflatten"]


class SmallCNN(nn.Module):
    """Conv-BN-ReLU blocks, each followed by 2x2 max-pooling, then a dense head.

    Args:
        channels: output channels of each block (one block per entry).
        convs_per_block: 3x3 convolutions per block (1 or 2).
        dense: widths of the hidden dense layers (each ReLU + dropout).
        dropout: dropout probability after each hidden dense layer (before the output
            layer when there is none).
        pool: ``'gap'`` (global average pooling), ``'flatten'`` (adaptive average pooling to
            ``flatten_grid`` then flatten, keeping coarse spatial layout) or ``'maxflatten'``
            (the same with max-pooling: a small strong response, a hairline crack, is not
            averaged away).
        input_size: the input size the network is designed for; sets the default
            ``flatten_grid`` and is reported by :func:`visionlab.models.model_weights`.
        num_classes: outputs of the last layer (logits).
        in_chans: input channels.
        flatten_grid: side of the pooled map with ``pool='flatten'`` (default
            ``input_size // 2**len(channels)``).
    """

    def __init__(
        self,
        channels: Sequence[int],
        convs_per_block: int = 1,
        dense: Sequence[int] = (),
        dropout: float = 0.0,
        pool: Pool = "gap",
        input_size: int = 224,
        num_classes: int = 2,
        in_chans: int = 3,
        flatten_grid: int | None = None,
    ) -> None:
        super().__init__()
        if not channels:
            raise VisionlabError("SmallCNN needs at least one conv block (channels is empty).")
        if convs_per_block not in (1, 2):
            raise VisionlabError(f"convs_per_block must be 1 or 2, got {convs_per_block!r}.")
        if pool not in ("gap", "flatten", "maxflatten"):
            raise VisionlabError(f"pool must be 'gap', 'flatten' or 'maxflatten', got {pool!r}.")
        if not 0.0 <= dropout < 1.0:
            raise VisionlabError(f"dropout must be in [0, 1), got {dropout!r}.")
        self.input_size = int(input_size)
        self.num_classes = num_classes

        layers: list[nn.Module] = []
        prev = in_chans
        for width in channels:
            for _ in range(convs_per_block):
                layers += [nn.Conv2d(prev, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
                prev = width
            layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)

        if pool == "gap":
            self.pool: nn.Module = nn.AdaptiveAvgPool2d(1)
            flat = prev
        else:
            grid = flatten_grid or max(1, self.input_size // 2 ** len(channels))
            self.pool = nn.AdaptiveAvgPool2d(grid) if pool == "flatten" else nn.AdaptiveMaxPool2d(grid)
            flat = prev * grid * grid

        head: list[nn.Module] = [nn.Flatten()]
        for width in dense:
            head += [nn.Linear(flat, width), nn.ReLU(inplace=True), nn.Dropout(dropout)]
            flat = width
        if not dense and dropout:
            head.append(nn.Dropout(dropout))
        self.head = nn.Sequential(*head)
        self.classifier = nn.Linear(flat, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        # Kaiming (He) init for ReLU networks; BN starts as identity; small output layer.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.classifier.weight, std=0.01)
        nn.init.zeros_(self.classifier.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled, flattened features before the dense head."""
        return torch.flatten(self.pool(self.features(x)), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.head(self.forward_features(x)))


def _defaults(args: dict[str, Any]) -> Weights:
    """Trained from scratch: no weights to load; inputs normalised with mean = std = 0.5 at ``input_size``;
    Grad-CAM weighs the map the conv blocks end with (``features``: after the last max-pool, 1/2**blocks of the input)."""
    return Weights(None, HALF, HALF, args["input_size"], cam_layer="features")


@register_model(weights=_defaults)
def minerals_cnn(
    num_classes: int, in_chans: int = 3, *, dropout: float = 0.5, pool: Pool = "gap",
    input_size: int = 96, flatten_grid: int | None = None,
) -> SmallCNN:
    """Minerals: conv 64-128-256-512 + BN + max-pool, global average pooling, dense 256 (96 px)."""
    return SmallCNN((64, 128, 256, 512), 1, (256,), dropout, pool, input_size, num_classes, in_chans, flatten_grid)


@register_model(weights=_defaults)
def waste_cnn(
    num_classes: int, in_chans: int = 3, *, dropout: float = 0.2, pool: Pool = "flatten",
    input_size: int = 224, flatten_grid: int | None = 7,
) -> SmallCNN:
    """Waste: conv 32-64-128-256, 7x7 pooled flatten, dense 128-64, dropout 0.2 (224 px)."""
    return SmallCNN((32, 64, 128, 256), 1, (128, 64), dropout, pool, input_size, num_classes, in_chans, flatten_grid)


@register_model(weights=_defaults)
def cracks_cnn(
    num_classes: int, in_chans: int = 3, *, dropout: float = 0.5, pool: Pool = "flatten",
    input_size: int = 128, flatten_grid: int | None = 4,
) -> SmallCNN:
    """Cracks: 3 conv blocks 32-64-128, 4x4 pooled flatten, dense 512, dropout 0.5 (128 px)."""
    return SmallCNN((32, 64, 128), 1, (512,), dropout, pool, input_size, num_classes, in_chans, flatten_grid)
