"""Errors the app boundary (CLI, pytest plugin) reports as one line, exit code 2, no traceback."""

from __future__ import annotations

from gradbench.core.names import UnknownName
from gradbench.results.store import ResultsError


class BenchError(Exception):
    """Bad input or an impossible request: the message says what to do instead."""


# Everything the boundary reports as bad input: the app's own errors, unknown names from the
# registries, and unreadable or unwritable results.
USER_ERRORS = (BenchError, UnknownName, ResultsError)
