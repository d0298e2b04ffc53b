"""Planning: a request (suite, estimators, --set overrides, devices, dtype, samples, seed) is
validated and expanded into cells, one per suite setting x estimator x hyperparameters x device,
plus the pairs that do not apply, each with its reason."""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from gradbench.app.errors import BenchError
from gradbench.core.estimator import Estimator, all_estimators, get_estimator
from gradbench.core.names import unknown_name
from gradbench.core.params import INT64_MAX, Param
from gradbench.core.problem import Problem
from gradbench.core.seeding import derive_seed
from gradbench.core.suite import Suite, get_suite

DTYPES = {"float64": torch.float64, "float32": torch.float32}
# Per-coordinate rows written per parameter (the first N coordinates; `tensor` rows always):
# every coordinate of the default grids (up to 1000), not 2e5 rows for a Bayesian layer.
DEFAULT_COORDS = 1000
# Estimates are accumulated in float64 whatever the dtype (measure.chunk_size counts the same).
BYTES_PER_VALUE = 8


@dataclass(frozen=True)
class Cell:
    """One measurement: a suite setting x an estimator (with hyperparameters) x a device. The
    versions are part of the key: a changed suite or estimator measures new cells."""

    suite: str
    settings: tuple[tuple[str, Any], ...]
    estimator: str
    hyperparams: tuple[tuple[str, Any], ...]
    device: str
    dtype: str
    samples: int
    seed: int
    suite_version: int = 1
    estimator_version: int = 1
    # Which rows are written, not what is measured: not part of the key (nor of the seeds).
    coords: int = DEFAULT_COORDS

    @property
    def key(self) -> tuple:
        return (self.suite, self.suite_version, self.settings, self.estimator,
                self.estimator_version, self.hyperparams, self.device, self.dtype, self.samples,
                self.seed)

    @property
    def warmup_key(self) -> tuple:
        """The key without samples and seed: what a warm-up's fit may depend on."""
        return self.key[:-2]

    @property
    def cell_seed(self) -> int:
        return derive_seed(*self.key)

    @property
    def cell_id(self) -> str:
        return f"{self.cell_seed:016x}"

    @property
    def task_id(self) -> str:
        """What executors key tasks by (bench train's trajectories have one too)."""
        return self.cell_id

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
    # The request in canonical form (values parsed, sorted, defaults filled in): two requests
    # with the same record ask for the same cells (--resume compares these).
    request: dict[str, Any] = field(default_factory=dict)
    # Per cell id: the cost in coordinate-evaluations of f (warm-up included), for time
    # estimates and the ETA; and the working memory of one estimate, in bytes.
    work: dict[str, float] = field(default_factory=dict)
    memory: dict[str, float] = field(default_factory=dict)


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
    coords: int = DEFAULT_COORDS  # per-coordinate rows per parameter (--coords)


def parse_assignments(items: Iterable[str]) -> dict[str, list[str]]:
    """`KEY=V1,V2` strings -> {KEY: [V1, V2]}; a KEY given twice is refused (which should win
    is a guess, and merging would silently widen the grid)."""
    parsed: dict[str, list[str]] = {}
    for item in items:
        key, sep, values = item.partition("=")
        key = key.strip()
        parts = [v.strip() for v in values.split(",")]
        if not sep or not key or not values.strip() or any(not p for p in parts):
            raise BenchError(f"malformed --set {item!r}: write KEY=VALUE or KEY=V1,V2,...")
        if key in parsed:
            raise BenchError(f"--set {key} is given twice; give all its values once: "
                             f"--set {key}={','.join(parsed[key] + parts)}")
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


def check_seed(seed: int) -> int:
    if abs(seed) > INT64_MAX:
        raise BenchError(f"--seed {seed} is outside the 64-bit integer range; give a seed "
                         f"between -{INT64_MAX} and {INT64_MAX}")
    return seed


