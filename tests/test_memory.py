"""Memory stays flat in the number of samples: a cell streams its estimates chunk by chunk into
moments, so 10x more estimates must not raise the peak RSS (the full 1e9-estimate measurement is
benchmarks/peak_memory.py, not a unit test)."""

import json
import subprocess
import sys

SCRIPT = r"""
import json, resource, torch
torch.set_num_threads(1)
from gradbench.app import execute, measure, planning

def cell(estimator, dim, samples):
    settings = (("mu", 1.0), ("sigma", 1.0), ("k", 0.0), ("dim", dim))
    return planning.Cell("gaussian-quadratic", settings, estimator, (), "cpu", "float64",
                       samples, 0)

def peak_kib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux

out = {}
for estimator, dim in (("pathwise", 1), ("score-function", 2)):
    measure.run_cell(cell(estimator, dim, 100_000))  # warm: imports, allocator, first chunks
    for samples in (1_000_000, 10_000_000):
        rows = measure.run_cell(cell(estimator, dim, samples))
        assert rows["n"][0] == samples
        out[f"{estimator}-{samples}"] = peak_kib()
print(json.dumps(out))
"""


def test_peak_rss_does_not_grow_with_samples():
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    peaks = json.loads(done.stdout.strip().splitlines()[-1])
    # Keeping the estimates would cost 8 bytes x params x dim x samples: 9e6 more estimates of
    # dim 1 (2 params) = 144 MB; of dim 2, 288 MB. A chunk's working set is ~1-3 MB
    # (measure.CACHE_BYTES // 8 = 2^15 elements per parameter, ~10 float64 temporaries), so 16 MiB
    # of growth is room for allocator noise and ~1/10 of the smallest leak that matters.
    for estimator in ("pathwise", "score-function"):
        small, large = peaks[f"{estimator}-1000000"], peaks[f"{estimator}-10000000"]
        assert large - small < 16 * 1024, (estimator, small, large)
