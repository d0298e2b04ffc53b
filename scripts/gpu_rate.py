"""Per-sample gradients per second of pathwise on gaussian-quadratic at dim 1, float32 and
float64, on every available device, with statistics included, timed two ways: the cell's own
synchronised per-chunk timing (estimator only) and wall time around the whole cell with
torch.cuda.synchronize() on both sides (estimates + statistics + summary). Beside it, the RNG
floor (torch.randn into a preallocated tensor, synchronised) of the same dtype and device, and on
CUDA the cell at other chunk sizes (measure.CUDA_BYTES), to show where launch overhead ends,
and with the tail buffer's host-side screen on (tail_buffer.screens), which only the CPU uses.

    python scripts/gpu_rate.py [--samples 2**32]
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch

from gradbench.app import measure, planning, process
from gradbench.app.timing import synchronize
from gradbench.core import tail_buffer

SETTINGS = (("mu", 1.0), ("sigma", 1.0), ("k", 0.0), ("dim", 1))
DTYPES = {"float32": torch.float32, "float64": torch.float64}


def randn_rate(device: str, dtype: str, size: int = 1 << 24, repeats: int = 20) -> float:
    """torch.randn into a preallocated buffer: the normals pathwise needs, at their own limit."""
    buffer = torch.empty(size, dtype=DTYPES[dtype], device=device)
    buffer.normal_()
    synchronize(torch.device(device))
    start = time.perf_counter()
    for _ in range(repeats):
        buffer.normal_()
    synchronize(torch.device(device))
    return size * repeats / (time.perf_counter() - start)


def rate(device: str, dtype: str, samples: int) -> tuple[float, float, dict]:
    cell = planning.Cell("gaussian-quadratic", SETTINGS, "pathwise", (), device, dtype,
                         samples, 0)
    measure.run_cell(dataclasses.replace(cell, samples=1 << 22, seed=1))  # warm: kernels, allocator
    synchronize(torch.device(device))
    start = time.perf_counter()
    rows = measure.run_cell(cell)
    synchronize(torch.device(device))
    wall = time.perf_counter() - start
    return samples / wall, rows["estimates_per_second"][0], rows


def report(device: str, dtype: str, samples: int, label: str = "") -> None:
    wall, timed, rows = rate(device, dtype, samples)
    coord = [i for i, level in enumerate(rows.get("level", ["coord"] * len(rows["param"])))
             if level == "coord"]
    means = {rows["param"][i]: (rows["mean"][i], rows["mean_se"][i]) for i in coord}
    mu, sigma = means["mu"], means["sigma"]
    print(f"{device:5s} {dtype} {label:18s}: {wall:.3e} estimates/s with statistics (wall), "
          f"{timed:.3e} estimator-only; {samples:.2e} estimates; chunk {rows['chunk_size'][0]}; "
          f"d/dmu {mu[0]:.6f} +- {mu[1]:.1e} (exact 2), "
          f"d/dsigma {sigma[0]:.6f} +- {sigma[1]:.1e} (exact 2)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--samples", type=lambda text: int(eval(text, {})), default=1 << 26)
    args = parser.parse_args()
    process.configure(threads=1)  # as `bench run` does: one torch thread, glibc malloc tuned
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    print(f"torch {torch.__version__}; "
          + (f"GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else "no GPU"))
    for device in devices:
        for dtype in DTYPES:
            print(f"{device:5s} {dtype} torch.randn floor: {randn_rate(device, dtype):.3e}/s",
                  flush=True)
    for device in devices:
        samples = args.samples if device == "cuda" else min(args.samples, 1 << 22)
        for dtype in DTYPES:
            report(device, dtype, samples, "default chunks")
    if "cuda" in devices:
        default = measure.CUDA_BYTES
        for shift in (2, 4):  # 4x and 16x larger chunks than the default
            measure.CUDA_BYTES = default << shift
            for dtype in DTYPES:
                report("cuda", dtype, args.samples, f"chunks x{1 << shift}")
        measure.CUDA_BYTES = default
        # The tail buffer's host-side screen, which only the CPU uses (tail_buffer.screens):
        # on CUDA it costs a sync per chunk and saves the topk merges of every row.
        screens, tail_buffer.screens = tail_buffer.screens, lambda device: True
        for shift in (0, 4):
            measure.CUDA_BYTES = default << shift
            for dtype in DTYPES:
                report("cuda", dtype, args.samples, f"screened, x{1 << shift}")
        measure.CUDA_BYTES, tail_buffer.screens = default, screens


if __name__ == "__main__":
    main()
