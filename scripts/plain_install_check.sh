#!/usr/bin/env bash
# Install gradbench without extras into a fresh virtual environment and run every CLI command
# once from an empty folder, so a runtime import that only an extra provides fails here.
#   scripts/plain_install_check.sh [VENV_DIR]     (default: a temporary folder)
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
venv=${1:-$(mktemp -d)/plain}
work=$(mktemp -d)
python3 -m venv "$venv"
"$venv/bin/pip" install -q -c "$repo/constraints.txt" torch==2.13.0
"$venv/bin/pip" install -q -c "$repo/constraints.txt" "$repo"
cd "$work"
bench="$venv/bin/bench"
step() {  # run a command; fail on a non-zero exit or a traceback in its output
    echo "+ bench $*"
    if ! output=$("$bench" "$@" 2>&1); then echo "$output"; exit 1; fi
    if grep -q "Traceback" <<<"$output"; then echo "$output"; exit 1; fi
}
step --version
step list
step run --suite gaussian-quadratic -e pathwise -e score-function --set dim=1 --samples 500 \
    --out results
run_dir=$(ls -d results/2*/ | head -1)
step show "$run_dir"
step show "$run_dir" --format json
step report results --out report
step check "$run_dir" --baseline "$run_dir"
step train --suite binary-latent --steps 4 --seeds 1 --eval-every 2 --variance-draws 4 \
    --out train
step report train results --out both
test -f report/index.html && test -f both/index.html
echo "plain install: every command ran"
