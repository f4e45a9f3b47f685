#!/usr/bin/env bash
# Rebuilds every models/*.tflite (+ har_accel.labels, shapes.labels, models_summary.json)
# reproducibly.
#
#   models/build.sh                 # all models
#   models/build.sh har dynamic     # only some: har, mobilenet, multi_io, dynamic, lookup, spin,
#                                   # mobilenet_dynamic, shapes (25-30 min: trains a CNN),
#                                   # edgetpu (from har_accel_int8.tflite: after har)
#
# Creates a git-ignored venv at .venv-models/ (override with VENV=...) from
# models/requirements.txt. Needs CPython 3.9-3.12 (TensorFlow 2.19); PYTHON=... to choose.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${VENV:-$root/.venv-models}"
python="${PYTHON:-$(command -v python3.11 || command -v python3)}"
"$python" -c 'import sys; sys.exit(0 if (3, 9) <= sys.version_info[:2] <= (3, 12) else 1)' || {
  echo "build.sh: $python is not CPython 3.9-3.12 (TensorFlow 2.19 wheels); set PYTHON=" >&2; exit 1; }
if [ ! -x "$venv/bin/python" ]; then
  "$python" -m venv "$venv"
fi
"$venv/bin/pip" install --quiet --disable-pip-version-check -r "$root/models/requirements.txt"
export PYTHONHASHSEED=0 TF_CPP_MIN_LOG_LEVEL=2 PYTHONDONTWRITEBYTECODE=1
exec "$venv/bin/python" "$root/models/build_models.py" "$@"
