#!/usr/bin/env bash
# The GPU check of issue 13, as one prepared script for a CUDA machine (the device tool's H200:
# its python3 has torch and gradbench's other dependencies; nothing can be downloaded there).
#   scripts/gpu_check.sh [OUTDIR]          (default: $OUT, else ./gpu-check)
# Without a GPU it still runs: the CUDA tests skip and only CPU rates are printed (a dry run).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-${OUT:-gpu-check}}
mkdir -p "$out"
results=$(mktemp -d)/results  # hundreds of parquet files: kept off $OUT, which returns 8
py=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
if ! "$py" -c "import gradbench" 2>/dev/null; then
    # gradbench itself, without building or downloading anything: the namespace the packaging
    # makes (bench/ as gradbench, estimators/ and suites/ inside it), as links in a temp folder.
    site=$(mktemp -d)/site
    mkdir -p "$site/gradbench"
    for item in bench/*; do ln -s "$PWD/$item" "$site/gradbench/$(basename "$item")"; done
    ln -s "$PWD/estimators" "$site/gradbench/estimators"
    ln -s "$PWD/suites" "$site/gradbench/suites"
    export PYTHONPATH=$site${PYTHONPATH:+:$PYTHONPATH}
fi
(nvidia-smi || echo "no nvidia-smi") >"$out/nvidia-smi.txt" 2>&1
devices="--device cpu"
"$py" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" \
    && devices="--device cpu --device cuda"
status=0
step() {  # name, then the command; output to $out/name.txt and the terminal
    local name=$1; shift
    echo "== $name: $*"
    "$@" 2>&1 | tee "$out/$name.txt"
    local rc=${PIPESTATUS[0]}
    echo "== $name: exit $rc"
    [ "$rc" -eq 0 ] || status=1
}
# Timeouts sum to under 8 minutes: the whole check fits one device call with time to spare.
step test_cuda timeout 120 "$py" -m pytest -q -p no:cacheprovider tests/test_cuda.py
step rate timeout 100 "$py" scripts/gpu_rate.py --samples '2**32'
step run timeout 120 "$py" -m gradbench.app.cli run --suite gaussian-quadratic $devices \
    --out "$results"
step consistency timeout 30 "$py" scripts/gpu_consistency.py "$results"
step benchmarks timeout 120 "$py" -m pytest -q -p no:cacheprovider benchmarks --benchmark-only \
    -k "cuda and (dim1- or bernoulli)"
exit $status
