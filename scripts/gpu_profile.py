"""Where a CUDA cell's time goes: torch.profiler over one pathwise cell on gaussian-quadratic at
dim 1 (float32 by default), kernels ranked by their device time, grouped by the Python function
of gradbench that launched them (estimator, streaming moments, tails, ...).

    python scripts/gpu_profile.py [--samples 2**30] [--dtype float32] [--rows 25]
"""

from __future__ import annotations

import argparse
import dataclasses

import torch
from torch.profiler import ProfilerActivity, profile

from gradbench.app import measure, planning, process

SETTINGS = (("mu", 1.0), ("sigma", 1.0), ("k", 0.0), ("dim", 1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--samples", type=lambda text: int(eval(text, {})), default=1 << 30)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--rows", type=int, default=25)
    args = parser.parse_args()
    process.configure(threads=1)
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to profile")
        return
    cell = planning.Cell("gaussian-quadratic", SETTINGS, "pathwise", (), "cuda", args.dtype,
                         args.samples, 0)
    measure.run_cell(dataclasses.replace(cell, samples=1 << 22, seed=1))  # warm
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA],
                 with_stack=True) as prof:
        measure.run_cell(cell)
        torch.cuda.synchronize()
    for averages in (prof.key_averages(), prof.key_averages(group_by_stack_n=5)):
        try:
            print(averages.table(sort_by="self_device_time_total", row_limit=args.rows))
        except (AttributeError, KeyError, ValueError):  # older torch: the CUDA-named key
            print(averages.table(sort_by="self_cuda_time_total", row_limit=args.rows))


if __name__ == "__main__":
    main()
