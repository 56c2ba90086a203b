"""The task registry: five tasks, duplicates refused, unknown names listed; the CLI lists them without torch."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace

import pytest
import yaml
from typer.testing import CliRunner

import visionlab
from visionlab.errors import VisionlabError
from visionlab.registry import TaskSpec, get_task, list_tasks, register_task, task_names

EXPECTED = {
    "minerals": "classification",
    "waste": "classification",
    "cracks": "classification",
    "caltech": "classification",
    "landcover": "segmentation",
}


@pytest.mark.torchfree
def test_five_builtin_tasks_with_their_kinds():
    specs = list_tasks()
    assert {s.name: s.kind for s in specs} == EXPECTED
    assert task_names() == [s.name for s in specs]
    assert visionlab.list_tasks() == specs  # the public API is the registry


@pytest.mark.torchfree
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_task_is_completely_described(name: str):
    spec = get_task(name)  # its models are registered: test_models.test_every_task_model_is_registered
    assert isinstance(spec, TaskSpec)
    assert spec.name == name
    assert spec.input_size >= 32
    assert len(spec.default_classes) >= 2 and len(set(spec.default_classes)) == len(spec.default_classes)
    assert spec.description and spec.dataset
    # the spec says what the recipe trains, and the description names it
    recipe = yaml.safe_load(spec.recipe_path.read_text())
    assert spec.model == recipe["model"] and spec.input_size == recipe.get("image_size", recipe.get("tile_size"))
    if recipe["model"] == "efficientnet_lite0" or recipe.get("model_args", {}).get("encoder") == "efficientnet_lite0":
        assert "EfficientNet-Lite0" in spec.description, spec.description
    assert spec.seed_model in spec.description or spec.seed_model == spec.model


@pytest.mark.torchfree
def test_duplicate_registration_is_refused_and_keeps_the_original():
    original = get_task("cracks")
    impostor = replace(original, description="an impostor", seed_model="waste_cnn")
    with pytest.raises(ValueError, match="already registered"):
        register_task(impostor)
    assert get_task("cracks") is original
    assert task_names().count("cracks") == 1


@pytest.mark.torchfree
def test_unknown_task_lists_the_known_ones():
    with pytest.raises(VisionlabError) as info:
        get_task("crack")
    msg = str(info.value)
    assert "'crack'" in msg
    for name in EXPECTED:
        assert name in msg
    assert "\n" not in msg


@pytest.mark.torchfree
def test_a_new_task_can_be_registered_and_found(monkeypatch: pytest.MonkeyPatch):
    from visionlab import registry

    monkeypatch.setattr(registry, "_TASKS", dict(registry._TASKS))  # undone after the test
    spec = register_task(TaskSpec(name="bees", kind="classification", seed_model="cracks_cnn",
                                  default_classes=("bee", "wasp"), description="bees vs wasps"))
    assert get_task("bees") is spec
    assert task_names()[-1] == "bees"


@pytest.mark.torchfree
def test_tasks_command_lists_every_task():
    from visionlab.cli import app

    result = CliRunner().invoke(app, ["tasks"], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    for name, kind in EXPECTED.items():
        assert name in result.stdout
        assert kind in result.stdout
    # the seed model appears next to the recipe model (e.g. efficientnet_lite0 / cracks_cnn)
    assert "cracks_cnn" in result.stdout and "unet" in result.stdout


_NO_TORCH = """
import sys
from typer.testing import CliRunner
from visionlab.cli import app
for args in (["--help"], ["tasks"], ["train", "--help"], ["--version"]):
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, (args, result.output)
    assert "torch" not in sys.modules, f"{args} imported torch"
import visionlab
visionlab.list_tasks(); visionlab.get_task("landcover")
assert "torch" not in sys.modules, "the registry imported torch"
print("ok")
"""


@pytest.mark.torchfree
def test_help_and_tasks_do_not_import_torch():
    proc = subprocess.run([sys.executable, "-c", _NO_TORCH], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


# The parts .ci/torchfree runs without torch; here checked where torch is installed too.
_TORCH_FREE = ["visionlab.config", "visionlab.kinds.classification", "visionlab.kinds.segmentation", "visionlab.runtime",
               "visionlab.report", "visionlab.present", "visionlab.present.evaluation", "visionlab.present.predictions",
               "visionlab.present.doctor", "visionlab.present.messages", "visionlab.present.runtime",
               "visionlab.serve.batching", "visionlab.serve.uploads"]


@pytest.mark.torchfree
def test_the_torch_free_parts_import_no_torch():
    code = (f"import importlib, sys\nfor m in {_TORCH_FREE!r}: importlib.import_module(m)\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision', 'timm')))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


@pytest.mark.torchfree
def test_version_flag():
    from visionlab.cli import app

    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.stdout.strip() == f"visionlab {visionlab.__version__}"


def test_public_api_is_lazy_and_complete():
    for name in visionlab.__all__:
        assert getattr(visionlab, name) is not None
    with pytest.raises(AttributeError):
        visionlab.no_such_function  # noqa: B018


_FRESH = """
import sys
from visionlab.registry import TaskSpec, get_task, list_tasks, register_task


def refused(name):
    try:
        register_task(TaskSpec(name=name, kind="classification", seed_model="waste_cnn",
                               default_classes=("a", "b"), description="a second task of that name"))
    except ValueError as exc:
        return "already registered" in str(exc)
    return False
"""

_USER_TASK_FIRST = _FRESH + """
bees = register_task(TaskSpec(name="bees", kind="classification", seed_model="cracks_cnn",
                              default_classes=("bee", "wasp"), description="bees vs wasps"))
names = [s.name for s in list_tasks()]
assert names == ["minerals", "waste", "cracks", "caltech", "landcover", "bees"], names
assert get_task("bees") is bees and get_task("landcover").kind == "segmentation"
assert refused("bees"), "a duplicate was accepted"
assert "torch" not in sys.modules
print("ok")
"""

_BUILTIN_NAME_FIRST = _FRESH + """
assert refused("cracks"), "a built-in name was taken over by a task registered before anything else"
assert get_task("cracks").seed_model == "cracks_cnn"
print("ok")
"""


@pytest.mark.torchfree
@pytest.mark.parametrize("script", [_USER_TASK_FIRST, _BUILTIN_NAME_FIRST], ids=["user-task-first", "builtin-name-first"])
def test_registering_first_keeps_the_builtin_tasks(script: str):
    # a fresh interpreter: in this one the built-ins are loaded already
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"
