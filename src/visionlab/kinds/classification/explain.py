"""Why a classifier said what it said: Grad-CAM (Selvaraju et al. 2017), by captum's ``LayerGradCam``.

The gradient of the answered class's score with respect to one feature map (the layer the model
zoo's record names, :attr:`visionlab.models.Weights.cam_layer`), averaged over each channel, weighs
that map's channels; their sum, clipped at 0, is where the evidence for the class lies. It costs one
forward and one backward pass on the plain view (no test-time augmentation). The score is the logit
divided by the model's temperature; a positive scale does not move the map (it is normalised to
0..1 per image), and the class explained is the one the prediction gives, which the temperature
and the test-time views decided.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from visionlab.errors import VisionlabError

__all__ = ["require_captum", "target_layer", "grad_cam", "heat_overlay"]

#: How strongly the heat covers the photo where it is hottest (where it is 0 the photo shows as it is).
HEAT_ALPHA = 0.6


def require_captum() -> None:
    """captum computes Grad-CAM; without it, one line that says how to install it."""
    import importlib

    try:
        importlib.import_module("captum.attr")
    except ImportError:
        raise VisionlabError("explaining a classifier's answers needs captum, which is not installed.",
                             'pip install "captum>=0.7" (visionlab depends on it; this install lacks it).') from None


def target_layer(model: Any, name: str) -> Any:
    """The module of ``model`` whose feature map Grad-CAM weighs: the one named ``name`` (the zoo
    record's ``cam_layer``), else the network's last convolution. An exported model (no PyTorch
    modules, no gradients) cannot be explained: one line that says to pass the checkpoint."""
    import torch

    if not isinstance(model, torch.nn.Module) or not any(p.requires_grad for p in model.parameters()):
        raise VisionlabError("an exported model (.onnx) cannot explain its answers: it has no gradients.",
                             "Pass the training checkpoint (best.pt) with --explain.")
    modules = dict(model.named_modules())
    if name:
        if name not in modules:
            raise VisionlabError(f"the model has no layer {name!r} to explain its answers with.",
                                 "The model zoo's cam_layer of this model is wrong; report it.")
        return modules[name]
    convs = [m for m in modules.values() if isinstance(m, torch.nn.Conv2d)]
    if not convs:
        raise VisionlabError("the model has no convolution whose feature map could explain its answers.",
                             "Set cam_layer in its model zoo record (visionlab.models.Weights).")
    return convs[-1]


def grad_cam(model: Any, normalize: Any, device: Any, arrays: Sequence[np.ndarray], targets: Sequence[int],
             layer: Any, temperature: float = 1.0, channels_last: bool = False) -> np.ndarray:
    """Grad-CAM maps of a batch of HxWx3 uint8 arrays for the class indices ``targets``: float32
    (N, H, W) at the arrays' size (bilinear from the layer's grid), each scaled to 0..1 (all 0 where
    nothing speaks for the class). In fp32 with gradients, whatever the predictor's precision."""
    import torch
    from captum.attr import LayerAttribution, LayerGradCam

    with torch.inference_mode(False), torch.enable_grad():  # also when called under inference_mode (evaluate)
        batch = torch.stack([torch.from_numpy(np.ascontiguousarray(a)) for a in arrays]).permute(0, 3, 1, 2)
        x = normalize(batch.to(device)).float().clone()
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        cam = LayerGradCam(lambda inp: model(inp) / temperature, layer)
        maps = cam.attribute(x, target=list(targets), relu_attributions=True)
        maps = LayerAttribution.interpolate(maps.detach(), tuple(x.shape[-2:]), interpolate_mode="bilinear")
    maps = maps[:, 0].float().cpu().numpy()
    peak = maps.reshape(len(maps), -1).max(1)
    return (maps / np.where(peak > 0, peak, 1.0)[:, None, None]).clip(0, 1).astype(np.float32)


def heat_overlay(array: np.ndarray, heat: np.ndarray) -> np.ndarray:
    """The photo (HxWx3 uint8) with the heat (HxW, 0..1) over it in matplotlib's ``jet`` colours,
    opaque in proportion to the heat (up to :data:`HEAT_ALPHA`): RGB uint8 of the photo's size."""
    from matplotlib import colormaps

    colors = colormaps["jet"](heat)[..., :3] * 255.0
    alpha = (HEAT_ALPHA * heat)[..., None]
    return (array.astype(np.float32) * (1 - alpha) + colors * alpha).round().clip(0, 255).astype(np.uint8)
