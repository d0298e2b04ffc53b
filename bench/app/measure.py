"""Measuring one cell: build its problem, run the estimator in chunks with seeds derived from the
cell's key, stream the estimates into per-coordinate moments, and return tidy rows as columns of
plain Python values (never tensors), so any executor can carry them."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from gradbench.app.planning import DTYPES, Cell
from gradbench.app.timing import ChunkTimer, device_name
from gradbench.core.estimator import Estimator, get_estimator
from gradbench.core.moments import Moments
from gradbench.core.problem import Problem
from gradbench.core.seeding import derive_seed, seeded
from gradbench.core.streaming import StreamingMoments
from gradbench.core.suite import get_suite
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


def _warmup_state(cell: Cell, estimator: Estimator, problem: Problem, device: torch.device
                  ) -> dict[str, Any]:
    if estimator.warmup is None:
        return {}
    # Seeded by the cell's configuration, not by the run's seed: runs at different seeds then
    # measure the same fitted estimator (same control variate / surrogate), so their variances
    # are comparable (bench check) and only the measurement noise differs.
    with seeded(derive_seed(*cell.warmup_key, "warmup"), device):
        return {"state": estimator.warmup(problem, **cell.hyperparams_dict())}


def _measure(cell: Cell, estimator: Estimator, problem: Problem, device: torch.device,
             size: int) -> tuple[Moments, ChunkTimer, int]:
    """Stream the cell's estimates, chunk by chunk, into moments; time the estimator alone."""
    hyper = cell.hyperparams_dict()
    state = _warmup_state(cell, estimator, problem, device)
    # One accumulator for all parameters, on the device: no host round-trip per chunk.
    stats = StreamingMoments(problem.numel, device)
    # Time from the second chunk on when two or more timed chunks remain (an SE needs 2).
    timer = ChunkTimer(device, discard_first=math.ceil(cell.samples / size) >= 3)
    done = index = 0
    # One fork of the generator state for the whole loop, reseeded per chunk: the same draws as
    # `seeded` per chunk, without saving and restoring the state each time.
    with seeded(derive_seed(cell.cell_seed, "chunk", 0), device):
        while done < cell.samples:
            m = min(size, cell.samples - done)
            if index:
                _reseed(device, derive_seed(cell.cell_seed, "chunk", index))
            timer.start()
            estimates = estimator.fn(problem, m, **hyper, **state)
            timer.stop(m)
            stats.add(_stacked(estimates, problem, m, cell.estimator))
            del estimates  # free this chunk's tensors before the next one is drawn
            done += m
            index += 1
    return stats.moments(), timer, index


def _split(merged: Moments, problem: Problem) -> dict[str, Moments]:
    """The merged [C] moments cut back into one Moments per parameter."""
    out, offset = {}, 0
    for name, value in problem.params.items():
        part = slice(offset, offset + value.numel())
        out[name] = Moments(count=merged.count[part], mean=merged.mean[part],
                            m2=merged.m2[part], m3=merged.m3[part], m4=merged.m4[part],
                            nonfinite=merged.nonfinite[part])
        offset += value.numel()
    return out


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


def _coordinate_columns(problem: Problem, moments: Mapping[str, Moments],
                        device: torch.device) -> dict[str, list]:
    columns: dict[str, list] = {}
    for name, value in problem.params.items():
        truth = truth_se = None
        if problem.exact_gradient is not None:
            truth = problem.exact_gradient[name].detach().reshape(-1).to(device, torch.float64)
        if problem.truth_se is not None:
            truth_se = problem.truth_se[name].detach().reshape(-1).to(device, torch.float64)
        summary = moments[name].summarize(truth, truth_se)
        summary["overflow"] = overflowed(summary, truth.cpu().numpy() if truth is not None
                                          else None)
        coords = value.numel()
        nan = np.full(coords, np.nan)
        block = {
            "param": [name] * coords,
            "level": ["coord"] * coords,
            "coord": list(range(coords)),
            "truth": truth.cpu().numpy() if truth is not None else nan,
            "truth_se": (truth_se.cpu().numpy() if truth_se is not None else
                         np.zeros(coords) if truth is not None else nan),
            **summary,
        }
        for key, column in block.items():
            columns.setdefault(key, []).extend(np.asarray(column).tolist())
    return columns


def _run_cell(cell: Cell, device: torch.device) -> dict[str, Any]:
    suite = get_suite(cell.suite)
    estimator = get_estimator(cell.estimator)
    problem = suite.problem(cell.settings_dict(), device=device, dtype=DTYPES[cell.dtype])
    hyper = cell.hyperparams_dict()
    size = chunk_size(problem, cell.samples, estimator.memory_per_estimate(problem, hyper), device)
    merged, timer, chunks = _measure(cell, estimator, problem, device, size)
    seconds, seconds_se = timer.mean_and_se()
    columns = _coordinate_columns(problem, _split(merged, problem), device)
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
        "chunks": chunks,
        "samples": cell.samples,
        "seed": cell.seed,
        "cell_seed": cell.cell_seed,
        "cell_id": cell.cell_id,
    }
    rows = len(columns["param"])
    return {**{k: [v] * rows for k, v in fixed.items()}, **columns}
