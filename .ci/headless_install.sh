#!/usr/bin/env bash
# A headless install, for real: `pip install .` into a fresh virtual environment without the
# course extra, then checks that ipywidgets, ipyevents and IPython are not there and that a tiny
# `rlhf-lite pipeline` runs. It takes minutes (installing torch alone), so it is not part of
# `pytest tests`: tests/test_headless.py checks the same in a few seconds by blocking those
# packages in a fresh interpreter.
#
# Usage: .ci/headless_install.sh [TORCH]      TORCH: the torch to install (default torch==2.13.0)
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
start=$SECONDS

python3 -m venv "$work/venv"
"$work/venv/bin/pip" install --quiet "${1:-torch==2.13.0}"
"$work/venv/bin/pip" install --quiet "$repo"
echo "installed in $((SECONDS - start)) s"

for module in ipywidgets ipyevents IPython; do
  if "$work/venv/bin/python" -c "import $module" 2>/dev/null; then
    echo "FAIL: a plain install pulled in $module (it belongs to the course extra)"; exit 1
  fi
done

cd "$work"
OMP_NUM_THREADS=1 "$work/venv/bin/rlhf-lite" pipeline --out "$work/out" --pretrain-steps 30 \
  --pairs 40 --ppo-steps 1 --threads 1 > "$work/metrics.json"
"$work/venv/bin/python" - "$work/out/metrics.json" <<'PY'
import json, sys
metrics = json.load(open(sys.argv[1]))
assert metrics["ppo"]["episodes"] == 64, metrics
print("headless install OK: the pipeline ran without the course extra "
      f"({metrics['seconds']:.0f} s)")
PY
echo "total $((SECONDS - start)) s"
