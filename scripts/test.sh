#!/usr/bin/env bash
# The whole test suite: installs what it needs into .venv (TensorFlow flavour: SLIDEMAP_TF, default
# cpu), then runs pytest. Extra arguments go to pytest (e.g. scripts/test.sh -k server).
# Tests marked `gpu` run only where TensorFlow sees a GPU (SLIDEMAP_TF=gpu bash scripts/test.sh -m gpu).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh test
export TF_CPP_MIN_LOG_LEVEL=2 PYTHONHASHSEED=0
exec .venv/bin/python -m pytest "$@"
