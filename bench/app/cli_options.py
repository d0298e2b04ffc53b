"""Option values the `bench` commands share, checked at the boundary (one-line BenchError for
bad input): --plugin, --threads, integers written as 4000 or 1e6, and the executor that
`bench run` and `bench train` start from them."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from gradbench.app.errors import BenchError

if TYPE_CHECKING:  # the executors (and torch) load only for the commands that run something
    from gradbench.app.executors import Executor


def load_plugins(specs: list[str] | None) -> tuple[str, ...]:
    """Import each --plugin here (the workers import them again); one-line errors."""
    from gradbench.core.plugins import load_plugin

    for spec in specs or ():
        try:
            load_plugin(spec)
        except ValueError as error:
            raise BenchError(str(error)) from None
        except Exception as error:
            raise BenchError(f"--plugin {spec} failed to import: {type(error).__name__}: "
                             f"{error}") from None
    return tuple(specs or ())


def check_threads(threads: int) -> None:
    cores = os.cpu_count() or 1
    if not 1 <= threads <= cores:
        raise BenchError(f"--threads {threads}: give 1 to {cores} (this machine's CPU count)")


def whole_number(option: str, text: str) -> int:
    """An integer option written as 4000, 1e6 or 9223372036854775807 (the settings' parser)."""
    from gradbench.core.params import parse_value

    try:
        return parse_value(option, int, text)
    except ValueError as error:
        raise BenchError(str(error)) from None


def start_executor(name: str, *, workers: int | None, threads: int, scheduler: str | None,
                   plugins: list[str] | None) -> Executor:
    """Check --threads, tune this process for it (process-wide tuning belongs at CLI start),
    import the plugins, then make the executor that runs the cells or trajectories."""
    from gradbench.app.executors import make_executor
    from gradbench.app.process import configure

    check_threads(threads)
    configure(threads)
    loaded = load_plugins(plugins)
    return make_executor(name, workers=workers, threads=threads, scheduler=scheduler,
                         plugins=loaded)
