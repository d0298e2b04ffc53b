"""Are a run's CUDA cells statistically consistent with its CPU cells? Pairs every row of
`bench run --device cpu --device cuda` by everything but the device (independent draws: the
generators differ), and tests the mean and the variance of each pair with the gate's own
decisions (two-sided p-values, Benjamini-Hochberg over all tests at --alpha). Only rows whose
statistics are reliable on both sides are tested (heavy tails make a z-test overconfident: the
`mean_reliable` and `reliable` columns), as `bench check` does; means on coordinate rows only
(a tensor row's mean is the coordinate it selects as worst).

    python scripts/gpu_consistency.py RESULTS_DIR [--alpha 0.005]
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from gradbench.results import decisions, store

KEY = ["suite", "settings", "estimator", "hyperparams", "dtype", "samples", "param", "level",
       "coord"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("results")
    parser.add_argument("--alpha", type=float, default=0.005)
    args = parser.parse_args()
    frame = store.read_results(args.results)
    key = [k for k in KEY if k in frame.columns]
    cpu = frame[frame["device"] == "cpu"].set_index(key)
    gpu = frame[frame["device"] == "cuda"].set_index(key)
    both = cpu.merge(gpu, how="inner", left_index=True, right_index=True,
                     suffixes=("_cpu", "_gpu"))
    if both.empty:
        print("no CPU/CUDA pairs in", args.results)
        return 1
    # A tensor row's mean is its worst coordinate's (selected per run): only coordinate means.
    coord = both.index.get_level_values("level") == "coord"
    mean_ok = both["mean_reliable_cpu"] & both["mean_reliable_gpu"] & coord
    var_ok = both["reliable_cpu"] & both["reliable_gpu"]
    mean_z = ((both["mean_cpu"] - both["mean_gpu"])
              / np.hypot(both["mean_se_cpu"], both["mean_se_gpu"]))[mean_ok]
    var_z = ((both["variance_cpu"] - both["variance_gpu"])
             / np.hypot(both["variance_se_cpu"], both["variance_se_gpu"]))[var_ok]
    z = np.concatenate([mean_z.to_numpy(), var_z.to_numpy()])
    z = z[np.isfinite(z)]  # exact rows (SE 0 on both sides, equal values) have no test
    rejected = decisions.benjamini_hochberg(decisions.two_sided_p(z)) < args.alpha
    names = f"{gpu['device_name'].iloc[0]} vs {cpu['device_name'].iloc[0]}"
    print(f"{names}: {len(both)} row pairs, {len(z)} tests of reliable means and variances "
          f"({(~mean_ok).sum() + (~var_ok).sum()} not testable); "
          f"max |z| {np.abs(z).max():.2f}; {(np.abs(z) > 3).sum()} with |z| > 3 "
          f"(expected under agreement {len(z) * 2.7e-3:.1f}); "
          f"{rejected.sum()} rejected by Benjamini-Hochberg at alpha={args.alpha}")
    worst = both[mean_ok].assign(z=mean_z.abs()).dropna(subset=["z"]).sort_values("z").tail(3)
    print(worst[["mean_cpu", "mean_se_cpu", "mean_gpu", "mean_se_gpu", "z"]].to_string())
    return int(rejected.any())


if __name__ == "__main__":
    sys.exit(main())
