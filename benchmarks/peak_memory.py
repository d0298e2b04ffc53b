"""Peak memory of `bench run` against the number of estimates: constant memory means the peak
RSS of a 1e9-estimate cell is that of a 1e3-estimate one (the interpreter, torch, pandas,
pyarrow and rich account for nearly all of it).

    .venv/bin/python benchmarks/peak_memory.py                 # 1e3 and 1e9 estimates, dim 1
    .venv/bin/python benchmarks/peak_memory.py --samples 1e7   # a quicker look

Each size runs in its own `bench run` subprocess (pathwise on gaussian-quadratic, dim 1, CPU);
the peak RSS and CPU time come from that child's rusage (os.wait4), so nothing else counts.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = [sys.executable, "-m", "gradbench.app.cli", "run", "-s", "gaussian-quadratic",
         "-e", "pathwise",
         "--set", "dim=1", "--set", "sigma=1", "--set", "k=0", "--set", "mu=1"]


def measure(samples: int, out: Path, bench: list[str] = BENCH) -> tuple[float, float, float]:
    """(peak RSS MiB, wall s, CPU s) of one `bench run --samples N` (the command `bench`)."""
    start = time.perf_counter()
    child = subprocess.Popen([*bench, "--samples", str(samples), "--out", str(out)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"bench run --samples {samples} failed: {child.stderr.read().decode()}")
    return usage.ru_maxrss / 1024, wall, usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=float, default=1e9, help="estimates in the big run")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        for samples in (1000, int(args.samples)):
            rss, wall, cpu = measure(samples, Path(folder))
            print(f"{samples:>14,} estimates: peak RSS {rss:7.1f} MiB, wall {wall:7.1f} s, "
                  f"CPU {cpu:7.1f} s ({samples / cpu:.3g} estimates per CPU-second)")


if __name__ == "__main__":
    main()
