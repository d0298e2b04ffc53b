"""The runner: expand a suite's grid x estimators x hyperparameters x devices into cells, run
each cell in chunks with its own derived seeds, and reduce the estimates to per-coordinate
statistics. Results are plain Python/numpy values (never tensors), so any executor can carry them.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from bench.errors import BenchError, unknown_name
from bench.problem import Problem
from bench.seeding import derive_seed, seeded
from bench.statistics import Moments, StreamingMoments
from estimators.registry import Estimator, all_estimators, get_estimator
from suites.registry import Suite, get_suite

DTYPES = {"float64": torch.float64, "float32": torch.float32}
# Elements of one parameter's estimates per chunk: bounds memory whatever `samples` is, and keeps
# temporaries cache-sized (on the CPU, 80 MB temporaries ran 8x slower than 0.25 MB ones). With
# 2 parameters a chunk's float64 temporaries are 2 x 2^15 x 8 B = 0.5 MiB each, a few of which
# fit a 1 MiB L2; measured on this CPU (AMD EPYC, pathwise, dim 1): 2^15 and 2^16 were fastest,
# 2^14 ~15% slower (per-chunk overhead), 2^17 ~10-20% slower (L2 misses). Fixed rather than read
# from the machine: the chunking fixes the per-chunk seeds, so the same on every machine.
CHUNK_ELEMENTS = 1 << 15
# A GPU needs large kernels to pay for their launches (~5 us each): 2^22 elements (32 MiB per
# float64 temporary, a few hundred MiB per chunk with an estimator's temporaries) keeps launch
# overhead small on any CUDA device and memory far below a GPU's. Fixed, not read from the
# device, so a cell's draws (seeded per chunk) are the same on every GPU.
CUDA_CHUNK_ELEMENTS = 1 << 22
MIN_CHUNKS = 4  # so seconds per estimate gets a standard error


@dataclass(frozen=True)
class Cell:
    """One measurement: a suite setting x an estimator (with hyperparameters) x a device."""

    suite: str
    settings: tuple[tuple[str, Any], ...]
    estimator: str
    hyperparams: tuple[tuple[str, Any], ...]
    device: str
    dtype: str
    samples: int
    seed: int

    @property
    def key(self) -> tuple:
        return (self.suite, self.settings, self.estimator, self.hyperparams, self.device,
                self.dtype, self.samples, self.seed)

    @property
    def warmup_key(self) -> tuple:
        """The key without samples and seed: what a warm-up's fit may depend on."""
        return (self.suite, self.settings, self.estimator, self.hyperparams, self.device,
                self.dtype)

    @property
    def cell_seed(self) -> int:
        return derive_seed(*self.key)

    @property
    def cell_id(self) -> str:
        return f"{self.cell_seed:016x}"

    def settings_dict(self) -> dict[str, Any]:
        return dict(self.settings)

    def hyperparams_dict(self) -> dict[str, Any]:
        return dict(self.hyperparams)


@dataclass(frozen=True)
class Skip:
    """A suite setting x estimator pair that was not run, and why."""

    settings: tuple[tuple[str, Any], ...]
    estimator: str
    reason: str


@dataclass
class Plan:
    suite: str
    cells: list[Cell]
    skipped: list[Skip] = field(default_factory=list)


@dataclass(frozen=True)
class RunRequest:
    """What the user asked for; validated and expanded by `plan`."""

    suite: str
    estimators: Sequence[str] = ()  # empty: every registered estimator that applies
    overrides: Mapping[str, Sequence[str]] = field(default_factory=dict)  # --set KEY=V1,V2 (raw)
    samples: int | None = None
    seed: int = 0
    devices: Sequence[str] = ("cpu",)
    dtype: str = "float64"


def parse_assignments(items: Iterable[str]) -> dict[str, list[str]]:
    """`KEY=V1,V2` strings -> {KEY: [V1, V2]}; a repeated KEY replaces the earlier one."""
    parsed: dict[str, list[str]] = {}
    for item in items:
        key, sep, values = item.partition("=")
        key = key.strip()
        parts = [v.strip() for v in values.split(",")]
        if not sep or not key or not values.strip() or any(not p for p in parts):
            raise BenchError(f"malformed --set {item!r}: write KEY=VALUE or KEY=V1,V2,...")
        parsed[key] = parts
    return parsed


