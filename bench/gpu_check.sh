#!/usr/bin/env bash
# The GPU figures of BENCHMARKS.md in one command, on a machine that has only torch: rcnas's few small
# dependencies (numpy, pydantic, pyyaml) are installed from ./wheels into a private folder (fetch them where there is
# a network: pip download --only-binary=:all: -d wheels numpy pydantic pyyaml), then bench/gpu_step_check.py and
# bench/gpu_throughput.py run.
#   bash bench/gpu_check.sh [gpu_throughput.py flags]      # results also in $OUT/gpu_throughput.json
set -euo pipefail
OUT=${OUT:-.}
DEPS=$(mktemp -d)
python -V
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
missing=$(python - <<'PY'
import importlib.util
print(" ".join(n for n, m in (("numpy", "numpy"), ("pydantic", "pydantic"), ("pyyaml", "yaml"))
               if importlib.util.find_spec(m) is None))
PY
)
if [ -n "$missing" ]; then
  python -m pip install --quiet --no-index --find-links wheels --target "$DEPS" $missing
fi
# first the device-side step's correctness (every draw on the GPU, checkpoint and resume), then its speed
PYTHONPATH=".:$DEPS" python bench/gpu_step_check.py
PYTHONPATH=".:$DEPS" python bench/gpu_throughput.py --out "$OUT/gpu_throughput.json" "$@"
