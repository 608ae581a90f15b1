#!/usr/bin/env bash
# Create .venv and install pri3d with everything it needs; a no-op when nothing changed.
# torch/torchvision are installed first on their own so that pip takes the wheels this machine
# provides (override with PRI3D_TORCH_SPEC, e.g. "torch torchvision" to take PyPI's latest).
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-}
if [ -z "$python" ]; then
  for candidate in python3.11 python3.12 python3.10 python3; do
    if command -v "$candidate" >/dev/null 2>&1; then python=$candidate; break; fi
  done
fi
[ -n "$python" ] || { echo "setup_env: no python3 found" >&2; exit 1; }

if [ ! -x .venv/bin/python ]; then
  echo "setup_env: creating .venv with $python"
  "$python" -m venv .venv
fi

stamp=.venv/.pri3d-installed
want=$(cat pyproject.toml scripts/setup_env.sh | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi

echo "setup_env: installing dependencies (first run takes a few minutes)"
.venv/bin/python -m pip install --quiet --upgrade pip
# shellcheck disable=SC2086
.venv/bin/python -m pip install --quiet ${PRI3D_TORCH_SPEC:-torch==2.14.1 torchvision==0.29.1}
.venv/bin/python -m pip install --quiet -e ".[sparse,dev]"
echo "$want" > "$stamp"