def check_device(device: str) -> str:
    if device == "cpu":
        return device
    if device == "cuda" or device.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise BenchError("--device cuda asked for, but no CUDA GPU is visible to torch; "
                             "use --device cpu (or install a CUDA build of torch on a GPU machine)")
        index = torch.device(device).index or 0
        if index >= torch.cuda.device_count():
            raise BenchError(f"{device}: only {torch.cuda.device_count()} CUDA device(s) present")
        return device
    raise BenchError(f"unknown device '{device}'. Valid: cpu, cuda, cuda:N.")


def plan(request: RunRequest) -> Plan:
    """Validate a request and expand it into cells (and the pairs skipped, with reasons)."""
    suite = get_suite(request.suite)
    if request.dtype not in DTYPES:
        raise unknown_name("dtype", request.dtype, DTYPES)
    devices = [check_device(d) for d in dict.fromkeys(request.devices)]
    samples = suite.default_samples if request.samples is None else request.samples
    if samples < 2:
        raise BenchError(f"--samples {samples}: need at least 2 estimates per cell for a variance")
    names = list(dict.fromkeys(request.estimators)) or list(all_estimators())
    chosen = [get_estimator(name) for name in names]

    setting_values, hyper_values = _split_overrides(suite, chosen, request.overrides)
    grid = [dict(zip(setting_values, combo, strict=True))
            for combo in itertools.product(*setting_values.values())]
    problems: dict[tuple, Problem] = {}
    cells: list[Cell] = []
    skipped: list[Skip] = []
    for settings in grid:
        reason = suite.validate(settings)
        if reason is not None:
            raise BenchError(f"suite {suite.name}: {reason}")
        key = tuple(settings.items())
        problems[key] = suite.problem(settings, device="cpu", dtype=DTYPES[request.dtype])
        for estimator in chosen:
            why_not = estimator.applicability(problems[key])
            if why_not is not None:
                skipped.append(Skip(key, estimator.name, why_not))
                continue
            for hyper in _hyper_grid(estimator, hyper_values):
                for device in devices:
                    cells.append(Cell(suite.name, key, estimator.name, tuple(hyper.items()),
                                      device, request.dtype, samples, request.seed))
    if request.estimators:
        for estimator in chosen:
            reasons = [s.reason for s in skipped if s.estimator == estimator.name]
            if len(reasons) == len(grid):
                raise BenchError(f"estimator {estimator.name} does not apply to suite "
                                 f"{suite.name}: {reasons[0]}. Run `bench list` to see what "
                                 "applies where.")
    return Plan(suite.name, cells, skipped)


def _split_overrides(
    suite: Suite, chosen: list[Estimator], overrides: Mapping[str, Sequence[str]]
) -> tuple[dict[str, list[Any]], dict[tuple[str | None, str], list[Any]]]:
    """Settings keep their defaults unless overridden; other keys are estimator hyperparameters,
    for every chosen estimator that has them (`K=2,4`) or for one (`score-function-loo.K=2`)."""
    settings = {name: list(s.default) for name, s in suite.settings.items()}
    hypers: dict[tuple[str | None, str], list[Any]] = {}
    hyper_names = {h for e in chosen for h in e.hyperparams}
    for key, raw in overrides.items():
        scope, _, name = key.rpartition(".")
        if not scope and name in suite.settings:
            setting = suite.settings[name]
            values = [_parse(setting, text) for text in raw]
            for value in values:
                reason = setting.validate(value)
                if reason is not None:
                    raise BenchError(f"--set {name}={value}: {reason}")
            settings[name] = list(dict.fromkeys(values))
            continue
        if scope:
            owner = next((e for e in chosen if e.name == scope), None)
            if owner is None:
                raise unknown_name("estimator (in --set)", scope, [e.name for e in chosen])
            if name not in owner.hyperparams:
                raise unknown_name(f"hyperparameter of {scope}", name, owner.hyperparams)
            owners = [owner]
        else:
            owners = [e for e in chosen if name in e.hyperparams]
            if not owners:
                raise unknown_name(f"setting of {suite.name} or hyperparameter",
                                   name, list(suite.settings) + sorted(hyper_names))
        hyperparam = owners[0].hyperparams[name]
        values = [_parse(hyperparam, text) for text in raw]
        for owner in owners:
            for value in values:
                reason = owner.hyperparams[name].validate(value)
                if reason is not None:
                    raise BenchError(f"--set {key}={value}: {reason}")
        hypers[(scope or None, name)] = list(dict.fromkeys(values))
    return settings, hypers


