"""Preprocessing and augmentation: shapes and ranges, identity when off, no augmentation outside
training, one decoding path for every input type, masks only ever resized with nearest neighbour."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from visionlab.api import load_config
from visionlab.config import AUGMENT_DEFAULTS
from visionlab.data.augment import Augment
from visionlab.data.io import resize_mask
from visionlab.data.transforms import BatchAugment, BatchMix, Normalize, cutmix_pairs, load_for_model, to_float
from visionlab.errors import VisionlabError
from visionlab.registry import get_task
from visionlab.kinds import runner_for

OFF = {"hflip": False, "vflip": False, "rot90": False, "rotate": 0.0, "scale": [1.0, 1.0], "translate": 0.0,
       "brightness": 0.0, "contrast": 0.0, "saturation": 0.0, "hue": 0.0}
ALL_ON = {"hflip": True, "vflip": True, "rot90": True, "rotate": 20.0, "scale": [0.7, 1.0], "translate": 0.1,
          "brightness": 0.3, "contrast": 0.3, "saturation": 0.3, "hue": 0.1}


def _batch(n: int = 6, h: int = 20, w: int = 20, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, h, w), dtype=torch.uint8, generator=g)


@pytest.mark.parametrize("cfg", [ALL_ON, AUGMENT_DEFAULTS, {**OFF, "hflip": True}, {**OFF, "hue": 0.5}], ids=["all", "defaults", "hflip", "hue"])
@pytest.mark.parametrize("shape", [(6, 3, 20, 20), (3, 3, 17, 31)])
def test_batch_augment_keeps_shape_dtype_and_range(cfg, shape):
    x = torch.randint(0, 256, shape, dtype=torch.uint8)
    torch.manual_seed(0)
    y = BatchAugment(cfg)(x)
    assert y.shape == x.shape and y.dtype == torch.float32
    assert torch.isfinite(y).all()
    assert y.min() >= 0.0 and y.max() <= 1.0
    # float input in [0, 1] gives the same kind of output
    z = BatchAugment(cfg)(to_float(x))
    assert z.shape == x.shape and z.min() >= 0.0 and z.max() <= 1.0


def test_batch_augment_changes_the_batch_when_on():
    x = _batch()
    torch.manual_seed(1)
    assert not torch.allclose(BatchAugment(ALL_ON)(x), to_float(x))


def test_batch_augment_with_everything_off_is_the_identity():
    x = _batch()
    assert torch.equal(BatchAugment(OFF)(x), to_float(x))
    assert torch.equal(BatchAugment(Augment.from_config(OFF))(x), to_float(x))
    # the same from a resolved config
    cfg = load_config("cracks", overrides=[f"augment.{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in OFF.items()])
    assert torch.equal(BatchAugment(cfg.augment)(x), to_float(x))


def test_flips_only_flip():
    x = to_float(_batch(n=32))
    torch.manual_seed(2)
    y = BatchAugment({**OFF, "hflip": True, "vflip": True})(x)
    kinds = set()
    for a, b in zip(x, y):
        for name, t in (("id", a), ("h", a.flip(2)), ("v", a.flip(1)), ("hv", a.flip(1).flip(2))):
            if torch.equal(b, t):
                kinds.add(name)
                break
        else:
            pytest.fail("an output is not a flip of its input")
    assert len(kinds) >= 3  # random per sample, not one choice for the batch


def test_rot90_through_the_affine_path_is_an_exact_rotation():
    """rot90 (+ flips) goes through affine_grid/grid_sample: each output must be a rotation of its input."""
    x = to_float(_batch(n=24, h=16, w=16))
    torch.manual_seed(3)
    y = BatchAugment({**OFF, "rot90": True, "hflip": True})(x)
    candidates = lambda a: [torch.rot90(t, k, dims=(1, 2)) for t in (a, a.flip(2)) for k in range(4)]  # noqa: E731
    for a, b in zip(x, y):
        err = min(float((b - c).abs().max()) for c in candidates(a))
        assert err < 1e-4, f"not a rotation/flip of the input (max error {err})"


def test_colour_jitter_keeps_the_geometry():
    x = torch.zeros(4, 3, 12, 12)
    x[:, :, :, :6] = 0.8  # left half bright
    torch.manual_seed(4)
    y = BatchAugment({**OFF, "brightness": 0.3, "contrast": 0.3, "saturation": 0.3})(x)
    assert (y[:, :, :, :6].mean(dim=(1, 2, 3)) > y[:, :, :, 6:].mean(dim=(1, 2, 3))).all()


def _labelled_constant_images(n: int = 8, size: int = 24) -> tuple[torch.Tensor, torch.Tensor]:
    """Image i is filled with the value i and labelled class i: a mixed pixel tells whose it is."""
    y = torch.arange(n)
    return y.float().view(-1, 1, 1, 1).expand(n, 3, size, size).contiguous(), y


def test_mix_off_gives_the_batch_and_one_hot_targets():
    x, y = _labelled_constant_images()
    out, t = BatchMix(8)(x.clone(), y)
    assert torch.equal(out, x) and torch.equal(t, F.one_hot(y, 8).float())


@pytest.mark.parametrize("seed", range(5))
def test_mixup_weights_images_and_labels_alike(seed: int):
    x, y = _labelled_constant_images()
    np.random.seed(seed)  # timm's Mixup draws from numpy
    out, t = BatchMix(8, mixup=1.0)(x, y)  # Beta(1, 1): no draw of lam next to 1
    assert torch.allclose(t.sum(1), torch.ones(8))
    assert (t.max(1).values < 1).any(), "nothing was mixed"
    # every pixel of image i is the label-weighted average of the two images' values
    expected = (t * torch.arange(8.0)).sum(1)
    assert torch.allclose(out, expected.view(-1, 1, 1, 1).expand_as(out), atol=1e-5)


@pytest.mark.parametrize("seed", range(8))
def test_cutmix_label_weights_are_the_pasted_areas(seed: int):
    x, y = _labelled_constant_images(size=24)
    np.random.seed(seed)
    out, t = BatchMix(8, cutmix=1.0)(x, y)
    assert torch.allclose(t.sum(1), torch.ones(8))
    for i in range(8):
        values, counts = out[i, 0].unique(return_counts=True)
        share = dict(zip(values.long().tolist(), (counts.float() / out[i, 0].numel()).tolist()))
        assert set(share) <= set(torch.nonzero(t[i]).flatten().tolist()) | {i}  # only this image and its partner
        for c, frac in share.items():
            assert abs(t[i, c].item() - frac) < 1e-6, (i, c, frac, t[i])
        assert torch.equal(out[i, 0], out[i, 1]) and torch.equal(out[i, 0], out[i, 2])  # one box for all channels


def test_mixup_and_cutmix_together_use_both():
    x, y = _labelled_constant_images()
    kinds = set()
    mix = BatchMix(8, mixup=0.4, cutmix=1.0)
    for seed in range(20):
        np.random.seed(seed)
        out, _ = mix(x.clone(), y)
        kinds.add("cutmix" if torch.equal(out, out.round()) else "mixup")  # CutMix only moves whole pixels
    assert kinds == {"mixup", "cutmix"}


def test_mix_leaves_the_odd_image_of_an_odd_batch_alone():
    x, y = _labelled_constant_images(n=7)
    np.random.seed(0)
    out, t = BatchMix(7, mixup=0.4)(x.clone(), y)
    assert torch.equal(out[6], x[6]) and torch.equal(t[6], F.one_hot(y[6], 7).float())
    assert (t[:6].max(1).values < 1).all() and torch.allclose(t.sum(1), torch.ones(7))
    for i in range(6):  # image i is mixed with image 5 - i, and with nothing else
        assert set(torch.nonzero(t[i]).flatten().tolist()) == {i, 5 - i}
    one, t1 = BatchMix(7, mixup=0.4)(x[:1].clone(), y[:1])  # a single image: nothing to mix it with
    assert torch.equal(one, x[:1]) and torch.equal(t1, F.one_hot(y[:1], 7).float())


def test_classifier_loss_smooths_and_weights_soft_targets(cls_folder: Path):
    """With mixup on, label smoothing and class weights still shape the loss: the weighted
    cross-entropy of the smoothed mixed targets, averaged over the batch."""
    cfg = load_config("cracks", overrides={"data": str(cls_folder), "model": "cracks_cnn", "model_args": {}, "image_size": 24,
                                           "mixup": 0.4, "label_smoothing": 0.1, "class_weights": "balanced"})
    runner = runner_for(cfg, get_task("cracks"), torch.device("cpu"))
    runner.prepare()
    x, y = next(iter(runner.train_batches(0)))
    np.random.seed(0)
    x, target = runner.mix(runner.on_device(x, train=True), y)
    assert target.shape == (len(y), 2) and (target.max(1).values < 1).any()
    logits = torch.randn(len(y), 2, generator=torch.Generator().manual_seed(0))
    w = runner.class_weight_tensor()
    assert w is not None and not torch.equal(w, torch.ones(2))
    smoothed = target * 0.9 + 0.1 / 2
    expected = -(w * smoothed * logits.log_softmax(1)).sum(1).mean()
    assert torch.allclose(runner.loss(logits, target), expected, atol=1e-6)


@pytest.mark.parametrize("seed", range(5))
def test_segmentation_cutmix_pastes_the_same_box_into_image_and_mask(seed: int):
    x, y = _labelled_constant_images(size=24)
    mask = y.view(-1, 1, 1).expand(8, 24, 24).clone()  # the mask of image i is all i, like its pixels
    torch.manual_seed(seed)
    out, out_mask = cutmix_pairs(x, mask, 1.0)
    assert out_mask.dtype == mask.dtype and out_mask.shape == mask.shape
    assert torch.equal(out[:, 0].long(), out_mask)  # every pixel still carries its own label
    assert not torch.equal(out_mask, mask), "nothing was pasted"
    assert torch.equal(cutmix_pairs(x, mask, 0.0)[1], mask)


def test_normalize_uses_mean_and_std():
    x = torch.full((1, 3, 2, 2), 255, dtype=torch.uint8)
    y = Normalize([0.5, 0.25, 0.0], [0.5, 0.25, 2.0])(x)
    assert torch.allclose(y[0, :, 0, 0], torch.tensor([1.0, 3.0, 0.5]))


# --------------------------------------------------------------------------- train vs eval path


@pytest.fixture
def cls_runner(cls_folder: Path):
    cfg = load_config("cracks", overrides={"data": str(cls_folder), "model": "cracks_cnn", "image_size": 24, "cache": "memory",
                                           "augment": ALL_ON})
    runner = runner_for(cfg, get_task("cracks"), torch.device("cpu"))
    runner.prepare()
    return runner


def test_validation_path_never_augments(cls_runner):
    x = next(iter(cls_runner.eval_batches("train", 8)))[0]
    torch.manual_seed(0)
    a = cls_runner.on_device(x.clone(), train=False)
    torch.manual_seed(1)
    b = cls_runner.on_device(x.clone(), train=False)
    assert torch.equal(a, b)
    assert torch.allclose(a, cls_runner.normalize(to_float(x)))
    torch.manual_seed(0)
    assert not torch.allclose(cls_runner.on_device(x.clone(), train=True), a)


def test_evaluation_is_deterministic(cls_runner):
    from visionlab.models import build_model

    torch.manual_seed(0)
    model = build_model("cracks_cnn", num_classes=2)
    import contextlib

    first = cls_runner.evaluate(model, "train", contextlib.nullcontext).metrics
    torch.manual_seed(123)
    second = cls_runner.evaluate(model, "train", contextlib.nullcontext).metrics
    assert first == second


def test_training_batches_come_from_the_same_decoding_as_prediction(cls_runner, cls_folder: Path):
    """The cached training input of a file equals load_for_model of that file (what predict sees)."""
    i = 3
    cached = cls_runner._gather(np.array([i]))[0].permute(1, 2, 0).numpy()
    direct = load_for_model(cls_runner.index.paths[i], cls_runner.preprocessing)
    assert np.array_equal(cached, direct)


# --------------------------------------------------------------------------- load_for_model


def test_load_for_model_accepts_path_pil_and_array(tmp_path: Path):
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (30, 50, 3), dtype=np.uint8)
    path = tmp_path / "x.png"
    Image.fromarray(arr).save(path)
    pre = {"kind": "classification", "resize": "squash", "image_size": 16}
    out = [load_for_model(src, pre) for src in (path, str(path), Image.open(path), arr)]
    for o in out:
        assert o.shape == (16, 16, 3) and o.dtype == np.uint8
        assert o.flags.writeable
        assert np.array_equal(o, out[0])
    # segmentation keeps the full size (tiled later, never squashed), or scales it by seg_scale
    seg = load_for_model(path, {"kind": "segmentation"})
    assert seg.shape == (30, 50, 3) and np.array_equal(seg, arr)
    assert load_for_model(path, {"kind": "segmentation", "seg_scale": 0.5}).shape == (15, 25, 3)


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "I;16", "CMYK"])
def test_load_for_model_turns_any_mode_into_rgb(tmp_path: Path, mode: str):
    img = Image.new("RGB", (20, 10), (120, 60, 30)).convert(mode)
    path = tmp_path / f"x.{'tif' if mode in ('I;16', 'CMYK') else 'png'}"
    img.save(path)
    out = load_for_model(path, {"kind": "classification", "resize": "squash", "image_size": 8})
    assert out.shape == (8, 8, 3) and out.dtype == np.uint8


def test_a_png_named_jpg_is_read(tmp_path: Path):
    path = tmp_path / "really_a_png.jpg"
    Image.new("RGB", (8, 8), (10, 200, 10)).save(path, format="PNG")
    assert load_for_model(path, {"kind": "classification", "resize": "squash", "image_size": 8})[0, 0].tolist() == [10, 200, 10]


# --------------------------------------------------------------------------- masks: nearest only


def test_resize_mask_never_invents_values():
    rng = np.random.default_rng(0)
    mask = rng.choice(np.array([0, 3, 7, 255], dtype=np.uint8), size=(37, 53))
    for size in ((20, 11), (106, 74), (53, 37), (7, 99)):
        out = resize_mask(mask, size)
        assert out.shape == (size[1], size[0]) and out.dtype == np.uint8
        assert set(np.unique(out)) <= {0, 3, 7, 255}


def _seg_runner(seg_folder: Path, **overrides):
    cfg = load_config("landcover", overrides={"data": str(seg_folder), "model_args": {"encoder_weights": None}, "tile_size": 32,
                                              "ignore_classes": [], "crops_per_image": 4, "val_fraction": 0.0, "seg_scale": 1.0,
                                              "test_fraction": 0.0, **overrides})
    runner = runner_for(cfg, get_task("landcover"), torch.device("cpu"))
    runner.prepare()
    return runner


@pytest.mark.parametrize("seg_scale", [1.0, 0.5, 0.37])
def test_scaled_segmentation_masks_keep_their_values(seg_folder: Path, seg_scale: float):
    runner = _seg_runner(seg_folder, seg_scale=seg_scale)
    img, mask = runner.train_pair(0)
    assert mask.shape == img.shape[:2] == (round(70 * seg_scale), round(90 * seg_scale))
    assert set(np.unique(mask)) <= {0, 1, 2, 255}
    full = runner._eval_mask(0, img.shape[:2])
    assert full.shape == (70, 90), "metrics are computed at the original resolution"
    assert set(np.unique(full)) <= {0, 1, 2, 255}


def test_a_mask_of_another_size_is_resized_with_nearest(seg_folder: Path):
    m = np.array(Image.open(seg_folder / "masks" / "tile_0.png"))
    Image.fromarray(m).resize((45, 35), Image.NEAREST).save(seg_folder / "masks" / "tile_0.png")
    img, mask = _seg_runner(seg_folder).train_pair(0)
    assert mask.shape == img.shape[:2] == (70, 90)
    assert set(np.unique(mask)) <= {0, 1, 2, 255}


def test_augmented_training_crops_keep_mask_values(seg_folder: Path):
    from visionlab.kinds.segmentation.runner import _CropDataset

    runner = _seg_runner(seg_folder, augment=ALL_ON)
    ds = _CropDataset(runner, runner.splits["train"], epoch=0)
    assert len(ds) == 4 * 4
    for i in range(len(ds)):
        x, y = ds[i]
        assert x.shape == (3, 32, 32) and x.dtype == torch.uint8
        assert y.shape == (32, 32)
        assert set(torch.unique(y).tolist()) <= {0, 1, 2, 255}
    # the same crop (seed, epoch, index) is the same every time: segmentation runs are reproducible
    for i in (0, 5):
        a, b = ds[i], ds[i]
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not all(torch.equal(ds[i][0], ds[i + 1][0]) for i in range(0, 8, 2))  # but differ between indices
    other_epoch = _CropDataset(runner, runner.splits["train"], epoch=1)
    assert not all(torch.equal(ds[i][0], other_epoch[i][0]) for i in range(4))


def test_segmentation_zoom_resamples_image_and_mask_together(seg_folder: Path):
    from visionlab.kinds.segmentation.runner import _CropDataset

    plain = {k: (False if isinstance(v, bool) else 0.0) for k, v in AUGMENT_DEFAULTS.items() if k != "scale"}
    runner = _seg_runner(seg_folder, augment={**plain, "scale": [0.5, 0.5]})
    zoom_in = _CropDataset(runner, runner.splits["train"], epoch=0)
    for i in range(len(zoom_in)):
        x, y = zoom_in[i]
        assert x.shape == (3, 32, 32) and y.shape == (32, 32)
        # a 16 px region enlarged to 32 px: the mask is nearest-neighbour, made of 2x2 blocks
        assert torch.equal(y, y[::2, ::2].repeat_interleave(2, 0).repeat_interleave(2, 1))
    runner = _seg_runner(seg_folder, augment={**plain, "scale": [2.0, 2.0]})
    zoom_out = _CropDataset(runner, runner.splits["train"], epoch=0)
    for i in range(len(zoom_out)):
        x, y = zoom_out[i]
        assert x.shape == (3, 32, 32) and y.shape == (32, 32)  # a 64 px region shrunk to the tile
        assert set(torch.unique(y).tolist()) <= {0, 1, 2, 255}


def test_one_augmentation_description_for_both_kinds():
    """The config's defaults are Augment's; a mapping's missing keys take them, one number x for scale means [x, 1]."""
    assert AUGMENT_DEFAULTS == Augment().as_config()
    assert Augment.from_config({"hflip": False, "scale": 0.5}) == Augment(hflip=False, scale=(0.5, 1.0))
    assert Augment.from_config(load_config("landcover").augment).as_config() == load_config("landcover").augment
    with pytest.raises(VisionlabError, match="unknown augment key"):
        Augment.from_config({"zoom": 1.0})


