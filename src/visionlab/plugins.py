"""Plugins: modules that register their own task kinds and tasks when imported.

visionlab imports, once, before the first task or kind lookup:

* every module named in the environment variable ``VISIONLAB_PLUGINS`` (comma-separated
  module names, importable from ``sys.path``: ``VISIONLAB_PLUGINS=my_kinds,lab.tasks``);
* every entry point of the group ``visionlab.plugins`` of the installed packages
  (``[project.entry-points."visionlab.plugins"] mine = "my_package.visionlab_plugin"``).

A plugin calls :func:`visionlab.kinds.register_kind` and :func:`visionlab.registry.register_task`
at import; see ``examples/regression_kind.py``. A plugin that fails to import is an error that
names it.
"""

from __future__ import annotations

import functools
import importlib
import os

from visionlab.errors import VisionlabError

__all__ = ["ENV_VAR", "ENTRY_POINT_GROUP", "load_plugins", "plugin_modules"]

ENV_VAR = "VISIONLAB_PLUGINS"
ENTRY_POINT_GROUP = "visionlab.plugins"
_STATE = {"loaded": set()}  # module names imported (or being imported) so far


def plugin_modules() -> list[str]:
    """The plugin modules named by ``VISIONLAB_PLUGINS`` and the ``visionlab.plugins`` entry points."""
    names = [n.strip() for n in os.environ.get(ENV_VAR, "").split(",") if n.strip()]
    return list(dict.fromkeys(names + _entry_point_modules()))


@functools.lru_cache(maxsize=1)
def _entry_point_modules() -> list[str]:
    """Scanned once per process: the installed packages do not change under a running program."""
    from importlib.metadata import entry_points

    return [ep.value.split(":")[0] for ep in entry_points(group=ENTRY_POINT_GROUP)]


def load_plugins() -> None:
    """Import the plugin modules not imported yet (a plugin's own registrations call back here: no-op)."""
    for name in plugin_modules():
        if name in _STATE["loaded"]:
            continue
        _STATE["loaded"].add(name)
        try:
            importlib.import_module(name)
        except ImportError as exc:
            _STATE["loaded"].discard(name)
            raise VisionlabError(f"plugin {name!r} could not be imported ({exc}).",
                                 f"Fix {ENV_VAR} or the package's {ENTRY_POINT_GROUP!r} entry point.") from None
        except BaseException:
            _STATE["loaded"].discard(name)
            raise
