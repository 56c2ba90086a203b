"""Fine-tuning aids: weight EMA, a lower lr for the pretrained body, test-time augmentation."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import visionlab
from visionlab.api import load_config
from visionlab.engine.checkpoint import load_checkpoint
from visionlab.engine.trainer import ModelEma, backbone_parameters, build_optimizer
from visionlab.engine.tta import tta_logits, tta_views
from visionlab.errors import VisionlabError
from visionlab.models import build_model

from conftest import answered


# ------------------------------------------------------------------------------------ TTA
@pytest.mark.parametrize("mode,count", [("none", 1), ("hflip", 2), ("flips", 4), ("d4", 8)])
def test_tta_views_are_distinct_symmetries_of_the_batch(mode: str, count: int):
    x = torch.rand(2, 3, 8, 8)
    views = tta_views(x, mode)
    assert len(views) == count
    assert torch.equal(views[0], x)
    flat = {tuple(v.flatten().tolist()) for v in views}
    assert len(flat) == count, "every view differs from the others"
    # each view is a permutation of the pixels of its image
    for v in views:
        assert torch.equal(v.flatten(1).sort(1).values, x.flatten(1).sort(1).values)


def test_d4_on_non_square_input_falls_back_to_flips():
    x = torch.rand(1, 3, 6, 10)
    views = tta_views(x, "d4")
    assert len(views) == 4 and all(v.shape == x.shape for v in views)


def test_tta_logits_average_probabilities_of_the_views():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.LazyLinear(5)).eval()
    x = torch.rand(3, 3, 9, 9)
    with torch.no_grad():
        assert torch.allclose(tta_logits(model, x, "none"), model(x))
        expected = (model(x).softmax(1) + model(x.flip(3)).softmax(1)) / 2
        got = tta_logits(model, x, "hflip").softmax(1)
    assert torch.allclose(got, expected, atol=1e-6)
    assert torch.allclose(got.sum(1), torch.ones(3))


@pytest.mark.parametrize("task,mode", [("cracks", "flips"), ("landcover", "d4")])
def test_tta_travels_with_the_checkpoint_and_changes_scores(task: str, mode: str, cls_folder: Path, seg_folder: Path, fast):
    if task == "cracks":
        data, image = cls_folder, next((cls_folder / "zebra").iterdir())
        opts = fast(task, model="cracks_cnn", model_args={}, image_size=24, val_fraction=0.0, test_fraction=0.0, tta=mode)
    else:
        data, image = seg_folder, next((seg_folder / "images").iterdir())
        opts = fast(task, ignore_classes=[], tta=mode)
    result = visionlab.train(task, data=data, **opts)
    assert load_checkpoint(result.best_checkpoint)["preprocessing"]["tta"] == mode
    predictor = visionlab.load(result.best_checkpoint)
    assert predictor.tta == mode
    with_tta = predictor.predict(image)[0]
    predictor.tta = "none"
    without = predictor.predict(image)[0]
    # the mean over flips of a (not flip-invariant) CNN is not its plain output
    if task == "cracks":
        assert with_tta.confidence != pytest.approx(without.confidence, abs=1e-7)
    else:
        assert with_tta.mask.shape == without.mask.shape
        assert with_tta.class_shares != without.class_shares or not (with_tta.mask == without.mask).all()


@pytest.mark.parametrize("mode,count", [("hflip", 2), ("flips", 4), ("d4", 8)])
def test_dense_tta_maps_every_view_back_onto_the_input(mode: str, count: int):
    torch.manual_seed(0)
    model = torch.nn.Conv2d(3, 4, 3, padding=1).eval()  # equivariant only to translations
    x = torch.rand(2, 3, 8, 8)
    with torch.no_grad():
        assert torch.allclose(tta_logits(model, x, "none", dense=True), model(x))
        got = tta_logits(model, x, mode, dense=True).softmax(1)
        views = tta_views(x, mode)
        assert len(views) == count
    # a per-pixel model (1x1 conv) commutes with every flip and rotation: TTA changes nothing
    pointwise = torch.nn.Conv2d(3, 4, 1).eval()
    with torch.no_grad():
        assert torch.allclose(tta_logits(pointwise, x, mode, dense=True).softmax(1), pointwise(x).softmax(1), atol=1e-5)
    assert got.shape == (2, 4, 8, 8)
    assert torch.allclose(got.sum(1), torch.ones(2, 8, 8), atol=1e-5)
    # hflip by hand: the mirrored view's map is mirrored back before averaging
    if mode == "hflip":
        with torch.no_grad():
            expected = (model(x).softmax(1) + model(x.flip(3)).softmax(1).flip(3)) / 2
        assert torch.allclose(got, expected, atol=1e-6)


def test_unknown_tta_mode_is_a_config_error():
    with pytest.raises(VisionlabError, match="'tta' must be one of none, hflip, flips, d4"):
        load_config("cracks", overrides={"tta": "rotate"})


# ------------------------------------------------------------------------------------ EMA
def test_ema_follows_the_weights_with_warmup():
    model = torch.nn.Linear(2, 2)
    ema = ModelEma(model, decay=0.9)
    start = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model)  # decay min(0.9, 2/11): mostly the new weights
    d = 2 / 11
    assert torch.allclose(ema.module.weight, d * start + (1 - d) * model.weight)
    for _ in range(200):
        ema.update(model)
    assert torch.allclose(ema.module.weight, model.weight, atol=1e-6)
    assert not any(p.requires_grad for p in ema.module.parameters())


def test_training_with_ema_saves_the_average_and_resumes(fast):
    opts = fast("cracks", model="cracks_cnn", model_args={}, ema=0.5, name="ema", epochs=1)
    first = visionlab.train("cracks", data="synthetic", **opts)
    state = load_checkpoint(first.last_checkpoint)
    assert state["ema_updates"] == 2  # two steps
    assert set(state["model"]) == set(state["train_model"])
    assert any(not torch.equal(state["model"][k], state["train_model"][k]) for k in state["model"]
               if state["model"][k].is_floating_point()), "the saved weights are the average, not the last step's"
    resumed = visionlab.train("cracks", data="synthetic", resume=first.last_checkpoint, **{**opts, "epochs": 2})
    assert load_checkpoint(resumed.last_checkpoint)["ema_updates"] == 4
    preds = visionlab.load(resumed.best_checkpoint).predict(next(iter(_cracks_images())))
    assert preds[0].error is None and answered(preds[0]) in ("Negative", "Positive")


def _cracks_images():
    from visionlab.kinds import get_kind

    spec = visionlab.get_task("cracks")
    root = get_kind(spec.kind).synthetic_data(spec)
    return sorted((root / spec.default_classes[0]).iterdir())


# ----------------------------------------------------------------------- backbone lr scale
def test_backbone_lr_scale_gives_the_body_a_fraction_of_lr():
    cfg = load_config("caltech", overrides={"lr": 0.01, "backbone_lr_scale": 0.1})
    model = build_model("efficientnet_lite0", num_classes=6, pretrained=False)
    opt = build_optimizer(model, cfg)
    head = {id(p) for p in model.get_classifier().parameters()}
    for group in opt.param_groups:
        in_head = {id(p) in head for p in group["params"]}
        assert len(in_head) == 1
        assert group["lr"] == pytest.approx(0.01 if in_head.pop() else 0.001)
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))


def test_backbone_of_a_unet_is_its_encoder():
    model = build_model("unet", num_classes=3, encoder="resnet18", encoder_weights=None)
    body = backbone_parameters(model)
    assert body == {id(p) for p in model.encoder.parameters()}
    assert len(body) < len(list(model.parameters()))


def test_backbone_lr_scale_on_a_model_without_a_head_is_refused():
    cfg = load_config("cracks", overrides={"backbone_lr_scale": 0.5})
    with pytest.raises(VisionlabError, match="needs a model with a separate head"):
        build_optimizer(torch.nn.Sequential(torch.nn.Linear(2, 2)), cfg)
