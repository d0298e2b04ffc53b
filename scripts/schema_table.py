"""Rewrite README.md's schema tables from the declared schema (gradbench.core.schema), so the
documentation cannot drift from the code (tests/test_readme.py fails when they differ).

    python scripts/schema_table.py [README.md]
"""

from __future__ import annotations

import sys
from pathlib import Path

from gradbench.core import schema

BLOCKS = {
    "cells": lambda: schema.markdown_table(schema.COLUMNS),
    "training": lambda: schema.markdown_table(schema.TRAINING_COLUMNS, schema.TRAINING_FAMILIES),
}


def marker(name: str, end: bool = False) -> str:
    return f"<!-- schema:{name}:{'end' if end else 'begin'} (scripts/schema_table.py) -->"


def rewrite(text: str) -> str:
    for name, table in BLOCKS.items():
        begin, end = marker(name), marker(name, end=True)
        if begin not in text or end not in text:
            raise SystemExit(f"README lacks the {name} schema markers: {begin} ... {end}")
        head, rest = text.split(begin, 1)
        tail = rest.split(end, 1)[1]
        text = f"{head}{begin}\n{table()}\n{end}{tail}"
    return text


if __name__ == "__main__":
    path = Path(sys.argv[1] if len(sys.argv) > 1 else "README.md")
    path.write_text(rewrite(path.read_text()))
