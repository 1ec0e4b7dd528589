#!/usr/bin/env bash
# Create .venv at the repo root and install slidemap (editable) with one TensorFlow flavour, chosen
# explicitly:
#   SLIDEMAP_TF=cpu  (default) tensorflow-cpu            pinned by constraints.txt + constraints-cpu.txt
#   SLIDEMAP_TF=gpu            tensorflow[and-cuda]      pinned by constraints.txt + constraints-gpu.txt
#                              (CUDA and cuDNN come as wheels; the machine needs only the NVIDIA driver)
# The two wheels write the same `tensorflow/` folder, so a switch removes the other one first, and the
# GPU environment is checked to hold no tensorflow-cpu. Re-running is cheap: it reinstalls only when
# pyproject.toml, the constraints or the flavour change.
# Usage: [SLIDEMAP_TF=cpu|gpu] scripts/setup.sh [EXTRAS]   e.g. SLIDEMAP_TF=gpu scripts/setup.sh test
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
EXTRAS="${1:-}"
FLAVOUR="${SLIDEMAP_TF:-cpu}"
PYTHON="${PYTHON:-python3}"
case "$FLAVOUR" in
    cpu | gpu) ;;
    *) echo "SLIDEMAP_TF=$FLAVOUR: choose cpu or gpu" >&2; exit 2 ;;
esac
if ! "$PYTHON" -c 'import sys; sys.exit(0 if (3, 11) <= sys.version_info[:2] < (3, 14) else 1)'; then
    echo "slidemap needs Python 3.11-3.13; set PYTHON=/path/to/python3.11" >&2
    exit 2
fi
if [ ! -x .venv/bin/python ]; then
    echo "==> creating .venv"
    "$PYTHON" -m venv .venv
fi
pip_quiet() {  # pip's and the build backend's chatter goes to a log, shown only when pip fails
    if ! .venv/bin/python -m pip "$@" > .venv/pip.log 2>&1; then
        grep -v "WARNING: Location" .venv/pip.log | tail -40 >&2
        echo "pip $1 failed; the whole log: .venv/pip.log" >&2
        return 1
    fi
}
installed() { .venv/bin/python -m pip show -q "$1" >/dev/null 2>&1; }

SPEC=".[${FLAVOUR}${EXTRAS:+,$EXTRAS}]"
STAMP=".venv/.slidemap-installed-${EXTRAS:-base}"
WANT="$FLAVOUR-$(cat pyproject.toml constraints.txt "constraints-$FLAVOUR.txt" | sha256sum | cut -c1-16)"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
    # The other flavour's wheel would share (and on uninstall, break) the `tensorflow/` folder.
    other="tensorflow-cpu"
    [ "$FLAVOUR" = cpu ] && [ "$(uname -m)" = x86_64 ] && other="tensorflow"
    if installed "$other"; then
        echo "==> removing $other (switching to the $FLAVOUR flavour)"
        pip_quiet uninstall --quiet -y tensorflow tensorflow-cpu
        rm -f .venv/.slidemap-installed-*
    fi
    echo "==> installing slidemap$SPEC into .venv (TensorFlow: $FLAVOUR; pinned by constraints.txt, constraints-$FLAVOUR.txt)"
    pip_quiet install --quiet --upgrade pip
    pip_quiet install --quiet -c constraints.txt -c "constraints-$FLAVOUR.txt" -e "$SPEC"
    if [ "$FLAVOUR" = gpu ] && installed tensorflow-cpu; then
        echo "tensorflow-cpu is installed in the GPU environment (it overwrites the GPU build); remove .venv and re-run" >&2
        exit 1
    fi
    echo "$WANT" > "$STAMP"
else
    echo "==> .venv up to date (TensorFlow: $FLAVOUR)"
fi
if [ "$FLAVOUR" = gpu ]; then
    # Say which device TensorFlow really uses: a CUDA build without a driver runs on the CPU.
    .venv/bin/python -c 'from slidemap.compute.models.runtime import device_summary as d; s = d()
print("==> TensorFlow", s["tensorflow"], "runs on", s["device"], ", ".join(s["gpu_names"]))
for w in s["warnings"]: print("    warning:", w)'
elif [ -z "${SLIDEMAP_TF:-}" ] && command -v nvidia-smi >/dev/null 2>&1; then
    echo "==> an NVIDIA GPU is present; this install is CPU-only. For the GPU build: SLIDEMAP_TF=gpu bash scripts/setup.sh ${EXTRAS}"
fi
