"""Measuring one cell: build its problem, run the estimator in chunks with seeds derived from the
cell's key, stream the estimates into per-coordinate moments, and return tidy rows as columns of
plain Python values (never tensors), so any executor can carry them."""

from __future__ import annotations

import copy
import math
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from gradbench.app.planning import DTYPES, Cell
from gradbench.app.timing import ChunkTimer, device_name
from gradbench.core import uncertainty
from gradbench.core.aggregates import TENSOR_KEYS, aggregate
from gradbench.core.estimator import Estimator, get_estimator
from gradbench.core.moments import Moments
from gradbench.core.problem import Problem
from gradbench.core.rare_states import at_columns, rare_states
from gradbench.core.seeding import derive_seed, seeded
from gradbench.core.streaming import GroupSums, StreamingMoments, Tails
from gradbench.core.suite import get_suite
from gradbench.core.tail_index import tail_size
from gradbench.results.store import canonical_json

# Bytes of one parameter's float64 estimates per chunk on the CPU: keeps temporaries cache-sized
# (80 MB temporaries ran 8x slower than 0.25 MB ones). With 2 parameters of one coordinate a
# chunk's temporaries are 2 x 2^15 x 8 B = 0.5 MiB each, a few of which fit a 1 MiB L2; measured
# on this CPU (AMD EPYC, pathwise, dim 1): 2^15 and 2^16 estimates were fastest, 2^14 ~15% slower
# (per-chunk overhead), 2^17 ~10-20% slower (L2 misses). Fixed rather than read from the machine:
# the chunking fixes the per-chunk seeds, so the same on every machine.
CACHE_BYTES = 8 << 15
# A GPU needs large kernels to pay for their launches (~5 us each): 32 MiB per estimate tensor
# keeps launch overhead small on any CUDA device and memory far below a GPU's.
CUDA_BYTES = 8 << 22
# Big parameters (a Bayesian layer of 2e5 weights) cannot have cache-sized chunks of many
# estimates: they get at least MIN_ROWS estimates per chunk, within LARGE_BYTES of working memory
# (estimates x coordinates x the estimator's memory factor x 8 bytes), so per-chunk overhead
# (a Python call, a problem's distribution) is paid once per MIN_ROWS estimates, not per estimate.
MIN_ROWS = 64
LARGE_BYTES = 256 << 20
MIN_CHUNKS = 4  # so seconds per estimate gets a standard error
# Coordinates per parameter whose largest deviations are tracked for the tail diagnostic. Every
# tracked coordinate costs ~5 passes over its estimates (staging, topk); measured on a
# 1000-coordinate cell, tracking all of them made the cell 5x slower. Further coordinates' rows
# are judged by the largest k-hat of the tracked ones and of the tensor's norms (conservative
# when coordinates are alike, as in every default grid; gradbench.core.uncertainty).
TAIL_COORDS = 64


