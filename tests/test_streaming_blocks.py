"""StreamingMoments on chunks wider than one column block (BLOCK_BYTES) gives what one
whole-chunk pass gives: the same counts and non-finite counts exactly, the same moments up to
the rounding of a differently ordered sum (it is not reordered in practice; 1e-13 allows it)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gradbench.core import streaming
from gradbench.core.streaming import StreamingMoments


def stream(x: torch.Tensor, rows: int) -> StreamingMoments:
    acc = StreamingMoments(x.shape[1])
    for start in range(0, x.shape[0], rows):
        acc.add(x[start:start + rows])
    return acc


@pytest.mark.parametrize("rows", [64, 25])
def test_blocked_chunks_equal_whole_chunk_passes(monkeypatch, rows: int) -> None:
    generator = torch.Generator().manual_seed(0)
    x = 3.0 + torch.randn(200, 3000, generator=generator, dtype=torch.float64)
    x[:, 5] = 1e8 + x[:, 5]  # a large offset, the shift's reason to exist
    x[3, 2500] = float("nan")  # non-finite values in a late block, after the shifts are set
    x[150, 17] = float("inf")
    x[:80, 1200] = float("nan")  # a column whose first chunk has no finite value
    assert rows * 3000 * 8 > streaming.BLOCK_BYTES  # several blocks per chunk
    blocked = stream(x, rows).moments()
    monkeypatch.setattr(streaming, "BLOCK_BYTES", 1 << 40)  # one block per chunk
    whole = stream(x, rows).moments()
    assert torch.equal(blocked.count, whole.count)
    assert torch.equal(blocked.nonfinite, whole.nonfinite)
    assert blocked.nonfinite[2500] == 1 and blocked.nonfinite[1200] == 80
    for name in ("mean", "m2", "m3", "m4"):
        a, b = getattr(blocked, name).numpy(), getattr(whole, name).numpy()
        np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-13 * np.abs(b).max())
