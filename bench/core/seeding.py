"""Seeds derived from a cell's key, so a cell's numbers do not depend on which other cells ran,
in which order, on which executor."""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterator
from typing import Any

import torch


def derive_seed(*key: Any) -> int:
    """A 63-bit seed from any JSON-serialisable key (order of dict keys does not matter)."""
    text = json.dumps(key, sort_keys=True, default=str, separators=(",", ":"))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1


@contextlib.contextmanager
def seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Seed torch's default generator of `device` for the block, restoring it afterwards.

    Estimators draw through torch.distributions, which only use default generators.
    """
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices, device_type=device.type if devices else "cuda"):
        if device.type == "cuda":
            torch.cuda.manual_seed(seed)
        else:
            torch.default_generator.manual_seed(seed)
        yield