def _window(full: np.ndarray, part: np.ndarray) -> list[tuple[int, int]]:
    """Every (y, x) where ``part`` lies in ``full`` unchanged."""
    h, w = part.shape[:2]
    return [(y, x) for y in range(full.shape[0] - h + 1) for x in range(full.shape[1] - w + 1)
            if np.array_equal(full[y : y + h, x : x + w], part)]


def test_segmentation_translate_moves_the_crop_window_over_image_and_mask(seg_folder: Path):
    """'translate' shifts what a crop shows by up to that fraction of tile_size, image and mask together."""
    from visionlab.kinds.segmentation.runner import _CropDataset

    plain = {**OFF, "translate": 0.0}
    origins = {}
    for translate in (0.0, 0.4):
        runner = _seg_runner(seg_folder, augment={**plain, "translate": translate}, sampler="none")
        ds = _CropDataset(runner, runner.splits["train"], epoch=0)
        found = []
        for i in range(len(ds)):
            x, y = ds[i]
            img, mask = runner.train_pair(int(ds.indices[i // runner.cfg.options.crops_per_image]))
            where = _window(img, x.permute(1, 2, 0).numpy())
            assert where and any(np.array_equal(mask[a : a + 32, b : b + 32], y.numpy()) for a, b in where)
            found.append(where[0])
        origins[translate] = found
    moved = [(abs(a - c), abs(b - d)) for (a, b), (c, d) in zip(origins[0.0], origins[0.4])]
    assert any(m != (0, 0) for m in moved) and all(dy <= round(0.4 * 32) and dx <= round(0.4 * 32) for dy, dx in moved)


def test_ignored_classes_map_to_the_ignore_index(seg_folder: Path):
    runner = _seg_runner(seg_folder, ignore_classes=["water"])
    _, mask = runner.train_pair(0)
    assert 1 not in np.unique(mask)  # 'water' (value 1) is ignored like 255
    raw = np.array(Image.open(seg_folder / "masks" / "tile_0.png"))
    assert ((mask == 255) == ((raw == 1) | (raw == 255))).all()


@pytest.mark.parametrize("loss", ["ce", "focal", "focal+dice", "ce+dice", "focal+lovasz", "ce+lovasz"])
def test_segmentation_losses_ignore_unlabelled_pixels_and_reward_the_truth(seg_folder: Path, loss: str):
    runner = _seg_runner(seg_folder, loss=loss)
    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, 3, (2, 16, 16), generator=g)
    target[:, :4] = runner.ignore_index  # a band of unlabelled pixels
    noise = torch.randn(2, 3, 16, 16, generator=g)
    right = F.one_hot(target.clamp(max=2), 3).permute(0, 3, 1, 2).float() * 8.0
    random_loss, right_loss = float(runner.loss(noise, target)), float(runner.loss(right, target))
    assert np.isfinite(random_loss) and right_loss < 0.5 * random_loss
    changed = noise.clone()
    changed[:, :, :4] = torch.randn(2, 3, 4, 16, generator=g) * 10  # only where the mask says 'unlabelled'
    assert float(runner.loss(changed, target)) == pytest.approx(random_loss, rel=1e-5)
