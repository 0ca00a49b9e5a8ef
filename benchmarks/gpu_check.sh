#!/usr/bin/env bash
# make gpu-check: on a CUDA machine, the test suite, then sahs-fast trained for 5 minutes on a 512x512 synthetic
# subject (benchmarks/gpu_check.py); one JSON with both. Extra arguments go to gpu_check.py (e.g. --minutes 1).
#   GPU_CHECK_DIR         where pytest's report and log, the subject, the run and gpu_check.json go
#                         (benchmarks/runs/gpu_check)
#   GPU_CHECK_SKIP_TESTS  1: skip the test suite (the JSON's "tests" is then null)
# Without CUDA: one line on stderr and status 2, before anything slow runs.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
DIR=${GPU_CHECK_DIR:-benchmarks/runs/gpu_check}

"$PY" benchmarks/gpu_check.py --check-device

mkdir -p "$DIR"
junit=()
if [ "${GPU_CHECK_SKIP_TESTS:-0}" != 1 ]; then
    # The tests pick their own devices (most are CPU-sized); a failing test is counted in the JSON, not fatal.
    rm -f "$DIR/pytest.xml"
    "$PY" -m pytest -q tests --junitxml="$DIR/pytest.xml" 2>&1 | tee "$DIR/pytest.log" || true
    if [ -f "$DIR/pytest.xml" ]; then junit=(--junit "$DIR/pytest.xml"); fi
fi

"$PY" benchmarks/gpu_check.py --work-dir "$DIR" --output "$DIR/gpu_check.json" ${junit[@]+"${junit[@]}"} "$@"
