"""Streaming moments of a stream of chunks, accumulated in constant memory on the chunks' device
(the runner's inner loop; see StreamingMoments)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from gradbench.core.moments import Moments

_F64 = torch.float64
BLOCK_BYTES = 1 << 19  # one column block of a CPU chunk: 512 KiB, a quarter of a core's L2


class StreamingMoments:
    """Moments of a stream of chunks x [n, C], accumulated in constant memory on x's device.

    Why not `Moments.of` + `merge` per chunk: in the runner's inner loop those cost ~70
    operations on [C]-sized tensors per chunk besides the passes over the data, as long as
    drawing the samples takes at cache-sized chunks. Here a chunk only adds the power sums of its
    deviations from a fixed per-coordinate shift c (8 passes, ~12 operations):
        S_k += sum_i (x_i - c)^k, k = 1..4,
    and `moments()` converts them to central moments once, with the binomial shift that
    `Moments.of` uses for its corrected two-pass (delta = S1 / n):
        mean = c + delta,  M2 = S2 - S1 delta,  M3 = S3 - 3 delta S2 + 2 n delta^3,
        M4 = S4 - 4 delta S3 + 6 delta^2 S2 - 3 n delta^4.
    c is the mean of a coordinate's first chunk with a finite value, clamped to that chunk's
    [min, max] (so a constant coordinate gets its value exactly and moments exactly 0). For iid
    chunks |delta| is a few std / sqrt(first chunk size), so these corrections are small and
    nothing cancels: S_k are sums about (nearly) the mean, like the two-pass's second pass.
    Summing the chunks' S_k adds one rounding per chunk, like a merge does.

    NaN/Inf entries are excluded per coordinate and counted, as in `Moments.of`. On the CPU an
    all-finite chunk (one host-side check of S1) skips the masks; elsewhere the masked path
    always runs, and the only host reads are the checks for coordinates still without a shift,
    after chunks 1, 2, 4, 8, ... while any remain: no host round-trip per chunk.
    """

    def __init__(self, coords: int, device: torch.device | str = "cpu") -> None:
        self.coords = coords
        self._shift = torch.zeros(coords, dtype=_F64, device=device)
        self._unset = torch.ones(coords, dtype=torch.bool, device=device)
        self._maybe_unset = True  # host-side: may some coordinate still lack a shift?
        self._chunks = 0
        self._next_check = 1
        self._sums = torch.zeros(4, coords, dtype=_F64, device=device)  # S1..S4
        self._count = torch.zeros(coords, dtype=torch.int64, device=device)
        self._nonfinite = torch.zeros(coords, dtype=torch.int64, device=device)

    def add(self, x: Tensor) -> None:
        """Add a chunk x [n, C] (any float dtype; float64 accumulation)."""
        if x.ndim != 2 or x.shape[1] != self.coords:
            raise ValueError(f"StreamingMoments over {self.coords} coords got a chunk of shape "
                             f"{tuple(x.shape)}; expected [n, {self.coords}]")
        rows = x.shape[0]
        if rows == 0:
            return
        x = x.detach().to(_F64)
        finite = None
        if self._maybe_unset:
            finite = torch.isfinite(x)
            self._set_shifts(x, finite)
        if x.device.type != "cpu":
            self._add_columns(x, slice(None), finite)
            return
        # Column blocks of at most BLOCK_BYTES, so the ~8 passes over each block run in cache:
        # one chunk of 64 estimates of 4e5 coordinates (a 784 x 256 Bayesian layer) took
        # 13 ms per estimate in whole-chunk passes, 3 ms in blocks. Per-column sums do not
        # depend on the blocking; a chunk under BLOCK_BYTES is one block, as before.
        width = max(1, BLOCK_BYTES // (8 * rows))
        for start in range(0, self.coords, width):
            cols = slice(start, min(self.coords, start + width))
            self._add_columns(x[:, cols], cols, None if finite is None else finite[:, cols])

    def _add_columns(self, x: Tensor, cols: slice, finite: Tensor | None) -> None:
        rows = x.shape[0]
        if finite is None and x.device.type == "cpu":
            d = x - self._shift[cols]
            s1 = d.sum(0)
            # A NaN or Inf anywhere makes the sum non-finite: one cheap check picks the path.
            if math.isfinite(float(s1.sum())):
                self._accumulate(d, s1, cols)
                self._count[cols] += rows
                return
        if finite is None:
            finite = torch.isfinite(x)
        count = finite.sum(0)
        d = torch.where(finite, x - self._shift[cols], 0.0)
        self._accumulate(d, d.sum(0), cols)
        self._count[cols] += count
        self._nonfinite[cols] += rows - count

    def _accumulate(self, d: Tensor, s1: Tensor, cols: slice) -> None:
        power = d * d
        s2 = power.sum(0)
        power.mul_(d)  # in place: d^3, then d^4, in one temporary
        s3 = power.sum(0)
        power.mul_(d)
        self._sums[:, cols] += torch.stack((s1, s2, s3, power.sum(0)))

    def _set_shifts(self, x: Tensor, finite: Tensor) -> None:
        # Only coordinates without finite values so far take a shift; they have S_k = 0 and
        # count 0, so choosing their shift now changes nothing already accumulated.
        count = finite.sum(0)
        has = count > 0
        mean = torch.where(finite, x, 0.0).sum(0) / count.clamp(min=1).to(_F64)
        lo = torch.where(finite, x, math.inf).amin(0)
        hi = torch.where(finite, x, -math.inf).amax(0)
        take = self._unset & has
        self._shift = torch.where(take, torch.minimum(torch.maximum(mean, lo), hi), self._shift)
        self._unset = self._unset & ~has
        self._chunks += 1
        if self._chunks == self._next_check:  # host reads after chunks 1, 2, 4, ...
            self._next_check *= 2
            self._maybe_unset = bool(self._unset.any())

    def moments(self) -> Moments:
        """The moments of every chunk added so far (the state is left unchanged)."""
        n = self._count
        fn = n.clamp(min=1).to(_F64)
        s1, s2, s3, s4 = self._sums
        delta = s1 / fn
        mean = torch.where(n > 0, self._shift + delta, 0.0)
        m2 = (s2 - s1 * delta).clamp(min=0.0)
        m3 = s3 - 3.0 * delta * s2 + 2.0 * fn * delta**3
        m4 = (s4 - 4.0 * delta * s3 + 6.0 * delta**2 * s2 - 3.0 * fn * delta**4).clamp(min=0.0)
        return Moments(count=n.clone(), mean=mean, m2=m2, m3=m3, m4=m4,
                       nonfinite=self._nonfinite.clone())
