#!/usr/bin/env bash
# Create .venv at the repo root and install slidemap (editable) with the pinned set in
# constraints.txt. Re-running is cheap: it reinstalls only when pyproject.toml or the
# constraints change. Usage: scripts/setup.sh [EXTRAS]   e.g. scripts/setup.sh test
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
EXTRAS="${1:-}"
PYTHON="${PYTHON:-python3}"
if ! "$PYTHON" -c 'import sys; sys.exit(0 if (3, 11) <= sys.version_info[:2] < (3, 14) else 1)'; then
    echo "slidemap needs Python 3.11-3.13; set PYTHON=/path/to/python3.11" >&2
    exit 2
fi
if [ ! -x .venv/bin/python ]; then
    echo "==> creating .venv"
    "$PYTHON" -m venv .venv
fi
SPEC="."
[ -n "$EXTRAS" ] && SPEC=".[${EXTRAS}]"
STAMP=".venv/.slidemap-installed-${EXTRAS:-base}"
WANT="$(cat pyproject.toml constraints.txt 2>/dev/null | sha256sum | cut -c1-16)"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
    echo "==> installing slidemap${EXTRAS:+[$EXTRAS]} into .venv (pinned by constraints.txt)"
    # (pip's notes about this machine's optional local indexes are filtered out)
    .venv/bin/python -m pip install --quiet --upgrade pip 2>&1 | { grep -v "WARNING: Location" || true; }
    .venv/bin/python -m pip install --quiet -c constraints.txt -e "$SPEC" 2>&1 | { grep -v "WARNING: Location" || true; }
    echo "$WANT" > "$STAMP"
else
    echo "==> .venv up to date"
fi
