"""The tail buffer of StreamingMoments (gradbench.core.streaming): the largest deviations per
tracked coordinate and the largest squared norms per block of coordinates, in constant memory."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

_F64 = torch.float64
STAGE_ROWS = 2048  # rows of deviations staged before a merge into the tail buffer
# Above this many columns (tracked coordinates plus block norms), a full buffer stages single
# entries above their column's floor, not whole rows: with many columns nearly every row has
# some column above its floor, so row staging merged every row (at dim 1,000, 128 tracked
# columns: 16 topk merges of 2,048 rows each for 16,384 estimates, 5% of the cell).
ENTRY_COLUMNS = 16


@dataclass(frozen=True)
class Tails:
    """The largest |x - shift| per tracked coordinate (signed values, [T, K], fewer rows while
    fewer were seen) and the largest ||x_b - shift_b||^2 per block b of several coordinates."""

    coords: Tensor  # [K] indices of the tracked coordinates
    deviations: Tensor  # [T, K]
    norms: Tensor  # [T, B'] for the blocks of more than one coordinate:
    norm_blocks: tuple[int, ...] = ()  # their indices among the blocks

    def block_norms(self, block: int) -> Tensor:
        """The largest norms of one block [T] (empty for a one-coordinate block)."""
        if block in self.norm_blocks:
            return self.norms[:, self.norm_blocks.index(block)]
        return torch.zeros(0, dtype=_F64)


class TailBuffer:
    """The `size` largest |d| per tracked column and the largest block norms ||d_b||^2. Chunks
    are staged and merged with topk once the stage holds STAGE_ROWS (or `size`) rows: merging
    every chunk re-sorted the whole buffer each time (measured: 3.6x the cost of the moments on
    a 1000-coordinate cell with 64-row chunks). With more than ENTRY_COLUMNS columns, a full
    buffer stages single entries instead (`_add_entries`). Either way the kept magnitudes are
    exactly the T largest. Ties are kept as they fall: the entry path never stages an entry
    equal to its column's floor (the buffer's earlier one stays), the row path stages it with
    its row and topk picks one, so a signed +a/-a tie can differ between the two paths."""

    def __init__(self, coords: Tensor | None, size: int, blocks: Sequence[tuple[int, int]],
                 device: torch.device | str) -> None:
        self.coords = coords
        self.size = size
        self.stage_rows = max(size, STAGE_ROWS)
        # Blocks of one coordinate need no norm: their tail is their coordinate's.
        self.blocks = [(a, b) for a, b in blocks if b - a > 1]
        self.block_index = [i for i, (a, b) in enumerate(blocks) if b - a > 1]
        self.deviations: Tensor | None = None
        self.norms: Tensor | None = None
        self.floor: tuple[Tensor, Tensor | None] | None = None  # smallest |d|, norm kept
        self.staged: list[tuple[Tensor, Tensor | None]] = []
        self.staged_rows = 0
        # Entries above the floor, per buffer (deviations, norms): (column, value) pairs.
        self.entries: tuple[list[Entries], list[Entries]] = ([], [])
        self.entry_count = 0
        self._floor32: Tensor | None = None

    def norm_accumulator(self, rows: int, x: Tensor) -> Tensor | None:
        """Zeros [B', rows] for a chunk's block norms, filled column block by column block."""
        if not self.blocks:
            return None
        return torch.zeros(len(self.blocks), rows, dtype=_F64, device=x.device)

    def add_norms(self, norms: Tensor, square: Tensor, cols: slice) -> None:
        """Add the squared deviations [m, width] of the columns `cols` to the rows' norms of the
        blocks they overlap (norms [B', m], a view into the chunk's accumulator)."""
        start, stop = cols.start or 0, cols.stop if cols.stop is not None else square.shape[1]
        for index, (a, b) in enumerate(self.blocks):
            lo, hi = max(a, start), min(b, stop)
            if lo < hi:
                norms[index] += square[:, lo - start:hi - start].sum(1)

    def add(self, tracked: Tensor, norms: Tensor | None) -> None:
        """Stage a chunk's deviations in the tracked columns [m, K] and its block norms [B', m].
        Once the buffer is full, only rows above some column's current floor can enter (a
        host-side decision, so where `screens(device)`): in a long stream few rows of a chunk do."""
        # Handled transposed, [columns, rows]: topk along contiguous memory ran 3x faster, and
        # many-estimate chunks arrive coordinate-major, so the transpose is contiguous already.
        tracked = tracked.T
        columns = tracked.shape[0] + (0 if norms is None else norms.shape[0])
        screen = self.floor is not None and screens(tracked.device)
        if screen and columns > ENTRY_COLUMNS:
            self._add_entries(tracked, norms)
            return
        if screen:
            hit = _above(tracked.abs(), self._floor_in(tracked.dtype))
            if norms is not None:
                hit |= _above(norms, self.floor[1])
            index = hit.nonzero()[:, 0]
            if index.numel() == 0:
                return
            if index.numel() * 2 < hit.shape[0]:
                tracked = tracked.index_select(1, index)
                norms = None if norms is None else norms.index_select(1, index)
        self.staged.append((tracked.to(_F64).contiguous(), norms))
        self.staged_rows += tracked.shape[1]
        if self.staged_rows >= self.stage_rows:
            self._flush()

    def _floor_in(self, dtype: torch.dtype) -> Tensor:
        """The smallest kept |deviation| per column, in `dtype`: for float32 rounded down, so a
        deviation above the float64 floor is never filtered out, and one equal to it (the ties
        of a two-point estimate) still is (lowering the floor instead let every tie through:
        half of each chunk was staged, and the float32 path ran 1.6x slower)."""
        floor = self.floor[0]
        if dtype == _F64:
            return floor
        if self._floor32 is None:
            rounded = floor.to(dtype)
            self._floor32 = torch.where(rounded.to(_F64) > floor,
                                        torch.nextafter(rounded, torch.zeros_like(rounded)),
                                        rounded)
        return self._floor32

    def _add_entries(self, tracked: Tensor, norms: Tensor | None) -> None:
        """Stage the entries above their column's floor (strictly, as the row screen); merge
        once a buffer's worth per column is staged, so the floors rise as the stream grows."""
        self.entry_count += _stage(self.entries[0], tracked, tracked.abs(),
                                   self._floor_in(tracked.dtype))
        if norms is not None:
            self.entry_count += _stage(self.entries[1], norms, norms, self.floor[1])
        if self.entry_count >= self.size * (tracked.shape[0] + len(self.blocks)):
            self._flush()

    def _flush(self) -> None:
        if self.entry_count:
            self.deviations = _merge_entries(self.deviations, self.entries[0], self.size,
                                             by_magnitude=True)
            if self.blocks:
                self.norms = _merge_entries(self.norms, self.entries[1], self.size,
                                            by_magnitude=False)
            self.entries, self.entry_count = ([], []), 0
            self._set_floor()
        if not self.staged:
            return
        tracked = torch.cat([t for t, _ in self.staged], dim=1)
        self.deviations = self._merge(self.deviations, tracked, by_magnitude=True)
        if self.blocks:
            norms = torch.cat([n for _, n in self.staged], dim=1)
            self.norms = self._merge(self.norms, norms, by_magnitude=False)
        self.staged, self.staged_rows = [], 0
        self._set_floor()

    def _set_floor(self) -> None:
        if self.deviations.shape[1] >= self.size:  # floors: |deviation|, squared norm
            self._floor32 = None
            self.floor = (self.deviations.abs().amin(1),
                          None if self.norms is None else self.norms.amin(1))

    def _merge(self, buffer: Tensor | None, new: Tensor, by_magnitude: bool) -> Tensor:
        values = new if buffer is None else torch.cat((buffer, new), dim=1)
        if values.shape[1] <= self.size:
            return values
        keys = values.abs() if by_magnitude else values
        index = torch.topk(keys, self.size, dim=1, sorted=False).indices
        return torch.gather(values, 1, index)

    def result(self) -> Tails:
        self._flush()
        columns = (self.coords if self.coords is not None else
                   torch.arange(0 if self.deviations is None else self.deviations.shape[0]))
        empty = torch.zeros(0, 0, dtype=_F64)
        return Tails(coords=columns,
                     deviations=self.deviations.T if self.deviations is not None else empty,
                     norms=self.norms.T if self.norms is not None else empty,
                     norm_blocks=tuple(self.block_index))