def plan(request: RunRequest) -> Plan:
    """Validate a request and expand it into cells (and the pairs skipped, with reasons).
    Refuses (BenchError) a cell whose single estimate cannot fit in the device's memory."""
    suite = get_suite(request.suite)
    if request.dtype not in DTYPES:
        raise unknown_name("dtype", request.dtype, DTYPES)
    devices = [check_device(d) for d in dict.fromkeys(request.devices)]
    samples = suite.default_samples if request.samples is None else request.samples
    if samples < 2:
        raise BenchError(f"--samples {samples}: need at least 2 estimates per cell for a variance")
    check_seed(request.seed)
    if request.coords < 0:
        raise BenchError(f"--coords {request.coords}: give the number of coordinates per "
                         "parameter to write rows for (0: tensor rows only)")
    names = list(dict.fromkeys(request.estimators)) or list(all_estimators())
    chosen = [get_estimator(name) for name in names]

    setting_values, hyper_values = _split_overrides(suite, chosen, request.overrides)
    grid = [dict(zip(setting_values, combo, strict=True))
            for combo in itertools.product(*setting_values.values())]
    result = Plan(suite.name, [], request=_record(request, suite.name, samples, devices,
                                                    setting_values, hyper_values))
    limits = {device: memory_limit(device) for device in devices}
    for settings in grid:
        problem = _build(suite, settings, DTYPES[request.dtype])
        key = tuple(settings.items())
        for estimator in chosen:
            why_not = estimator.applicability(problem)
            if why_not is not None:
                result.skipped.append(Skip(key, estimator.name, why_not))
                continue
            for hyper in _hyper_grid(estimator, hyper_values):
                for device in devices:
                    cell = Cell(suite.name, key, estimator.name, tuple(hyper.items()), device,
                                request.dtype, samples, request.seed, suite.version,
                                estimator.version, request.coords)
                    _cost(result, cell, estimator, problem, hyper, limits[device])
    if request.estimators:
        _refuse_inapplicable(suite, chosen, result.skipped, len(grid))
    return result


def _record(request: RunRequest, suite: str, samples: int, devices: list[str],
            settings: Mapping[str, list[Any]],
            hypers: Mapping[tuple[str | None, str], list[Any]]) -> dict[str, Any]:
    """The canonical form of a request: `k=0.0` and `k=0`, or `-e a -e b` and `-e b -e a`,
    give the same record."""
    return {
        "suite": suite,
        "estimators": sorted(set(request.estimators)),
        "settings": {name: sorted(values) for name, values in sorted(settings.items())},
        "hyperparams": {f"{scope}.{name}" if scope else name: sorted(values)
                        for (scope, name), values in sorted(hypers.items(),
                                                            key=lambda kv: str(kv[0]))},
        "samples": samples,
        "seed": request.seed,
        "devices": sorted(devices),
        "dtype": request.dtype,
    }


def _cost(result: Plan, cell: Cell, estimator: Estimator, problem: Problem,
          hyper: Mapping[str, Any], limit_and_name: tuple[float, str]) -> None:
    """Add `cell` to the plan with its work and memory, refusing it if one estimate cannot fit
    in the memory of its device."""
    coords = problem.numel
    evals = estimator.evals_per_estimate(problem, hyper)
    warmup = estimator.warmup_evals_total(problem, hyper)
    need = estimator.memory_per_estimate(problem, hyper) * coords * BYTES_PER_VALUE
    limit, where = limit_and_name
    if need > limit:
        settings = " ".join(f"{k}={v}" for k, v in (*cell.settings, *cell.hyperparams))
        raise BenchError(
            f"{cell.estimator} at {settings} needs at least {_bytes(need)} of working memory for "
            f"one estimate ({coords:,} coordinates x its memory factor "
            f"{estimator.memory_per_estimate(problem, hyper):g} x {BYTES_PER_VALUE} B), more "
            f"than the {_bytes(limit)} {where}; use smaller settings or hyperparameters")
    result.cells.append(cell)
    result.work[cell.cell_id] = (cell.samples * evals + warmup) * coords
    result.memory[cell.cell_id] = need


