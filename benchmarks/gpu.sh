#!/usr/bin/env bash
# GPU benchmark (docs/performance.md): benchmarks/gpu.py under Keras' JAX
# backend, then under TensorFlow where it is installed; one JSON line per
# measurement on stdout, also appended to $OUT (default gpu-results.jsonl).
# At most 8 minutes in all: each backend gets a budget (no measurement starts
# after it) and a hard timeout. Extra arguments go to gpu.py (e.g. --smoke).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-results.jsonl}
if python -c "import tensorflow" 2>/dev/null; then
  JAX_BUDGET=200 TF_BUDGET=150
else
  JAX_BUDGET=390 TF_BUDGET=0
fi
run() {  # backend, budget seconds
  KERAS_BACKEND=$1 timeout $(( $2 + 50 )) \
    python benchmarks/gpu.py --budget-s "$2" "${@:3}" | tee -a "$OUT"
  local rc=${PIPESTATUS[0]}
  [ "$rc" = 0 ] || echo "{\"backend\": \"$1\", \"error\": \"exit $rc\"}" | tee -a "$OUT"
}
run jax "$JAX_BUDGET" "$@"
if [ "$TF_BUDGET" -gt 0 ]; then
  run tensorflow "$TF_BUDGET" "$@"
fi
