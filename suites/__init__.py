"""Problem suites. Adding one: a new module in this package with a `@register_suite` builder.
Every module here is imported on first use of the registry."""

import importlib
import pkgutil

from suites.registry import Setting, Suite, all_suites, get_suite, register_suite

for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_") and _module.name != "registry":
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["Setting", "Suite", "all_suites", "get_suite", "register_suite"]