def _parse(spec: Any, text: str) -> Any:
    try:
        return spec.parse(text)
    except ValueError as error:
        raise BenchError(f"--set: {error}") from None


def _hyper_grid(estimator: Estimator, hyper_values: Mapping[tuple[str | None, str], list[Any]]
                ) -> Iterator[dict[str, Any]]:
    axes = {}
    for name, spec in estimator.hyperparams.items():
        axes[name] = hyper_values.get((estimator.name, name),
                                      hyper_values.get((None, name), [spec.default]))
    for combo in itertools.product(*axes.values()):
        yield dict(zip(axes, combo, strict=True))


def chunk_size(problem: Problem, samples: int, memory: float,
               device: torch.device | str = "cpu") -> int:
    """Estimates per chunk: bounded memory (parameter elements x the estimator's memory per
    estimate, see Estimator.memory_per_estimate), at least MIN_CHUNKS chunks."""
    numel = max(int(v.numel()) for v in problem.params.values())
    budget = CUDA_CHUNK_ELEMENTS if torch.device(device).type == "cuda" else CHUNK_ELEMENTS
    by_memory = max(1, budget // max(1, int(numel * max(1.0, memory))))
    by_count = max(2, math.ceil(samples / MIN_CHUNKS))
    return max(1, min(by_memory, by_count, samples))


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class ChunkTimer:
    """Seconds per estimate of each chunk, streamed into a mean and its standard error (Welford),
    so a cell of 1e9 estimates keeps no per-chunk list.

    CPU: perf_counter around the estimator call. CUDA: events recorded on the stream around it,
    read back every FLUSH chunks and at the end, so timing costs no host round-trip per chunk.
    An event pair measures the stream's time between the two points, which includes any wait
    for the host to launch the kernels: the chunk's real cost on a synchronised device.
    """

    FLUSH = 256

    def __init__(self, device: torch.device, discard_first: bool = False) -> None:
        self.cuda = device.type == "cuda"
        self.count, self._mean, self._m2 = 0, 0.0, 0.0
        # The first chunk of a cell pays one-off costs (lazy initialisation, first allocations,
        # cold caches) that are not the estimator's: its estimates count, its time does not.
        self._discard = 1 if discard_first else 0
        self._pending: list[tuple[Any, Any, int]] = []
        self._start: Any = None

    def start(self) -> None:
        if self.cuda:
            self._start = torch.cuda.Event(enable_timing=True)
            self._start.record()
        else:
            self._start = time.perf_counter()

    def stop(self, estimates: int) -> None:
        if self.cuda:
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            self._pending.append((self._start, end, estimates))
            if len(self._pending) >= self.FLUSH:
                self._flush()
        else:
            self._add((time.perf_counter() - self._start) / estimates)

    def _add(self, seconds: float) -> None:
        if self._discard:
            self._discard -= 1
            return
        self.count += 1
        delta = seconds - self._mean
        self._mean += delta / self.count
        self._m2 += delta * (seconds - self._mean)

    def _flush(self) -> None:
        if self._pending:
            self._pending[-1][1].synchronize()
            for start, end, estimates in self._pending:
                self._add(start.elapsed_time(end) / 1000.0 / estimates)  # ms -> s
            self._pending.clear()

    def mean_and_se(self) -> tuple[float, float]:
        """Mean seconds per estimate over chunks and its standard error (NaN below 2 chunks)."""
        self._flush()
        if self.count == 0:
            return math.nan, math.nan
        if self.count < 2:
            return self._mean, math.nan
        return self._mean, math.sqrt(self._m2 / (self.count - 1) / self.count)


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


_MALLOC_TUNED = False


def tune_malloc() -> None:
    """Keep glibc from returning chunk-sized blocks to the kernel after every chunk.

    Why: by default glibc serves blocks over a (dynamic) threshold with fresh mmap pages and
    trims the heap top above 128 KiB, so every chunk's temporaries (~0.25-1 MiB each) pay page
    faults and zeroing again: measured here, that doubled run_cell's CPU time at dim 1. Serving
    blocks under 32 MiB from the heap and trimming only above 256 MiB of free heap fixes it;
    peak memory stays the chunk's working set. Process-wide, once; a no-op off glibc.
    """
    global _MALLOC_TUNED
    if _MALLOC_TUNED:
        return
    _MALLOC_TUNED = True
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3  # from glibc's malloc.h
        libc.mallopt(m_mmap_threshold, 32 << 20)
        libc.mallopt(m_trim_threshold, 256 << 20)
    except (OSError, AttributeError):  # not glibc (e.g. musl): leave the allocator alone
        pass


def run_cell(cell: Cell) -> dict[str, Any]:
    """Run one cell; return its tidy rows as columns of plain values (one row per param x coord)."""
    tune_malloc()
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


def _run_cell(cell: Cell, device: torch.device) -> dict[str, Any]:
    suite = get_suite(cell.suite)
    estimator = get_estimator(cell.estimator)
    problem = suite.problem(cell.settings_dict(), device=device, dtype=DTYPES[cell.dtype])
    hyper = cell.hyperparams_dict()
    evals = estimator.evals_per_estimate(problem, hyper)
    seed = cell.cell_seed

    state = {}
    if estimator.warmup is not None:
        # Seeded by the cell's configuration, not by the run's seed: runs at different seeds
        # then measure the same fitted estimator (same control variate / surrogate), so their
        # variances are comparable (bench check) and only the measurement noise differs.
        with seeded(derive_seed(*cell.warmup_key, "warmup"), device):
            state = {"state": estimator.warmup(problem, **hyper)}

    size = chunk_size(problem, cell.samples, estimator.memory_per_estimate(problem, hyper), device)
    widths = {name: value.numel() for name, value in problem.params.items()}
    # One accumulator for all parameters, on the device: no host round-trip per chunk.
    stats = StreamingMoments(sum(widths.values()), device)
    # Time from the second chunk on when two or more timed chunks remain (a standard error needs 2).
    timer = ChunkTimer(device, discard_first=math.ceil(cell.samples / size) >= 3)
    done = index = 0
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
    seconds, seconds_se = timer.mean_and_se()
    merged = stats.moments()
    moments, offset = {}, 0
    for name, width in widths.items():
        part = slice(offset, offset + width)
        moments[name] = Moments(**{f.name: getattr(merged, f.name)[part]
                                   for f in dataclasses.fields(Moments)})
        offset += width

    columns: dict[str, list] = {}
    for name, value in problem.params.items():
        truth = truth_se = None
        if problem.exact_gradient is not None:
            truth = problem.exact_gradient[name].detach().reshape(-1).to(device, torch.float64)
        if problem.truth_se is not None:
            truth_se = problem.truth_se[name].detach().reshape(-1).to(device, torch.float64)
        summary = moments[name].summarize(truth, truth_se)
        coords = value.numel()
        block = {
            "param": [name] * coords,
            "coord": list(range(coords)),
            "truth": (truth.cpu().numpy() if truth is not None else np.full(coords, np.nan)),
            "truth_se": (truth_se.cpu().numpy() if truth_se is not None else
                         np.zeros(coords) if truth is not None else np.full(coords, np.nan)),
            **summary,
        }
        for key, column in block.items():
            columns.setdefault(key, []).extend(np.asarray(column).tolist())
    rows = len(columns["param"])
    fixed = {
        "suite": cell.suite,
        **cell.settings_dict(),
        "estimator": cell.estimator,
        "estimator_family": estimator.family,
        "unbiased": estimator.unbiased,
        **hyper,
        "device": cell.device,
        "device_name": device_name(device),
        "dtype": cell.dtype,
        "truth_method": problem.truth_method,
        "evals_per_estimate": evals,
        "warmup_evals": estimator.warmup_evals_total(problem, hyper),
        "seconds_per_estimate": seconds,
        "seconds_per_estimate_se": seconds_se,
        "estimates_per_second": 1.0 / seconds if seconds > 0 else math.inf,
        "chunk_size": size,
        "chunks": index,
        "samples": cell.samples,
        "seed": cell.seed,
        "cell_seed": seed,
        "cell_id": cell.cell_id,
    }
    return {**{k: [v] * rows for k, v in fixed.items()}, **columns}


_DEVICE_NAMES: dict[str, str] = {}


def device_name(device: torch.device) -> str:
    key = str(device)
    if key not in _DEVICE_NAMES:
        if device.type == "cuda":
            _DEVICE_NAMES[key] = torch.cuda.get_device_name(device)
        else:
            _DEVICE_NAMES[key] = _cpu_name()
    return _DEVICE_NAMES[key]


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine() or "cpu"


@dataclass
class RunOutcome:
    run_id: str
    run_dir: Any
    plan: Plan
    computed: int
    reused: int
    # Cells that failed for good: {"cell_id", "estimator", "settings", "hyperparams", "device",
    # "reason"}; their rows are absent, and `--resume` tries them again.
    failed: list[dict[str, Any]] = field(default_factory=list)


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM via the CLI) during a run: finished cells are on disk; the run id says
    what to resume. A KeyboardInterrupt, so code that handles those still does."""

    def __init__(self, run_id: str, run_dir: Any, written: int, total: int) -> None:
        super().__init__(f"run {run_id} interrupted after {written} of {total} cells")
        self.run_id, self.run_dir, self.written, self.total = run_id, run_dir, written, total


def execute(request: RunRequest, out: Any, *, command: str = "", run_id: str | None = None,
            on_cell: Any = None, executor: Any = None,
            on_start: Any = None) -> RunOutcome:
    """Plan the request, then run every cell not already in the run folder on `executor`
    (bench.executors; default: in this process), writing each as it arrives.

    `on_start(run_id, run_dir, todo, total)` is called once the run folder exists;
    `on_cell(cell, done, total)` after every cell, failed ones included (for progress bars).
    Cells are written atomically one by one, so an interruption (RunInterrupted) or a killed
    process loses only the cells in flight, and `run_id=` (--resume) computes just the rest.
    """
    from pathlib import Path

    from bench import store
    from bench.executors import LocalExecutor

    the_plan = plan(request)
    root = store.prepare_out(Path(out))
    request_record = request_to_json(request)
    if run_id is not None:
        run_dir = root / run_id
        meta = store.read_run_json(run_dir)
        if meta.get("request") != request_record:
            raise BenchError(f"run {run_id} was made with different options "
                             f"({meta.get('command', '?')}); repeat those, or start a new run")
    executor = executor if executor is not None else LocalExecutor()
    # Started before a new run folder exists: a cluster that cannot start leaves nothing behind.
    with executor:
        if run_id is None:
            run_id = store.new_run_id()
            run_dir = root / run_id
            meta = store.run_metadata(run_id, command) | {"request": request_record}
            run_dir.mkdir(parents=True)
            store.write_run_json(run_dir, meta)
        meta = meta | {"executor": getattr(executor, "name", type(executor).__name__)}
        hyper_columns = {name: spec.type for cell in the_plan.cells
                         for name, spec in get_estimator(cell.estimator).hyperparams.items()}
        finished = store.finished_cells(run_dir)
        todo = [c for c in the_plan.cells if c.cell_id not in finished]
        reused = len(the_plan.cells) - len(todo)
        if on_start is not None:
            on_start(run_id, run_dir, len(todo), len(the_plan.cells))
        failed: list[dict[str, Any]] = []
        done = 0
        try:
            for result in executor.run(todo):
                if result.error is None:
                    store.write_cell(run_dir, result.cell.cell_id, result.rows, meta,
                                     hyper_columns)
                else:
                    failed.append(_failure(result.cell, result.error))
                done += 1
                if on_cell is not None:
                    on_cell(result.cell, done, len(todo))
        except KeyboardInterrupt:
            written = len(store.finished_cells(run_dir))
            store.write_run_json(run_dir, meta | {"interrupted_at": _now(),
                                                  "cells": len(the_plan.cells),
                                                  "cells_written": written})
            raise RunInterrupted(run_id, run_dir, written, len(the_plan.cells)) from None
    meta = {k: v for k, v in meta.items() if k not in ("interrupted_at", "cells_written")} | {
        "finished_at": _now(),
        "cells": len(the_plan.cells),
        "failed": failed,
        "skipped": [{"settings": dict(s.settings), "estimator": s.estimator, "reason": s.reason}
                    for s in the_plan.skipped],
    }
    store.write_run_json(run_dir, meta)
    return RunOutcome(run_id, run_dir, the_plan, len(todo), reused, failed)


def _failure(cell: Cell, reason: str) -> dict[str, Any]:
    return {"cell_id": cell.cell_id, "estimator": cell.estimator,
            "settings": cell.settings_dict(), "hyperparams": cell.hyperparams_dict(),
            "device": cell.device, "reason": reason}


def request_to_json(request: RunRequest) -> dict[str, Any]:
    return {
        "suite": request.suite,
        "estimators": list(request.estimators),
        "overrides": {k: list(v) for k, v in sorted(request.overrides.items())},
        "samples": request.samples,
        "seed": request.seed,
        "devices": list(request.devices),
        "dtype": request.dtype,
    }


def _now() -> str:
    import datetime as dt

    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
