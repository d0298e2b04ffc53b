"""Per-sample gradients per second of pathwise on gaussian-quadratic at dim 1, float32 and
float64, on every available device, with statistics included, timed two ways: the cell's own
synchronised per-chunk timing (estimator only) and wall time around the whole cell with
torch.cuda.synchronize() on both sides (estimates + statistics + summary).

    python scripts/gpu_rate.py [--samples 2**32]
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch

from gradbench.app import measure, planning, process

SETTINGS = (("mu", 1.0), ("sigma", 1.0), ("k", 0.0), ("dim", 1))


def rate(device: str, dtype: str, samples: int) -> tuple[float, float, dict]:
    cell = planning.Cell("gaussian-quadratic", SETTINGS, "pathwise", (), device, dtype,
                         samples, 0)
    measure.run_cell(dataclasses.replace(cell, samples=1 << 20, seed=1))  # warm: kernels, allocator
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    rows = measure.run_cell(cell)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    wall = time.perf_counter() - start
    return samples / wall, rows["estimates_per_second"][0], rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--samples", type=lambda text: int(eval(text, {})), default=1 << 26)
    args = parser.parse_args()
    process.configure(threads=1)  # as `bench run` does: one torch thread, glibc malloc tuned
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    print(f"torch {torch.__version__}; "
          + (f"GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else "no GPU"))
    for device in devices:
        samples = args.samples if device == "cuda" else min(args.samples, 1 << 22)
        for dtype in ("float32", "float64"):
            wall, timed, rows = rate(device, dtype, samples)
            means = dict(zip(rows["param"], rows["mean"], strict=True))
            print(f"{device:5s} {dtype}: {wall:.3e} estimates/s with statistics (wall), "
                  f"{timed:.3e} estimator-only; {samples:.2e} estimates; mean d/dmu "
                  f"{means['mu']:.6f} (exact 2), d/dsigma {means['sigma']:.6f} (exact 2)")


if __name__ == "__main__":
    main()