def memory_limit(device: str) -> tuple[float, str]:
    """The memory one estimate may use on `device`, and how to name that limit."""
    if device.startswith("cuda"):
        total = torch.cuda.mem_get_info(torch.device(device))[1]
        return float(total), f"of {device}'s memory"
    try:
        with open("/proc/meminfo") as handle:
            fields = dict(line.split(":", 1) for line in handle)
        return float(fields["MemAvailable"].split()[0]) * 1024, "of memory available now"
    except (OSError, KeyError, ValueError):
        pages = os.sysconf("SC_PHYS_PAGES") if hasattr(os, "sysconf") else 0
        size = pages * os.sysconf("SC_PAGE_SIZE") if pages else 0
        return (float(size) if size > 0 else math.inf), "of physical memory"


def _bytes(value: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if value < 1024 or unit == "PiB":
            return f"{value:,.0f} {unit}" if unit == "B" else f"{value:,.1f} {unit}"
        value /= 1024
    return f"{value:g} B"


def _build(suite: Suite, settings: dict[str, Any], dtype: torch.dtype) -> Problem:
    try:
        return suite.problem(settings, device="cpu", dtype=dtype)
    except ValueError as error:  # an invalid combination of settings: bad input
        raise BenchError(str(error)) from None


def _refuse_inapplicable(suite: Suite, chosen: list[Estimator], skipped: list[Skip],
                         settings: int) -> None:
    for estimator in chosen:
        reasons = [s.reason for s in skipped if s.estimator == estimator.name]
        if len(reasons) == settings:
            raise BenchError(f"estimator {estimator.name} does not apply to suite {suite.name}: "
                             f"{reasons[0]}. Run `bench list` to see what applies where.")


def _split_overrides(
    suite: Suite, chosen: list[Estimator], overrides: Mapping[str, Sequence[str]]
) -> tuple[dict[str, list[Any]], dict[tuple[str | None, str], list[Any]]]:
    """Settings keep their defaults unless overridden; other keys are estimator hyperparameters,
    for every chosen estimator that has them (`K=2,4`) or for one (`score-function-loo.K=2`)."""
    settings = {name: list(s.defaults) for name, s in suite.settings.items()}
    hypers: dict[tuple[str | None, str], list[Any]] = {}
    hyper_names = {h for e in chosen for h in e.hyperparams}
    for key, raw in overrides.items():
        scope, _, name = key.rpartition(".")
        if not scope and name in suite.settings:
            settings[name] = _values(suite.settings[name], raw, key)
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
        values = _values(owners[0].hyperparams[name], raw, key)
        for owner in owners[1:]:
            _values(owner.hyperparams[name], raw, key)
        hypers[(scope or None, name)] = values
    return settings, hypers


def _values(spec: Param, raw: Sequence[str], key: str) -> list[Any]:
    """Parse and validate the values given for one key (duplicates dropped, order kept)."""
    try:
        values = [spec.parse(text) for text in raw]
    except ValueError as error:
        raise BenchError(f"--set {key}: {error}") from None
    for value in values:
        reason = spec.validate(value)
        if reason is not None:
            raise BenchError(f"--set {key}={value}: {reason}")
    return list(dict.fromkeys(values))


def _hyper_grid(estimator: Estimator, hyper_values: Mapping[tuple[str | None, str], list[Any]]
                ) -> Iterator[dict[str, Any]]:
    axes = {}
    for name, spec in estimator.hyperparams.items():
        axes[name] = hyper_values.get((estimator.name, name),
                                      hyper_values.get((None, name), list(spec.defaults)))
    for combo in itertools.product(*axes.values()):
        yield dict(zip(axes, combo, strict=True))
