"""Peak memory of the scale cell of issue 10: `bench run` of pathwise on a Bayesian layer of
784 x 256 weights (bayes-linear, data=synthetic, batch 128; 401,920 parameters), against the
number of estimates. Goal: peak RSS under 2 GiB for 1e4 estimates.

    .venv/bin/python benchmarks/bayes_layer_memory.py                  # 64 and 1e4 estimates
    .venv/bin/python benchmarks/bayes_layer_memory.py --samples 2000   # a quicker look

Each size runs in its own `bench run` subprocess; peak RSS and CPU time come from that child's
rusage (os.wait4). The small run shows the fixed part: the interpreter and libraries, and the
cell's 401,920 per-coordinate result rows (Python lists, then Arrow), which dominate; the
estimates themselves stream in chunks of 64 (about 0.4 GB of working memory), so the peak
must not grow with the number of estimates.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from peak_memory import measure  # same folder: one way to run a child and read its rusage

BENCH = [sys.executable, "-m", "gradbench.app.cli", "run", "-s", "bayes-linear",
         "-e", "pathwise", "--set", "data=synthetic", "--set", "batch=128",
         "--set", "log_sigma=-3", "--set", "in_features=784", "--set", "out_features=256"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=float, default=1e4, help="estimates in the big run")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        for samples in (64, int(args.samples)):
            rss, wall, cpu = measure(samples, Path(folder), BENCH)
            verdict = "" if samples == 64 else (
                f"; goal < 2048 MiB {'met' if rss < 2048 else 'MISSED'}")
            print(f"{samples:>8,} estimates: peak RSS {rss:7.1f} MiB, wall {wall:7.1f} s, "
                  f"CPU {cpu:7.1f} s{verdict}")


if __name__ == "__main__":
    main()
