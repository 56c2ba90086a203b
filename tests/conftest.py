"""Shared fixtures: an isolated environment for every test, tiny real image folders, shared data.

Every test runs with ``VISIONLAB_CACHE``, ``VISIONLAB_RUNS``, ``VISIONLAB_TASKS`` and ``TORCH_HOME`` inside pytest's
temporary folders, so no test reads or writes the user's caches or runs and nothing is ever
downloaded. The synthetic datasets and the decoded-image cache live in one cache folder per
session (they are made once and reused, as they would be for a user); runs are per test.
"""

from __future__ import annotations

import os

# One intra-op thread: the tests use tiny tensors, and on busy shared cores OpenMP threads
# waiting at barriers make them 10-100x slower. Set before numpy/torch are imported; an
# explicit OMP_NUM_THREADS in the environment wins.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import importlib.util  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import zlib  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
# Device of the training tests (timm style): cpu by default, VISIONLAB_TEST_DEVICE=cuda on a GPU machine.
TEST_DEVICE = os.environ.get("VISIONLAB_TEST_DEVICE", "cpu")
CONFIGS = REPO / "configs"


# Tests marked ``torchfree`` (a module's ``pytestmark`` or one test's decorator) need neither torch nor
# torchvision: .ci/run also runs them (``pytest -m torchfree``) on the oldest and newest supported
# Pythons, in venvs with onnxruntime and no torch. There only the modules that hold such tests are imported.
HAS_TORCH = importlib.util.find_spec("torch") is not None


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """Without torch, skip importing test modules that mark no test torch-free (they import torch)."""
    if HAS_TORCH or not (collection_path.name.startswith("test_") and collection_path.suffix == ".py"):
        return None
    return True if "pytest.mark.torchfree" not in collection_path.read_text(encoding="utf-8") else None


# The fault suite, `pytest -m faults`: hostile input, real signals and broken processes, each a defect
# found by trying to break visionlab (issue #20 and its reviews), kept here so it stays fixed. Whole
# modules, and the tests of other modules named below.
FAULT_MODULES = {"test_faults.py", "test_serve_limits.py", "test_fuzz_uploads.py", "test_decode_formats.py", "test_batching.py",
                 "test_training_loop.py"}
