"""The task registry: one place where every task is described by name, the five built-in ones too.

A task (:class:`TaskSpec`) names its kind, its classes, its recipe and its dataset; what it trains
and at which size is read from the recipe, how it is trained and scored belongs to the kind
(:mod:`visionlab.kinds`). Tasks are data: the built-in ones are ``configs/tasks/<name>.yaml``
(shipped in the wheel beside the recipes), a user's are the YAMLs of the user task folder
(:func:`visionlab.paths.tasks_home`, registered after the built-in and plugin tasks on the first
lookup they are needed for), and plugins (:mod:`visionlab.plugins`) register theirs with
:func:`register_task`. Registering the same name twice is refused; an unknown name fails with the
list of known ones. Importing this module does not import torch, so ``visionlab tasks`` is fast.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from visionlab.errors import VisionlabError
from visionlab.paths import packaged_configs
from visionlab.plugins import load_plugins

__all__ = ["TaskSpec", "TASK_KEYS", "BUILTIN_TASKS", "register_task", "get_task", "find_task", "checkpoint_task", "list_tasks",
           "task_names", "packaged_recipe", "read_task_file", "task_yaml", "check_task_name"]

#: The keys of a task YAML, in the order ``visionlab tasks new`` writes them.
TASK_KEYS = ("name", "kind", "classes", "description", "dataset", "recipe", "seed_model", "seed_project")
#: The built-in tasks, in the order they are listed: ``configs/tasks/<name>.yaml`` each.
BUILTIN_TASKS = ("minerals", "waste", "cracks", "caltech", "landcover")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
#: Names Windows gives to devices, with or without an extension: no folder can have them there.
_RESERVED = re.compile(r"(?i)con|prn|aux|nul|com[0-9]|lpt[0-9]")


def packaged_recipe(name: str) -> Path | None:
    """``configs/<name>.yaml`` shipped with visionlab (in the wheel, or in the source checkout), if any."""
    folder = packaged_configs()
    cand = folder / f"{name}.yaml" if folder is not None else None
    return cand if cand is not None and cand.exists() else None


def resolve_recipe(ref: str, base: Path | None = None) -> Path:
    """The file a recipe reference names: ``configs/<name>.yaml`` is visionlab's own recipe when it ships
    one; any other relative path is relative to ``base`` (a task YAML's folder; the current folder when None)."""
    path = Path(ref).expanduser()
    own = packaged_recipe(path.stem) if path.parent == Path("configs") else None
    return own or (path if path.is_absolute() else (base or Path()) / path)


@functools.lru_cache(maxsize=None)
def _recipe_values(path: Path) -> dict[str, Any]:
    import yaml

    return yaml.safe_load(path.read_text()) or {}


@dataclass(frozen=True)
class TaskSpec:
    """What a task is: its kind, its recipe (the YAML of its default training), its dataset and classes.

    ``model`` and ``input_size`` are what the recipe trains; ``seed_model`` is the architecture
    of the seed project (trained by the seed-faithful recipe ``configs/<name>-scratch.yaml``).
    ``source`` is the task YAML it was read from ("" for a task registered in Python)."""

    name: str
    kind: str  # a registered kind: visionlab.kinds.get_kind(kind)
    default_classes: tuple[str, ...]  # the classes of the seed dataset (and of its synthetic stand-in)
    description: str
    dataset: str = ""  # name understood by ``visionlab data download``
    recipe: str = ""  # the recipe's YAML file (relative to ``source``'s folder); "" = configs/<name>.yaml shipped with visionlab
    seed_model: str = ""
    seed_project: str = ""
    source: str = ""

    @property
    def recipe_path(self) -> Path | None:
        """The recipe's file (None for a task registered without one)."""
        if not self.recipe:
            return packaged_recipe(self.name)
        return resolve_recipe(self.recipe, Path(self.source).parent if self.source else None)

    @property
    def origin(self) -> str:
        """Where the task comes from: 'built-in', the path of its task YAML, or 'Python (register_task)'."""
        builtin = self.name in BUILTIN_TASKS and self.source == str(_builtin_file(self.name))
        return "built-in" if builtin else self.source or "Python (register_task)"

    def recipe_values(self) -> dict[str, Any]:
        """The recipe's keys as written (read once)."""
        path = self.recipe_path
        return dict(_recipe_values(path.resolve())) if path is not None and path.exists() else {}

    @property
    def model(self) -> str:
        """The model the recipe trains (the seed model for a task without a recipe)."""
        return str(self.recipe_values().get("model") or self.seed_model)

    @property
    def input_size(self) -> int:
        """The recipe's input side: its ``image_size`` or, per kind, ``tile_size`` (0 when it says none)."""
        from visionlab.kinds import get_kind

        return int(self.recipe_values().get(get_kind(self.kind).input_key) or 0)


# ----------------------------------------------------------------------------- task YAMLs


def _bad(path: Path, what: str, hint: str | None = None) -> VisionlabError:
    return VisionlabError(f"{path}: {what}", hint or f"Known keys: {', '.join(TASK_KEYS)} (README: Adding a task).")


def _yaml_mapping(path: Path) -> dict[str, Any]:
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise _bad(path, f"unreadable ({type(exc).__name__}).", "Fix or remove the file.") from None
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" (line {where.line + 1})" if where is not None else ""
        raise _bad(path, f"not valid YAML{line}.", "Fix the syntax, or remove the file.") from None
    if not isinstance(data, dict):
        raise _bad(path, "not a mapping of key: value.")
    return data


def check_task_name(name: Any, where: str = "") -> str:
    """``name`` if it can name a task (and its runs folder): letters, digits, ``_ . -``, not starting with a dot."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise VisionlabError(f"{where + ' ' if where else ''}{name!r} is not a task name.", "Use letters, digits, '_', '-' and '.', e.g. bees or my-bees.")
    if _RESERVED.fullmatch(name.split(".")[0]):
        raise VisionlabError(f"{where + ' ' if where else ''}{name!r} is not a task name: Windows reserves it for a device, "
                             "so its runs folder could not be made there.", "Pick another name, e.g. my-bees.")
    return name


def read_task_file(path: str | Path) -> TaskSpec:
    """The :class:`TaskSpec` a task YAML describes (its ``name`` defaults to the file's stem); a
    missing or unknown key, or a value of the wrong type, is a one-line error naming the file and the key."""
    path = Path(path)
    data = _yaml_mapping(path)
    for key in data:
        if key not in TASK_KEYS:
            close = difflib.get_close_matches(str(key), TASK_KEYS, n=1)
            raise _bad(path, f"unknown key {key!r}{f' (did you mean {close[0]!r}?)' if close else ''}.")
    for key in ("kind", "classes"):
        if data.get(key) in (None, "", []):
            raise _bad(path, f"key {key!r} is missing.")
    for key in set(TASK_KEYS) - {"classes"}:
        if not isinstance(data.get(key, ""), str):
            raise _bad(path, f"key {key!r} must be text, got {data[key]!r}.")
    classes = data["classes"]
    if not isinstance(classes, list) or not all(isinstance(c, (str, int)) and str(c) for c in classes):
        raise _bad(path, f"key 'classes' must be a list of class names, got {classes!r}.")
    if len(set(map(str, classes))) != len(classes):
        raise _bad(path, "key 'classes' names a class twice.")
    name = check_task_name(data.get("name", path.stem), f"{path}: key 'name':")
    return TaskSpec(name=name, kind=data["kind"], default_classes=tuple(map(str, classes)), description=data.get("description", ""),
                    dataset=data.get("dataset", ""), recipe=data.get("recipe", ""), seed_model=data.get("seed_model", ""),
                    seed_project=data.get("seed_project", ""), source=str(path))


def task_yaml(spec: TaskSpec, comment: str = "") -> str:
    """The text of ``spec``'s task YAML (the keys of :data:`TASK_KEYS` it sets), under ``comment`` lines."""
    import yaml

    values = {"name": spec.name, "kind": spec.kind, "classes": list(spec.default_classes), "description": spec.description,
              "dataset": spec.dataset, "recipe": spec.recipe, "seed_model": spec.seed_model, "seed_project": spec.seed_project}
    body = yaml.safe_dump({k: v for k, v in values.items() if v}, sort_keys=False, allow_unicode=True, default_flow_style=None, width=100)
    return "".join(f"# {line}\n" for line in comment.splitlines()) + body


def _builtin_file(name: str) -> Path:
    return (packaged_configs() or Path("configs")) / "tasks" / f"{name}.yaml"


_TASKS: dict[str, TaskSpec] = {name: read_task_file(_builtin_file(name)) for name in BUILTIN_TASKS}

def _user_task(path: Path) -> TaskSpec:
    """A task YAML of the user folder, checked: a known kind, a recipe that exists (default: the kind's general one)."""
    from visionlab.kinds import get_kind, kind_names

    spec = read_task_file(path)
    try:
        kind = get_kind(spec.kind)
    except VisionlabError:
        raise _bad(path, f"key 'kind': unknown task kind {spec.kind!r}.", f"Known kinds: {', '.join(kind_names())}.") from None
    if not spec.recipe and kind.general_recipe:
        spec = dataclasses.replace(spec, recipe=f"configs/{kind.general_recipe}.yaml")
    recipe = spec.recipe_path
    if recipe is None or not recipe.is_file():
        raise _bad(path, f"key 'recipe': {spec.recipe or 'none given'} is not a file.",
                   "Name a recipe YAML: a path relative to this file, or configs/<recipe>.yaml of visionlab's own.")
    return spec


def _user_tasks() -> tuple[dict[str, TaskSpec], dict[str, VisionlabError]]:
    """The task YAMLs of the user folder, read at each lookup (a file written a moment ago counts;
    each file is parsed once while unchanged), and the broken ones: a file that does not read, or
    whose name a built-in, a registered task or another file has, is its one-line error, by the
    task's name (the file's stem when it does not read). A broken file spoils only its own task."""
    from visionlab.paths import tasks_home

    folder = tasks_home()
    found: dict[str, TaskSpec] = {}
    broken: dict[str, VisionlabError] = {}
    if not folder.is_dir():
        return found, broken
    for path in sorted([*folder.glob("*.yaml"), *folder.glob("*.yml")]):
        try:
            spec = _user_task_cached(path.resolve(), path.stat().st_mtime_ns)
        except VisionlabError as exc:
            broken.setdefault(path.stem, exc)
            continue
        have = _TASKS.get(spec.name) or found.get(spec.name)
        if have is not None:
            taken = "is a built-in task" if have.origin == "built-in" else f"is already registered ({have.origin})"
            broken.setdefault(spec.name, _bad(path, f"task {spec.name!r} {taken}.",
                                              "Rename the task: its 'name' key, or the file when it has none."))
            continue
        found[spec.name] = spec
    return found, broken


@functools.lru_cache(maxsize=256)
def _user_task_cached(path: Path, mtime_ns: int) -> TaskSpec:
    return _user_task(path)


def register_task(spec: TaskSpec) -> TaskSpec:
    """Add a task; a duplicate name (of a built-in task too) is an error, as is an unknown kind."""
    from visionlab.kinds import get_kind

    if spec.name in _TASKS:
        raise ValueError(f"task {spec.name!r} is already registered")
    get_kind(spec.kind)  # unknown kind -> the list of known ones
    _TASKS[spec.name] = spec
    return spec


def _all_tasks() -> dict[str, TaskSpec]:
    """Every task: the built-in ones, then those of plugins, then the user folder's (a broken user
    file is said when the tasks are listed, and when its own task is looked up)."""
    load_plugins()
    return {**_TASKS, **_user_tasks()[0]}


def task_names() -> list[str]:
    return list(_all_tasks())


def list_tasks() -> list[TaskSpec]:
    """All tasks: the built-in ones, then those of plugins, then the user folder's; a broken user
    task file is a one-line error naming it (fix or remove it to list the others)."""
    load_plugins()
    found, broken = _user_tasks()
    if broken:
        raise next(iter(broken.values()))
    return list({**_TASKS, **found}.values())


def find_task(name: str) -> TaskSpec | None:
    """The task called ``name``, or None when none is (plugins and the user folder are read first);
    a broken user file of that name is its one-line error."""
    if name in _TASKS:
        return _TASKS[name]
    load_plugins()
    found, broken = _user_tasks()
    if name in broken and name not in _TASKS:
        raise broken[name]
    return _TASKS.get(name) or found.get(name)


def get_task(name: str) -> TaskSpec:
    """Look a task up by name; unknown names fail with the list of known ones."""
    spec = find_task(name)
    if spec is None:
        raise VisionlabError(
            f"unknown task {name!r}.", f"Known tasks: {', '.join(task_names())} (see 'visionlab tasks')."
        )
    return spec


def checkpoint_task(state: dict[str, Any]) -> TaskSpec:
    """The task of a checkpoint: the registered one of its name, else the task it describes itself
    (its name, kind and classes), so a model trained on a folder with no task YAML (``visionlab train
    --data DIR``) is evaluated, predicted, served and exported without one."""
    name = str(state["task"])
    return find_task(name) or TaskSpec(name=name, kind=str(state["kind"]), default_classes=tuple(map(str, state["classes"])),
                                       description=f"task of the checkpoint (not registered): {len(state['classes'])} classes")