def chunk_size(problem: Problem, samples: int, memory: float,
               device: torch.device | str = "cpu") -> int:
    """Estimates per chunk, by bytes: cache-sized where that still gives MIN_ROWS estimates,
    otherwise up to MIN_ROWS within LARGE_BYTES; at least MIN_CHUNKS chunks per cell."""
    factor = max(1.0, memory)
    widest = max(int(v.numel()) for v in problem.params.values())
    budget = CUDA_BYTES if torch.device(device).type == "cuda" else CACHE_BYTES
    rows = int(budget // (8 * widest * factor))
    if rows < MIN_ROWS:
        whole = 8 * problem.numel * factor
        rows = max(1, min(MIN_ROWS, int(LARGE_BYTES // whole)))
    by_count = max(2, math.ceil(samples / MIN_CHUNKS))
    return max(1, min(rows, by_count, samples))


def _stacked(estimates: Mapping[str, torch.Tensor], problem: Problem, m: int, estimator: str
             ) -> torch.Tensor:
    """All parameters' estimates side by side as [m, C] (C = total coordinates), so one
    streaming update per chunk serves every parameter. Many estimates per coordinate are laid
    out coordinate-major (each column contiguous: fast reductions over rows); few estimates of
    many coordinates stay row-major."""
    parts = []
    for name, value in problem.params.items():
        got = estimates[name]
        if got.shape != (m, *value.shape):
            raise RuntimeError(f"estimator {estimator} returned {tuple(got.shape)} for "
                               f"{name}, expected {(m, *value.shape)}")
        parts.append(got.detach().reshape(m, -1))
    coords = sum(p.shape[1] for p in parts)
    if m >= coords:
        return torch.cat([p.T for p in parts]).T
    return torch.cat(parts, dim=1)


def run_cell(cell: Cell) -> dict[str, Any]:
    """Run one cell; return its tidy rows as columns of plain values (one row per param x coord)."""
    device = torch.device(cell.device)
    if device.type == "cuda":
        # seeded() seeds the *current* CUDA device, and the cell's tensors go to `device`: make
        # them the same device for the whole cell.
        with torch.cuda.device(device):
            return _run_cell(cell, device)
    return _run_cell(cell, device)


def _reseed(device: torch.device, seed: int) -> None:
    """What `seeded` does on entry, inside an already forked generator state."""
    if device.type == "cuda":
        torch.cuda.manual_seed(seed)  # the current device: run_cell made it `device`
    else:
        torch.default_generator.manual_seed(seed)


# Warm-ups and rare-state enumerations are pure functions of the cell's configuration (its key
# without samples and seed), so a process that measures one configuration at several seeds (a
# calibration: scripts/calibrate_check.py) computes each once. Bounded: LRU of CACHE_ENTRIES.
CACHE_ENTRIES = 64
_WARMUPS: OrderedDict[tuple, Any] = OrderedDict()
_RARE: OrderedDict[tuple, Any] = OrderedDict()


def _cached(cache: OrderedDict, key: tuple, compute: Callable[[], Any]) -> Any:
    if key in cache:
        cache.move_to_end(key)
    else:
        cache[key] = compute()
        if len(cache) > CACHE_ENTRIES:
            cache.popitem(last=False)
    return copy.deepcopy(cache[key])  # callers may not share (or mutate) the cached object


def _warmup_state(cell: Cell, estimator: Estimator, problem: Problem, device: torch.device
                  ) -> dict[str, Any]:
    if estimator.warmup is None:
        return {}

    def fit() -> Any:
        # Seeded by the cell's configuration, not by the run's seed: runs at different seeds
        # then measure the same fitted estimator (same control variate / surrogate), so their
        # variances are comparable (bench check) and only the measurement noise differs.
        with seeded(derive_seed(*cell.warmup_key, "warmup"), device):
            return estimator.warmup(problem, **cell.hyperparams_dict())

    return {"state": _cached(_WARMUPS, cell.warmup_key, fit)}


@dataclass(frozen=True)
class Measured:
    """Everything a cell's statistics are built from, for all parameters side by side."""

    moments: Moments
    groups: GroupSums
    tails: Tails
    chunks: int


def _layout(problem: Problem, coords: int) -> tuple[list[tuple[int, int]], torch.Tensor]:
    """Column ranges of the parameters in the stacked estimates, and the columns whose tails
    are tracked: the first min(coords, TAIL_COORDS) of each parameter."""
    blocks, tracked, offset = [], [], 0
    for value in problem.params.values():
        size = int(value.numel())
        blocks.append((offset, offset + size))
        tracked.append(torch.arange(offset, offset + min(size, coords, TAIL_COORDS)))
        offset += size
    return blocks, torch.cat(tracked)


def _measure(cell: Cell, estimator: Estimator, problem: Problem, device: torch.device,
             size: int) -> tuple[Measured, ChunkTimer]:
    """Stream the cell's estimates, chunk by chunk, into moments; time the estimator alone."""
    hyper = cell.hyperparams_dict()
    state = _warmup_state(cell, estimator, problem, device)
    blocks, tracked = _layout(problem, cell.coords)
    # One accumulator for all parameters, on the device: no host round-trip per chunk.
    stats = StreamingMoments(problem.numel, device, samples=cell.samples,
                             tail_coords=tracked.to(device),
                             tail_size=tail_size(cell.samples) + 1, blocks=blocks)
    # Time from the second chunk on when two or more timed chunks remain (an SE needs 2).
    timer = ChunkTimer(device, discard_first=math.ceil(cell.samples / size) >= 3)
    done = index = 0
    seed = cell.cell_seed  # a hash of the whole key: once, not per chunk (~5% of a dim-1 cell)
    # One fork of the generator state for the whole loop, reseeded per chunk: the same draws as
    # `seeded` per chunk, without saving and restoring the state each time.
    with seeded(derive_seed(seed, "chunk", 0), device):
        while done < cell.samples:
            m = min(size, cell.samples - done)
            if index:
                _reseed(device, derive_seed(seed, "chunk", index))
            timer.start()
            estimates = estimator.fn(problem, m, **hyper, **state)
            timer.stop(m)
            stats.add(_stacked(estimates, problem, m, cell.estimator))
            del estimates  # free this chunk's tensors before the next one is drawn
            done += m
            index += 1
    return Measured(stats.moments(), stats.groups(), stats.tails(), index), timer


def _truths(problem: Problem, name: str, device: torch.device
            ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    truth = truth_se = None
    if problem.exact_gradient is not None:
        truth = problem.exact_gradient[name].detach().reshape(-1).to(device, torch.float64)
    if problem.truth_se is not None:
        truth_se = problem.truth_se[name].detach().reshape(-1).to(device, torch.float64)
    return truth, truth_se


# Statistics that are finite whenever there are 2+ finite estimates (and, for the bias family, a
# finite truth): NaN or Inf there means float64 overflowed inside the statistics.
_ALWAYS_FINITE = ("mean", "mean_se", "variance", "variance_se", "std")
_FINITE_WITH_TRUTH = ("bias", "bias_se", "mse", "mse_se")


def overflowed(summary: Mapping[str, np.ndarray], truth: np.ndarray | None) -> list[str]:
    """Per coordinate: the statistics that overflowed float64 although the estimates used were
    finite (e.g. a variance of estimates near 1e300), comma-separated; "" where none did."""
    enough = summary["n"] >= 2
    known = np.isfinite(truth) if truth is not None else np.zeros_like(enough)
    bad = [(k, ~np.isfinite(summary[k]) & enough) for k in _ALWAYS_FINITE]
    bad += [(k, ~np.isfinite(summary[k]) & enough & known) for k in _FINITE_WITH_TRUTH]
    return [",".join(k for k, flags in bad if flags[i]) for i in range(len(enough))]


def _statistics_columns(cell: Cell, problem: Problem, measured: Measured,
                        device: torch.device) -> dict[str, list]:
    """Rows per parameter: `coord` rows for its first `coords` coordinates, then its `tensor`
    row (coord = -1)."""
    columns: dict[str, list] = {}
    rare = _cached(_RARE, (cell.suite, cell.suite_version, cell.settings, cell.device,
                           cell.dtype), lambda: rare_states(problem))
    if rare is not None and get_estimator(cell.estimator).surrogate:
        rare = {name: states.for_surrogate() for name, states in rare.items()}
    tail_column = 0
    coords = cell.coords
    blocks = _layout(problem, coords)[0]
    for index, (name, (start, stop)) in enumerate(zip(problem.params, blocks, strict=True)):
        truth, truth_se = _truths(problem, name, device)
        size = stop - start
        shown = min(size, coords)
        block = slice(start, stop)
        part = slice(start, start + shown)
        tracked = min(shown, TAIL_COORDS)
        summary = uncertainty.summarize(
            uncertainty.select(measured.moments, part),
            uncertainty.select_groups(measured.groups, part),
            measured.tails.deviations[:, tail_column:tail_column + tracked],
            None if truth is None else truth[:shown],
            None if truth_se is None else truth_se[:shown],
            at_columns(rare, name, slice(0, shown)),
            measured.tails.block_norms(index))
        summary["overflow"] = overflowed(
            summary, truth[:shown].cpu().numpy() if truth is not None else None)
        tail_column += tracked
        tensor = aggregate(uncertainty.select(measured.moments, block),
                           uncertainty.select_groups(measured.groups, block),
                           measured.tails.block_norms(index),
                           truth, truth_se, at_columns(rare, name, slice(None)))
        if size == 1 and shown == 1:
            # One coordinate: the tensor row repeats its variance statistics (the coordinate's
            # may be exact for two values, which the tensor's jackknife does not know).
            tensor.update({k: summary[k][0].item() if hasattr(summary[k][0], "item")
                           else summary[k][0] for k in _ONE_COORDINATE})
        _append(columns, _coordinate_block(name, size, shown, truth, truth_se, summary))
        # A tensor row's mean and bias are its worst coordinate's (checked on that row).
        tensor["overflow"] = ",".join(k for k in ("variance", "variance_se", "std")
                                      if not math.isfinite(tensor[k]) and tensor["n"] >= 2)
        _append(columns, {"param": [name], "level": ["tensor"], "coord": [-1],
                          "truth_se": [tensor.pop("truth_se")],
                          "param_size": [tensor.pop("coords")],
                          **{k: [v] for k, v in tensor.items()}})
    return columns


_ONE_COORDINATE = ("variance", "variance_se", "variance_lo", "variance_hi", "variance_df",
                   "tail_index", "reliable", "mean_reliable", "reliability_reason",
                   "samples_needed")


def _coordinate_block(name: str, size: int, shown: int, truth: torch.Tensor | None,
                      truth_se: torch.Tensor | None, summary: dict[str, np.ndarray]
                      ) -> dict[str, object]:
    nan = np.full(shown, np.nan)
    block = {
        "param": [name] * shown,
        "level": ["coord"] * shown,
        "coord": list(range(shown)),
        "truth": truth[:shown].cpu().numpy() if truth is not None else nan,
        "truth_se": (truth_se[:shown].cpu().numpy() if truth_se is not None else
                     np.zeros(shown) if truth is not None else nan),
        "param_size": [size] * shown,
        "worst_coord": [-1] * shown,
        **{k: nan for k in TENSOR_KEYS if k not in ("coords", "worst_coord")},
        **summary,
    }
    return block


def _append(columns: dict[str, list], block: dict[str, object]) -> None:
    rows = len(block["param"])
    for key, column in block.items():
        values = np.asarray(column).tolist() if not isinstance(column, list) else column
        if len(values) != rows:
            raise RuntimeError(f"column {key}: {len(values)} values for {rows} rows")
        columns.setdefault(key, []).extend(values)


def _run_cell(cell: Cell, device: torch.device) -> dict[str, Any]:
    suite = get_suite(cell.suite)
    estimator = get_estimator(cell.estimator)
    problem = suite.problem(cell.settings_dict(), device=device, dtype=DTYPES[cell.dtype])
    hyper = cell.hyperparams_dict()
    size = chunk_size(problem, cell.samples, estimator.memory_per_estimate(problem, hyper), device)
    measured, timer = _measure(cell, estimator, problem, device, size)
    seconds, seconds_se = timer.mean_and_se()
    columns = _statistics_columns(cell, problem, measured, device)
    fixed = {
        "suite": cell.suite,
        "suite_version": cell.suite_version,
        "settings": canonical_json(cell.settings_dict()),
        **cell.settings_dict(),
        "estimator": cell.estimator,
        "estimator_version": cell.estimator_version,
        "hyperparams": canonical_json(hyper),
        "estimator_family": estimator.family,
        "unbiased": estimator.unbiased,
        **hyper,
        "device": cell.device,
        "device_name": device_name(device),
        "dtype": cell.dtype,
        "truth_method": problem.truth_method,
        "evals_per_estimate": estimator.evals_per_estimate(problem, hyper),
        "warmup_evals": estimator.warmup_evals_total(problem, hyper),
        "seconds_per_estimate": seconds,
        "seconds_per_estimate_se": seconds_se,
        "estimates_per_second": 1.0 / seconds if seconds > 0 else math.inf,
        "chunk_size": size,
        "chunks": measured.chunks,
        "groups": int(measured.groups.count.shape[0]),
        "samples": cell.samples,
        "seed": cell.seed,
        "cell_seed": cell.cell_seed,
        "cell_id": cell.cell_id,
    }
    rows = len(columns["param"])
    return {**{k: [v] * rows for k, v in fixed.items()}, **columns}
