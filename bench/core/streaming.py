"""Streaming statistics of a stream of chunks, in constant memory on the chunks' device (the
runner's inner loop): moments per coordinate, sums per group of consecutive estimates (for the
grouped jackknife), and the largest deviations per coordinate (for the tail diagnostic)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from gradbench.core.moments import Moments
from gradbench.core.tail_buffer import TailBuffer, Tails

_F64 = torch.float64
BLOCK_BYTES = 1 << 19  # one column block of a CPU chunk: 512 KiB, a quarter of a core's L2
MAX_GROUPS = 64
MANY_SLICES = 2  # a column block spanning more groups takes its powers once (_batched_sums)
GROUP_BYTES = 128 << 20  # memory for the per-group sums (two float64 [G, C] tensors)


def group_count(samples: int, coords: int) -> int:
    """Groups of consecutive estimates for the jackknife: 64 (63 degrees of freedom), fewer when
    [G, C] sums would exceed GROUP_BYTES (at least 8), never more than the estimates. A pure
    function of the cell's key (samples, the problem's size): identical on every executor."""
    by_memory = GROUP_BYTES // (16 * max(1, coords))
    return int(max(1, min(samples, MAX_GROUPS, max(8, by_memory))))


@dataclass(frozen=True)
class GroupSums:
    """Per group g of consecutive estimates (estimate j is in group floor(j G / samples)) and
    coordinate c: the finite count and the sums of (x - shift) and (x - shift)^2, float64."""

    count: Tensor  # [G, C] int64
    s1: Tensor  # [G, C]
    s2: Tensor  # [G, C]
    shift: Tensor  # [C]


class StreamingMoments:
    """Moments of a stream of chunks x [n, C], accumulated in constant memory on x's device.

    Why not `Moments.of` + `merge` per chunk: in the runner's inner loop those cost ~70
    operations on [C]-sized tensors per chunk besides the passes over the data, as long as
    drawing the samples takes at cache-sized chunks. Here a chunk only adds the power sums of its
    deviations from a fixed per-coordinate shift c:
        S_k += sum_i (x_i - c)^k, k = 1..4,
    and `moments()` converts them to central moments once, with the binomial shift that
    `Moments.of` uses for its corrected two-pass (delta = S1 / n):
        mean = c + delta,  M2 = S2 - S1 delta,  M3 = S3 - 3 delta S2 + 2 n delta^3,
        M4 = S4 - 4 delta S3 + 6 delta^2 S2 - 3 n delta^4.
    c is the mean of a coordinate's first chunk with a finite value, clamped to that chunk's
    [min, max] (so a constant coordinate gets its value exactly and moments exactly 0). For iid
    chunks |delta| is a few std / sqrt(first chunk size), so these corrections are small and
    nothing cancels: S_k are sums about (nearly) the mean, like the two-pass's second pass.

    With `samples` (the stream's total length, rows arriving in order), the sums are taken per
    group of consecutive estimates too (S1 and S2 per group: `groups()`), by splitting each
    chunk's reductions at the group boundaries, so grouping costs no extra pass over the data.
    With `tail_coords`, the `tail_size` largest |x - c| of those coordinates are kept, and with
    `blocks` (column ranges, one per parameter tensor) the largest ||x_b - c_b||^2 per block
    (staged up to STAGE_ROWS rows, so the memory is O((tail_size + STAGE_ROWS) x tracked)).

    NaN/Inf entries are excluded per coordinate and counted, as in `Moments.of`. On the CPU an
    all-finite chunk (one host-side check of S1) skips the masks; elsewhere the masked path
    always runs, and the only host reads are the checks for coordinates still without a shift,
    after chunks 1, 2, 4, 8, ... while any remain: no host round-trip per chunk. Counts are
    rows added minus non-finite entries (per coordinate and per group), so an all-finite chunk
    updates no count tensor.

    float32 chunks on the CPU: a chunk's sums are taken in float32 and promoted to float64 before
    they are accumulated (the statistics in float64 took more time than the float32 estimates
    themselves; converting the chunk alone cost as much as drawing it). What that costs in
    accuracy: the shift is rounded to float32, so d = x - c is exact or within 2^-24 |d|, and a
    chunk's float32 sums (torch's cascade sums) are within ~1e-6 of sum |d|^k, of the order of
    the float32 estimates' own rounding, 2^-24 |x| each, which float64 accumulation cannot undo
    (measured: moments within 3e-7 relative of the float64 path's). A chunk whose float32 sums
    are not finite (a NaN, an overflow of d^4) or whose S4 is below 2^-100 (d^4 underflowing)
    is taken again in float64, as before.
    """

    def __init__(self, coords: int, device: torch.device | str = "cpu", *,
                 samples: int | None = None, tail_coords: Tensor | None = None,
                 tail_size: int = 0, blocks: Sequence[tuple[int, int]] = ()) -> None:
        self.coords = coords
        self._shift = torch.zeros(coords, dtype=_F64, device=device)
        self._unset = torch.ones(coords, dtype=torch.bool, device=device)
        self._maybe_unset = True  # host-side: may some coordinate still lack a shift?
        self._shift32: Tensor | None = None  # the shift in float32, while it is exactly that
        self._chunks = 0
        self._next_check = 1
        self._sums = torch.zeros(4, coords, dtype=_F64, device=device)  # S1..S4
        # Counts are rows added minus non-finite entries, per coordinate and per group: only
        # the non-finite tallies are tensors, touched only by chunks that hold such entries.
        self._nonfinite = torch.zeros(coords, dtype=torch.int64, device=device)
        self._rows = 0
        self._samples = samples
        self._groups = group_count(samples, coords) if samples else 1
        self._group_sums = (torch.zeros(2, self._groups, coords, dtype=_F64, device=device)
                            if samples else None)
        self._group_rows = [0] * self._groups
        self._group_nonfinite = (torch.zeros(self._groups, coords, dtype=torch.int64,
                                             device=device) if samples else None)
        if tail_coords is not None and torch.equal(tail_coords.cpu(), torch.arange(coords)):
            tail_coords = None  # every column, in order: no gather (a copy of each chunk)
        self._tail_runs = _runs(tail_coords) if tail_coords is not None else None
        self._finite_chunk = False  # did the chunk being added hold only finite values?
        self._tails = TailBuffer(tail_coords, tail_size, blocks, device) if tail_size else None

    def add(self, x: Tensor) -> None:
        """Add a chunk x [n, C] (any float dtype; float64 accumulation)."""
        if x.ndim != 2 or x.shape[1] != self.coords:
            raise ValueError(f"StreamingMoments over {self.coords} coords got a chunk of shape "
                             f"{tuple(x.shape)}; expected [n, {self.coords}]")
        rows = x.shape[0]
        if rows == 0:
            return
        if self._samples is not None and self._rows + rows > self._samples:
            raise ValueError(f"StreamingMoments for {self._samples} samples got "
                             f"{self._rows + rows}")
        x = x.detach()
        if x.dtype != torch.float32 or x.device.type != "cpu":
            x = x.to(_F64)
        finite = None
        if self._maybe_unset:
            finite = torch.isfinite(x)
            self._set_shifts(x, finite)
        slices = self._slices(rows)
        for group, start, stop in slices:
            self._group_rows[group] += stop - start
        norms = self._tails.norm_accumulator(rows, x) if self._tails is not None else None
        self._finite_chunk = True  # until a column block takes the masked path
        if x.device.type != "cpu":
            d = self._add_columns(x, slice(None), finite, slices, norms)
        else:
            # Column blocks of at most BLOCK_BYTES, so the ~8 passes over each block run in
            # cache: one chunk of 64 estimates of 4e5 coordinates (a 784 x 256 Bayesian layer)
            # took 13 ms per estimate in whole-chunk passes, 3 ms in blocks. Per-column sums do
            # not depend on the blocking; a chunk under BLOCK_BYTES is one block, as before.
            width = max(1, BLOCK_BYTES // (x.element_size() * rows))
            for start in range(0, self.coords, width):
                cols = slice(start, min(self.coords, start + width))
                d = self._add_columns(x[:, cols], cols, None if finite is None else
                                      finite[:, cols], slices, norms)
            if width < self.coords:
                d = None  # the last block's deviations are not the chunk's
        if self._tails is not None:
            self._tails.add(self._tracked(x, d), norms)
        self._rows += rows

    def _tracked(self, x: Tensor, d: Tensor | None) -> Tensor:
        """The chunk's deviations from the shift in the tracked columns, non-finite entries 0:
        `d` itself when it covers every column and all are tracked."""
        columns = self._tails.coords
        if d is not None and columns is None:
            return d
        shift = self._shift_for(x)
        if columns is None:
            part = x
        elif self._tail_runs is not None:  # a few column ranges: slices, not a gather
            part = torch.cat([x[:, a:b] for a, b in self._tail_runs], dim=1)
            shift = torch.cat([shift[a:b] for a, b in self._tail_runs])
        else:
            part, shift = x[:, columns], shift[columns]
        if self._finite_chunk:
            return part - shift
        return torch.where(torch.isfinite(part), part - shift, 0.0)

    def _shift_for(self, x: Tensor) -> Tensor:
        """The shift in x's dtype: float32 only while it is exactly a float32 value."""
        if x.dtype == torch.float32 and self._shift32 is not None:
            return self._shift32
        return self._shift

    def _add_columns(self, x: Tensor, cols: slice, finite: Tensor | None,
                     slices: list[tuple[int, int, int]], norms: Tensor | None) -> Tensor:
        """Accumulate the columns `cols` of a chunk; returns their deviations (0 where not
        finite)."""
        rows = x.shape[0]
        if x.dtype == torch.float32:
            if finite is None and self._shift32 is not None:
                powers = _powers_like(x, 4)  # d, d^2, d^3, d^4
                torch.sub(x, self._shift32[cols], out=powers[0])
                if self._accumulate32(powers, cols, slices, norms):
                    return powers[0]
            x = x.to(_F64)  # a NaN, an overflow or an underflow: the float64 path, as before
        if finite is None and x.device.type == "cpu":
            d = x - self._shift[cols]
            first = [d[start:stop].sum(0) for _, start, stop in slices]
            # A NaN or Inf anywhere makes the sum non-finite: one cheap check picks the path.
            if math.isfinite(float(sum(float(s.sum()) for s in first))):
                self._accumulate(d, None, cols, slices, first, norms)
                return d
        self._finite_chunk = False
        if finite is None:
            finite = torch.isfinite(x)
        count = finite.sum(0)
        d = torch.where(finite, x - self._shift[cols], 0.0)
        self._accumulate(d, finite, cols, slices, None, norms)
        self._nonfinite[cols] += rows - count
        return d

    def _accumulate(self, d: Tensor, finite: Tensor | None, cols: slice,
                    slices: list[tuple[int, int, int]], first: list[Tensor] | None,
                    norms: Tensor | None) -> None:
        """Add S1..S4 of each slice of d's rows to the totals and the group sums (and the
        rows' squared deviations to the block norms); `first` holds the slices' S1 if known."""
        if len(slices) > MANY_SLICES:
            parts = self._batched_sums(d, slices, first, norms, cols)
        else:
            parts = self._slice_sums(d, slices, first, norms, cols)
        total = parts[0]
        for part in parts[1:]:  # the same additions as into a zero total, in order
            total = total + part
        self._add_group_sums(parts[0][None] if len(parts) == 1 else torch.stack(parts),
                             slices, cols)
        if self._group_sums is not None and finite is not None:
            for group, start, stop in slices:
                self._group_nonfinite[group, cols] += (stop - start) - finite[start:stop].sum(0)
        self._sums[:, cols] += total

    def _add_group_sums(self, parts: Tensor, slices: list[tuple[int, int, int]],
                        cols: slice) -> None:
        """Add the slices' S1, S2 (parts [slices, 4, columns]) to their groups' sums in one
        update: a chunk's slices belong to consecutive groups."""
        if self._group_sums is not None:
            groups = slice(slices[0][0], slices[0][0] + len(slices))
            self._group_sums[:, groups, cols] += parts[:, :2].transpose(0, 1)

    def _slice_sums(self, d: Tensor, slices: list[tuple[int, int, int]],
                    first: list[Tensor] | None, norms: Tensor | None, cols: slice
                    ) -> list[Tensor]:
        """[4, columns] sums per slice, the powers taken slice by slice in one temporary."""
        parts = []
        for index, (_, start, stop) in enumerate(slices):
            part = d[start:stop]
            power = part * part
            s1 = part.sum(0) if first is None else first[index]
            s2 = power.sum(0)
            if norms is not None:
                self._tails.add_norms(norms[:, start:stop], power, cols)
            power.mul_(part)  # in place: d^3, then d^4, in one temporary
            s3 = power.sum(0)
            power.mul_(part)
            parts.append(torch.stack((s1, s2, s3, power.sum(0))))
        return parts

    def _batched_sums(self, d: Tensor, slices: list[tuple[int, int, int]],
                      first: list[Tensor] | None, norms: Tensor | None, cols: slice
                      ) -> list[Tensor]:
        """The same sums for a chunk that spans many groups (few rows per slice): d^2, d^3,
        d^4 once for the whole block, then one reduction per slice over the three (each
        bit-identical to its own sum; a per-slice product costs more than its rows' work)."""
        powers = _powers_like(d, 3)
        torch.mul(d, d, out=powers[0])
        torch.mul(powers[0], d, out=powers[1])
        torch.mul(powers[1], d, out=powers[2])
        # A row's sum over a row-major block's columns does not depend on the rows around it;
        # over a coordinate-major one it may (torch vectorises across rows), so per slice.
        whole = norms is not None and d.stride(1) == 1
        if whole:
            self._tails.add_norms(norms, powers[0], cols)
        parts = []
        for index, (_, start, stop) in enumerate(slices):
            s1 = d[start:stop].sum(0) if first is None else first[index]
            if norms is not None and not whole:
                self._tails.add_norms(norms[:, start:stop], powers[0, start:stop], cols)
            parts.append(torch.cat((s1[None], powers[:, start:stop].sum(1))))
        return parts

    def _accumulate32(self, powers: Tensor, cols: slice, slices: list[tuple[int, int, int]],
                      norms: Tensor | None) -> bool:
        """_accumulate on float32 deviations (powers[0], the others filled here), each slice's
        sums taken in float32 (one reduction over the four powers) and promoted; nothing is
        accumulated, and False returned, when any sum is not finite or some S4 is below 2^-100
        without S2 being 0 (class docstring)."""
        d, square = powers[0], powers[1]
        torch.mul(d, d, out=square)
        torch.mul(square, d, out=powers[2])
        torch.mul(square, square, out=powers[3])
        parts = torch.stack([powers[:, a:b].sum(1) for _, a, b in slices])
        if not _usable(parts):
            return False
        parts = parts.to(_F64)  # [slices, 4, columns]
        self._add_group_sums(parts, slices, cols)
        if norms is not None:
            for _, start, stop in slices:
                self._tails.add_norms(norms[:, start:stop], square[start:stop], cols)
        self._sums[:, cols] += parts[0] if len(slices) == 1 else parts.sum(0)
        return True

    def _slices(self, rows: int) -> list[tuple[int, int, int]]:
        """(group, start, stop) row ranges of the next chunk, split at group boundaries."""
        if self._samples is None:
            return [(0, 0, rows)]
        n, groups = self._samples, self._groups
        out = []
        row = self._rows
        while row < self._rows + rows:
            group = row * groups // n
            end = min(-(-(group + 1) * n // groups), self._rows + rows)  # ceil((g+1) n / G)
            out.append((group, row - self._rows, end - self._rows))
            row = end
        return out

    def _set_shifts(self, x: Tensor, finite: Tensor) -> None:
        # Only coordinates without finite values so far take a shift; they have S_k = 0 and
        # count 0, so choosing their shift now changes nothing already accumulated.
        count = finite.sum(0)
        has = count > 0
        x64 = x.to(_F64)
        mean = torch.where(finite, x64, 0.0).sum(0) / count.clamp(min=1).to(_F64)
        lo = torch.where(finite, x64, math.inf).amin(0)
        hi = torch.where(finite, x64, -math.inf).amax(0)
        take = self._unset & has
        shift = torch.minimum(torch.maximum(mean, lo), hi)
        if x.dtype == torch.float32:  # rounded: still in [lo, hi], whose ends are float32
            shift = shift.to(torch.float32).to(_F64)
        self._shift = torch.where(take, shift, self._shift)
        # float32 sums need a shift that is exactly float32 (set from float32 chunks only).
        float32 = x.dtype == torch.float32 and (self._chunks == 0 or self._shift32 is not None)
        self._shift32 = self._shift.to(torch.float32) if float32 else None
        self._unset = self._unset & ~has
        self._chunks += 1
        if self._chunks == self._next_check:  # host reads after chunks 1, 2, 4, ...
            self._next_check *= 2
            self._maybe_unset = bool(self._unset.any())

    def moments(self) -> Moments:
        """The moments of every chunk added so far (the state is left unchanged)."""
        n = self._rows - self._nonfinite
        fn = n.clamp(min=1).to(_F64)
        s1, s2, s3, s4 = self._sums
        delta = s1 / fn
        mean = torch.where(n > 0, self._shift + delta, 0.0)
        m2 = (s2 - s1 * delta).clamp(min=0.0)
        m3 = s3 - 3.0 * delta * s2 + 2.0 * fn * delta**3
        m4 = (s4 - 4.0 * delta * s3 + 6.0 * delta**2 * s2 - 3.0 * fn * delta**4).clamp(min=0.0)
        return Moments(count=n, mean=mean, m2=m2, m3=m3, m4=m4,
                       nonfinite=self._nonfinite.clone())

    def groups(self) -> GroupSums:
        """The per-group sums (needs `samples`): the rows added so far."""
        if self._group_sums is None:
            raise ValueError("StreamingMoments keeps group sums only when given `samples`")
        rows = torch.tensor(self._group_rows, dtype=torch.int64, device=self._shift.device)
        return GroupSums(count=rows[:, None] - self._group_nonfinite,
                         s1=self._group_sums[0].clone(),
                         s2=self._group_sums[1].clone(), shift=self._shift.clone())

    def tails(self) -> Tails:
        """The largest deviations kept (needs `tail_size`)."""
        if self._tails is None:
            raise ValueError("StreamingMoments keeps tails only when given `tail_size`")
        return self._tails.result()


def _powers_like(x: Tensor, count: int) -> Tensor:
    """An empty [count, rows, columns] buffer laid out like x [rows, columns], so that each
    power's reductions run along the same memory as x's (coordinate-major chunks keep their
    columns contiguous)."""
    rows, columns = x.shape
    if x.stride(0) == 1 and columns > 1:
        return torch.empty(count, columns, rows, dtype=x.dtype, device=x.device).transpose(1, 2)
    return torch.empty(count, rows, columns, dtype=x.dtype, device=x.device)


def _runs(columns: Tensor) -> list[tuple[int, int]] | None:
    """`columns` as at most 8 ranges [a, b) of consecutive indices, in order (the tracked
    columns are the first ones of each parameter); None if it takes more, or none."""
    runs: list[list[int]] = []
    for column in columns.cpu().tolist():
        if runs and column == runs[-1][1]:
            runs[-1][1] += 1
        else:
            runs.append([column, column + 1])
    return [(a, b) for a, b in runs] if 0 < len(runs) <= 8 else None


def _usable(parts: Tensor) -> bool:
    """Whether float32 sums [slices, 4, columns] can be kept: all finite, and each S4 at least
    2^-100 unless S2 is 0 (a constant column). Few sums are checked on the host: the tensor
    version's seven small ops cost more than the sums they check."""
    if parts.numel() <= 256:
        for s1, s2, s3, s4 in parts.transpose(1, 2).reshape(-1, 4).tolist():
            if not (math.isfinite(s1 + s2 + s3 + s4) and (s4 >= 2.0**-100 or s2 == 0.0)):
                return False
        return True
    finite = torch.isfinite(parts).all()
    return bool(finite & ((parts[:, 3] >= 2.0**-100) | (parts[:, 1] == 0)).all())
