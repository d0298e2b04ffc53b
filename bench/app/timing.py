"""Timing a cell's chunks on CPU or CUDA, and naming the device the rows were measured on."""

from __future__ import annotations

import math
import time
from typing import Any

import torch


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
