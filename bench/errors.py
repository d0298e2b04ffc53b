"""The one exception type that the CLI turns into a one-line error and exit code 2."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class BenchError(Exception):
    """Bad input or an impossible request: the message says what to do instead."""


def unknown_name(kind: str, name: str, valid: Iterable[str]) -> BenchError:
    """An error for an unknown name, with a did-you-mean and the valid names."""
    valid = sorted(valid)
    close = difflib.get_close_matches(name, valid, n=1, cutoff=0.5)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    return BenchError(f"unknown {kind} '{name}'.{hint} Valid: {', '.join(valid)}.")