FAULT_TESTS = {
    "test_serve.py": ["test_every_bad_input_gets", "test_a_full_queue", "test_api_key_guards", "test_browser_login",
                      "test_only_the_bound_host_names", "test_sigterm_drains", "test_cli_errors_are_one_line",
                      "test_off_loopback", "test_deeply_nested_json", "test_a_batch_loop_that_dies",
                      "test_one_failing_image", "test_a_client_that_hangs_up", "test_json_numbers_no_answer_can_carry",
                      "test_requests_cut_off_by_the_drain_deadline", "test_a_second_ctrl_c"],
    "test_distributed.py": ["test_processes_wait_for_a_decode", "test_every_process_must_see", "test_a_rank_killed_mid_run",
                            "test_under_torchrun_each_rank_says", "test_sigterm_to_devices", "test_an_mlflow_run_whose_other",
                            "test_validation_under_torchrun_scores", "test_sigterm_to_one_rank",
                            "test_devices_under_an_existing_job"],
    "test_export.py": ["test_broken_and_foreign_onnx", "test_parity_failure", "test_end_to_end_parity",
                       "test_exported_file_carries_no_local_path", "test_precision_is_fp32", "test_export_to_a_folder",
                       "test_the_fallback_exporter_prints_no_graph_dump"],
    "test_runtime.py": ["test_entries_that_are_not_predicted", "test_an_error_names_a_file_with_a_newline",
                        "test_a_top_k_or_thread_count_below_one", "test_metadata_the_runtime_cannot_use"],
    "test_cli.py": ["test_csv_cells_never_start_a_spreadsheet_formula", "test_plain_pickles_give_one_line_and_never_run_code",
                    "test_corrupt_and_missing_checkpoints", "test_a_run_name_cannot_put_the_run_outside_out",
                    "test_a_run_resumed_from_another_folder"],
    "test_report.py": ["test_labels_and_file_names_are_escaped", "test_report_embeds_no_file_from_outside",
                       "test_a_damaged_evaluation_file", "test_only_jpegs_of_a_bounded_size"],
    "test_config.py": ["test_config_files_python_cannot_use", "test_a_folder_as_config_file", "test_numbers_that_are_not_finite",
                       "test_fuzzed_", "test_a_name_that_is_not_one_folder", "test_a_yaml_alias_bomb",
                       "test_out_of_range_values_are_refused", "test_a_resume_config_file_of_another_task"],
    "test_models.py": ["test_sync_batchnorm", "test_auto_precision_on_a_gpu_that_only_emulates"],
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        module = item.path.name
        if module in FAULT_MODULES or any(item.name.startswith(p) for p in FAULT_TESTS.get(module, ())):
            item.add_marker(pytest.mark.faults)


def shared_data_root() -> Path:
    """``../shared/data`` next to the repository, or ``$VISIONLAB_SHARED_DATA``."""
    env = os.environ.get("VISIONLAB_SHARED_DATA")
    return Path(env).expanduser() if env else REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def session_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache folder per session: synthetic datasets and decoded images are made once."""
    return tmp_path_factory.mktemp("visionlab-cache")


@pytest.fixture(autouse=True)
def isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, session_cache: Path) -> dict[str, Path]:
    """Point every visionlab and torch cache into tmp; nothing can download or touch ~/.cache (or ~/.config)."""
    runs = tmp_path / "runs"
    env = {
        "VISIONLAB_CACHE": session_cache,
        "VISIONLAB_RUNS": runs,
        "VISIONLAB_TASKS": tmp_path / "user-tasks",  # the user task folder: empty unless a test writes there
        "TORCH_HOME": session_cache / "torch-home",
        "HF_HOME": session_cache / "hf-home",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, str(value))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("COLUMNS", "200")  # rich tables: one row per line in captured output
    return env


@pytest.fixture
def runs_dir(isolated_env: dict[str, Path]) -> Path:
    """This test's runs folder (also ``$VISIONLAB_RUNS``)."""
    return isolated_env["VISIONLAB_RUNS"]


@pytest.fixture
def cache_dir(isolated_env: dict[str, Path]) -> Path:
    """The session's cache folder (``$VISIONLAB_CACHE``)."""
    return isolated_env["VISIONLAB_CACHE"]


@pytest.fixture
def shared_data() -> Path:
    """The real image data beside the project; the test is skipped when it is absent."""
    root = shared_data_root()
    if not root.is_dir():
        pytest.skip(f"shared data not found at {root} (set VISIONLAB_SHARED_DATA to its location)")
    return root


# --------------------------------------------------------------------------- tiny datasets

_COLOURS = {"apple": (200, 30, 30), "zebra": (235, 235, 235), "kiwi": (60, 160, 40)}


def load_plugin(monkeypatch: pytest.MonkeyPatch, module: str):
    """A generator for fixtures: the example plugin ``module`` (examples/), found through
    VISIONLAB_PLUGINS in this process, its registrations of tasks, kinds and models undone afterwards."""
    from visionlab import kinds, models, plugins, registry

    models.list_models()  # the built-in models and kinds first, so the undo below keeps them
    for name in kinds.kind_names():
        kinds.get_kind(name)
    monkeypatch.syspath_prepend(str(REPO / "examples"))
    monkeypatch.setenv(plugins.ENV_VAR, module)
    monkeypatch.setattr(registry, "_TASKS", dict(registry._TASKS))
    monkeypatch.setattr(kinds, "_KINDS", dict(kinds._KINDS))
    monkeypatch.setattr(models, "_MODELS", dict(models._MODELS))
    monkeypatch.setitem(plugins._STATE, "loaded", set())
    monkeypatch.delitem(sys.modules, module, raising=False)
    yield
    sys.modules.pop(module, None)


def answered(result: Any) -> Any:
    """The class an answer names (a Prediction, or a row/JSON dict of one): its label, or, where the
    model's unknown detector answered 'unknown' (it rejects a share of known-looking photos too, and a
    tiny test model's more), the best guess behind it."""
    get = result.get if isinstance(result, dict) else (lambda key: getattr(result, key, None))
    return get("guess") if get("label") == "unknown" else get("label")


def served_url(proc: Any, timeout: float = 120) -> tuple[str, str]:
    """The URL a ``visionlab serve`` subprocess (stdout a text pipe, stderr joined to it) prints,
    once its /ready answers 200, and what it printed up to then; fails with that output when it
    exits or stays silent for ``timeout`` seconds."""
    import time

    import httpx

    lines: list[str] = []
    url, deadline = None, time.monotonic() + timeout
    while url is None and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if line.startswith("serving "):
            url = line.split(" at ", 1)[1].split(" ", 1)[0]
    assert url, "serve printed no address:\n" + "".join(lines)
    while httpx.get(url + "/ready").status_code != 200 and time.monotonic() < deadline:
        time.sleep(0.1)
    return url, "".join(lines)


def make_class_image(name: str, i: int, size: int = 24) -> Image.Image:
    """A small image whose colour and pattern depend on the class (learnable, deterministic)."""
    rng = np.random.default_rng(zlib.crc32(f"{name}/{i}".encode()))
    base = np.array(_COLOURS.get(name, (90, 90, 200)), dtype=np.float32)
    img = np.tile(base, (size, size, 1))
    if name == "zebra":
        img[:, ::4] = 20  # black stripes
    img += rng.normal(0, 8, img.shape)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def write_class_folder(root: Path, classes: tuple[str, ...] = ("zebra", "apple"), per_class: int = 8, size: int = 24) -> Path:
    """``root/<class>/img_N.png`` for each class (folders written in the given order)."""
    for name in classes:
        d = root / name
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            make_class_image(name, i, size).save(d / f"img_{i}.png")
    return root


@pytest.fixture
def make_cls_folder(tmp_path: Path):
    """``make_cls_folder(name, classes=..., per_class=...)`` -> a new classification folder in tmp."""

    def make(name: str, classes: tuple[str, ...] = ("zebra", "apple"), per_class: int = 8) -> Path:
        return write_class_folder(tmp_path / name, classes, per_class)

    return make


@pytest.fixture
def cls_folder(tmp_path: Path) -> Path:
    """A classification folder with classes 'zebra' and 'apple', 8 PNGs of 24 px each."""
    return write_class_folder(tmp_path / "cls")


SEG_CLASSES = [
    {"value": 0, "name": "ground", "color": "#A0522D"},
    {"value": 1, "name": "water", "color": "#1E90FF"},
    {"value": 2, "name": "roof", "color": "#DC143C"},
]


def write_seg_folder(root: Path, n_images: int = 4, size: tuple[int, int] = (90, 70)) -> Path:
    """``images/``, ``masks/`` and ``classes.json``: 3 classes, a few 255 (unlabelled) pixels.

    The size (90 x 70) is deliberately not a multiple of 32, so tiling pads."""
    w, h = size
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    colours = np.array([[150, 90, 40], [30, 140, 250], [220, 20, 60]], dtype=np.float32)
    for i in range(n_images):
        rng = np.random.default_rng(i)
        mask = np.zeros((h, w), dtype=np.uint8)
        mask[: h // 2, : w // 2] = 1
        mask[h // 3 :, 2 * w // 3 :] = 2
        mask[rng.random((h, w)) < 0.01] = 255
        img = colours[np.minimum(mask, 2)] + rng.normal(0, 10, (h, w, 3))
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(root / "images" / f"tile_{i}.png")
        Image.fromarray(mask).save(root / "masks" / f"tile_{i}.png")
    (root / "classes.json").write_text(json.dumps({"ignore_index": 255, "classes": SEG_CLASSES}))
    return root


@pytest.fixture
def seg_folder(tmp_path: Path) -> Path:
    """A segmentation folder: 4 image/mask pairs of 90 x 70 px, classes ground/water/roof."""
    return write_seg_folder(tmp_path / "seg")


# --------------------------------------------------------------------------- fast training options


def fast_options(task: str, out: Path, **extra: Any) -> dict[str, Any]:
    """Config keys that make a run of ``task`` take seconds on a CPU and never download.

    The task's recipe model is kept (with its pretrained weights switched off), at a tiny size.
    """
    from visionlab.api import load_config
    from visionlab.models import no_weights_kwargs
    from visionlab.registry import get_task

    spec = get_task(task)
    cfg = load_config(task)
    opts: dict[str, Any] = {
        "epochs": 1, "max_steps_per_epoch": 2, "batch_size": 4, "early_stopping": 0, "out": str(out),
        "model_args": {**cfg.model_args, **no_weights_kwargs(cfg.model)}, "num_workers": 0,
        "precision": "fp32", "warmup_epochs": 0.0, "device": TEST_DEVICE,
    }
    if spec.kind == "segmentation":
        opts.update(tile_size=64, crops_per_image=2, seg_scale=1.0)
    else:
        opts.update(image_size=32)
    opts.update(extra)
    return opts


@pytest.fixture
def fast(runs_dir: Path):
    """``fast(task, **extra)`` -> the options of :func:`fast_options`, writing runs to ``runs_dir``."""

    def make(task: str, **extra: Any) -> dict[str, Any]:
        return fast_options(task, runs_dir, **extra)

    return make


@pytest.fixture(scope="session")
def cracks_model(tmp_path_factory: pytest.TempPathFactory, session_cache: Path) -> Path:
    """best.pt of a small cracks model (cracks_cnn, synthetic data) trained once per session."""
    import visionlab
    from rich.console import Console

    runs = tmp_path_factory.mktemp("session-runs")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VISIONLAB_CACHE", str(session_cache))
        quiet = Console(file=open(os.devnull, "w"), width=200)  # noqa: SIM115
        result = visionlab.train("cracks", data="synthetic", console=quiet,
                                 **fast_options("cracks", runs, model="cracks_cnn", model_args={}, name="session"))
    return result.best_checkpoint


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory, session_cache: Path) -> dict[str, Path]:
    """best.pt of a tiny cracks classifier and a tiny landcover U-Net (synthetic data, seconds each),
    trained once per session; their run folders are the checkpoints' parents."""
    import visionlab
    from rich.console import Console

    runs = tmp_path_factory.mktemp("tiny-runs")
    out: dict[str, Path] = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VISIONLAB_CACHE", str(session_cache))
        mp.setenv("VISIONLAB_RUNS", str(runs))
        quiet = Console(file=open(os.devnull, "w"), width=200)  # noqa: SIM115
        out["cracks"] = visionlab.train("cracks", data="synthetic", console=quiet, **fast_options(
            "cracks", runs, model="cracks_cnn", model_args={}, name="tiny", epochs=2)).best_checkpoint
        out["landcover"] = visionlab.train("landcover", data="synthetic", console=quiet, **fast_options(
            "landcover", runs, name="tiny", epochs=2)).best_checkpoint
    return out


# --------------------------------------------------------------------------- a real browser

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream"]
SHOTS = Path("/tmp/serve-shots")  # copies of the screenshots, for a person to look at


@pytest.fixture(scope="module")
def chromium():
    """Debian's Chromium driven by Playwright (skipped when either is missing), fake camera on. One
    per module: Playwright's event loop runs in this thread while it is open, so a test module after
    it that calls asyncio.run (test_batching) must not find it still running."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} not found (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed (pip install playwright)")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def offline_page(browser: Any, origin: str | None, **context: Any) -> tuple[Any, list[str]]:
    """A new page whose requests to anywhere but ``origin`` (None: anywhere but data:) are aborted
    and recorded in the returned list."""
    ctx = browser.new_context(**context)
    leaked: list[str] = []

    def route(r: Any) -> None:
        url = r.request.url
        if (origin and (url == origin or url.startswith(origin + "/"))) or url.startswith(("data:", "blob:")):
            r.continue_()
        else:
            leaked.append(url)
            r.abort()

    ctx.route("**/*", route)
    return ctx.new_page(), leaked


def save_shot(page: Any, folder: Path, name: str) -> Path:
    """Full-page screenshot in ``folder`` (tmp) and a copy in /tmp/serve-shots/."""
    import shutil

    path = folder / name
    page.screenshot(path=str(path), full_page=True)
    SHOTS.mkdir(parents=True, exist_ok=True)
    shutil.copy(path, SHOTS / name)
    return path
