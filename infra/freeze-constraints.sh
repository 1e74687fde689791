#!/usr/bin/env bash
# Rewrite infra/constraints.txt from a working environment (default: .venv): the exact versions
# the image installs. torch (installed first from its own index), NVIDIA wheels and this
# project are left out.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${1:-.venv/bin/python}"
{
  echo "# Exact versions of every dependency, from the environment the test suite passed in"
  echo "# (pip freeze; torch, its CUDA wheels and this project left out: the Dockerfile"
  echo "# installs torch from the CPU or CUDA index first). Regenerate with infra/freeze-constraints.sh."
  "$PY" -m pip freeze --exclude-editable | grep -viE '^(torch|triton|nvidia-|maskunet)' | grep -v '@ file'
} > infra/constraints.txt
