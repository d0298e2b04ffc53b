#!/usr/bin/env bash
# The runs behind gradbench's own variance gate, into folder OUT. CI runs them at the default
# seed and checks them against results/baseline/; the baseline is the same runs at --seed 1:
#   scripts/gate_runs.sh OUT              # what CI checks
#   scripts/gate_runs.sh results/baseline --seed 1   # refresh the baseline (see its README)
# 100,000 estimates for the cheap dim-1 cells: at the default 4,000 a 1.25x variance inflation
# hides in half of the one-dimensional score-function cells (scripts/calibrate_check.py).
set -euo pipefail
out=$1
shift
bench=${BENCH:-.venv/bin/bench}
"$bench" run -s gaussian-quadratic --set dim=30 --out "$out" "$@" > /dev/null
"$bench" run -s gaussian-quadratic --set dim=1 --samples 100000 --out "$out" "$@" > /dev/null
"$bench" run -s gaussian-exp --samples 100000 --out "$out" "$@" > /dev/null
"$bench" run -s gaussian-cos --samples 100000 --out "$out" "$@" > /dev/null
"$bench" run -s bernoulli-toy --out "$out" "$@" > /dev/null