Entries = tuple[Tensor, Tensor]  # column indices [h] and float64 values [h]


def screens(device: torch.device) -> bool:
    """Whether a full buffer screens chunks against its floors before staging them. The screen
    is exact on any device but decides on the host (one sync per chunk), so it runs on the CPU
    only; elsewhere every row is staged and merged by topk on the device. scripts/gpu_rate.py
    measures CUDA both ways, for when a GPU can say which is faster there."""
    return device.type == "cpu"


def _stage(staged: list[Entries], values: Tensor, keys: Tensor, floor: Tensor) -> int:
    """Append the entries of values [K, m] whose key exceeds their column's floor [K]; returns
    how many."""
    index = (keys > floor[:, None]).nonzero()
    if index.shape[0]:
        columns, rows = index.unbind(1)
        staged.append((columns, values[columns, rows].to(_F64)))
    return int(index.shape[0])


def _merge_entries(buffer: Tensor, staged: list[Entries], size: int, *, by_magnitude: bool
                   ) -> Tensor:
    """The `size` largest (by |value| or value) of each column of a full buffer [K, size] and
    its staged entries: the entries are laid out per column, padded with keys below any real
    one (-1: keys are magnitudes or squared norms), and merged by one topk."""
    if not staged:
        return buffer
    columns = torch.cat([c for c, _ in staged])
    values = torch.cat([v for _, v in staged])
    order = torch.argsort(columns, stable=True)  # per column, in arrival order
    columns, values = columns[order], values[order]
    counts = torch.bincount(columns, minlength=buffer.shape[0])
    start = counts.cumsum(0) - counts
    position = torch.arange(columns.shape[0], device=columns.device) - start[columns]
    width = int(counts.max())
    dense = torch.zeros(buffer.shape[0], width, dtype=_F64, device=buffer.device)
    keys = torch.full_like(dense, -1.0)
    dense[columns, position] = values
    keys[columns, position] = values.abs() if by_magnitude else values
    candidates = torch.cat((buffer, dense), dim=1)
    keys = torch.cat((buffer.abs() if by_magnitude else buffer, keys), dim=1)
    index = torch.topk(keys, size, dim=1, sorted=False).indices
    return torch.gather(candidates, 1, index)


def _above(values: Tensor, floor: Tensor) -> Tensor:
    """Per column of values [K, m]: whether some row exceeds its floor [K]. A reduction over a
    short first axis is slow in torch (a [2, 32768] any(0) took 13x a contiguous pass), so few
    rows are compared one by one."""
    if values.shape[0] > 16:
        return (values > floor[:, None]).any(0)
    hit = values[0] > floor[0]
    for row in range(1, values.shape[0]):
        hit |= values[row] > floor[row]
    return hit
