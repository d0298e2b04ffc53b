"""Where estimators and suites come from: modules that register them when imported.

- Built-ins: the packages gradbench.estimators and gradbench.suites.
- Installed packages: entry points in the groups `gradbench.estimators` and `gradbench.suites`
  (pyproject: `[project.entry-points."gradbench.estimators"] mine = "mypkg.my_estimators"`).
- Explicit plugins: `bench run --plugin MODULE_OR_PATH`, imported by `load_plugin` in the parent
  and again in every worker process (the executors pass the same specs along).

Providers register themselves when imported, so the registries find them by module name, the
same way for built-ins and third parties. A broken installed plugin must not break gradbench:
its error is kept in `failures()` for `bench list` to show.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from importlib.metadata import entry_points
from pathlib import Path
from types import ModuleType

BUILTIN_MODULES = ("gradbench.estimators", "gradbench.suites")
ENTRY_POINT_GROUPS = ("gradbench.estimators", "gradbench.suites")

_state = {"loaded": False, "loading": False}
_failures: dict[str, str] = {}


def load_registered() -> None:
    """Import the built-in providers and every installed entry point, once per process."""
    if _state["loaded"] or _state["loading"]:
        return  # "loading": a provider's import is asking for the registry; let it finish
    _state["loading"] = True
    try:
        for module in BUILTIN_MODULES:
            importlib.import_module(module)
        for group in ENTRY_POINT_GROUPS:
            for point in entry_points(group=group):
                try:
                    point.load()
                except Exception as error:  # a broken plugin is reported, not fatal
                    _failures[f"{group}:{point.name}"] = f"{type(error).__name__}: {error}"
        _state["loaded"] = True
    finally:
        _state["loading"] = False


def failures() -> dict[str, str]:
    """Installed plugins that failed to load: "group:name" -> the error, on one line."""
    load_registered()
    return dict(_failures)


def load_plugin(spec: str) -> ModuleType:
    """Import a plugin given as a module name (`mypkg.estimators`) or a path to a .py file.

    A file gets a module name derived from its absolute path, so importing it twice (parent
    and worker, or two calls) registers its estimators once. Raises ValueError naming the fix.
    """
    load_registered()
    path = Path(spec)
    if spec.endswith(".py") or path.is_file():
        return _load_file(path)
    if spec in sys.modules:
        return sys.modules[spec]
    try:
        return importlib.import_module(spec)
    except ModuleNotFoundError as error:
        missing = error.name or ""
        if not spec.startswith(missing):
            raise  # the plugin itself imports something that is missing: its own error
    # Not importable as installed: look in the current folder too, as `python -m` would (a
    # console script's sys.path does not include it). Workers start in the same folder.
    here = str(Path.cwd())
    if here not in sys.path:
        sys.path.append(here)
        try:
            return importlib.import_module(spec)
        except ModuleNotFoundError as error:
            if not spec.startswith(error.name or ""):
                raise
    raise ValueError(f"--plugin {spec}: no module named {spec!r} (installed, on PYTHONPATH or "
                     "in the current folder); give an importable module or a path to a .py file")


def _load_file(path: Path) -> ModuleType:
    if not path.is_file():
        raise ValueError(f"--plugin {path}: no such file; give a path to a .py file or an "
                         "importable module name")
    resolved = path.resolve()
    digest = hashlib.sha256(str(resolved).encode()).hexdigest()[:10]
    name = f"gradbench_plugin_{resolved.stem}_{digest}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, resolved)
    if spec is None or spec.loader is None:
        raise ValueError(f"--plugin {path}: cannot be imported as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def load_plugins(specs: tuple[str, ...] | list[str]) -> None:
    """load_plugin for each spec (what a worker runs before its first cell)."""
    for spec in specs:
        load_plugin(spec)
