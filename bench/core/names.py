"""Unknown names get a did-you-mean. Core code raises plain ValueErrors; the app turns them into
one-line errors at its boundary."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class UnknownName(ValueError, LookupError):
    """A name that is not registered (an estimator, suite, setting, ...): the message lists the
    valid ones and the closest match."""


def unknown_name(kind: str, name: str, valid: Iterable[str]) -> UnknownName:
    """An error for an unknown name, with a did-you-mean and the valid names."""
    valid = sorted(valid)
    close = difflib.get_close_matches(name, valid, n=1, cutoff=0.5)
    if not close:  # a case slip ("K" for "k") is the commonest typo the ratio misses
        close = [v for v in valid if v.lower() == name.lower()][:1]
    hint = f" Did you mean '{close[0]}'?" if close else ""
    return UnknownName(f"unknown {kind} '{name}'.{hint} Valid: {', '.join(valid)}.")
