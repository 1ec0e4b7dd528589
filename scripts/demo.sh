#!/usr/bin/env bash
# The main job on the embedded SYNTHETIC demo region, from a fresh clone:
# install into .venv, generate and prepare the region, train the demo models, map, then leave
# the tile server and the dashboard running and print their URLs.
# Environment: DEMO_DIR (default ./demo/region), SIZE_KM (20), SEED (0), PORT (8000),
# DASHBOARD_PORT (8501), RETRAIN=1 to train again when models exist.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
DEMO_DIR="${DEMO_DIR:-$ROOT/demo/region}"
SIZE_KM="${SIZE_KM:-20}"
SEED="${SEED:-0}"
PORT="${PORT:-8000}"
DASHBOARD_PORT="${DASHBOARD_PORT:-8501}"
LOG_DIR="$(dirname "$DEMO_DIR")"
START=$(date +%s)
step() { echo; echo "==> [$(( $(date +%s) - START ))s] $*"; }

step "1/8 install"
bash scripts/setup.sh
SM=.venv/bin/slidemap
export TF_CPP_MIN_LOG_LEVEL=2

if [ ! -f "$DEMO_DIR/region.toml" ]; then
    step "2/8 generate the SYNTHETIC demo region (${SIZE_KM} km, seed ${SEED})"
    "$SM" demo-region "$DEMO_DIR" --size-km "$SIZE_KM" --seed "$SEED"
else
    step "2/8 demo region exists: $DEMO_DIR"
fi

step "3/8 prepare the analysis stack"
"$SM" prepare "$DEMO_DIR"

# one status call for both checks (each call starts TensorFlow for its device line: ~5 s on 2 cores)
MODEL_KINDS="$("$SM" status "$DEMO_DIR" --json | .venv/bin/python -c "import json,sys; print(' '.join(sorted({m['kind'] for m in json.load(sys.stdin)['models']})))")" || MODEL_KINDS=""  # unknown: train
have_models() { [[ " $MODEL_KINDS " == *" $1 "* ]]; }

if [ "${RETRAIN:-0}" = 1 ] || ! have_models unet; then
    step "4/8 train the U-Net detector (--preset demo)"
    "$SM" train unet "$DEMO_DIR" --preset demo
else
    step "4/8 U-Net detector already trained (RETRAIN=1 to train again)"
fi
if [ "${RETRAIN:-0}" = 1 ] || ! have_models lsm; then
    step "5/8 train the susceptibility models (--preset demo)"
    "$SM" train lsm "$DEMO_DIR" --preset demo
else
    step "5/8 susceptibility models already trained (RETRAIN=1 to train again)"
fi

step "6/8 inventory mapping and the susceptibility map"
"$SM" inventory "$DEMO_DIR"
# --mode dense: a quick whole-region look (a window 3D-CNN through its fast form, whose agreement
# is printed); the server's tiles follow the model card's rule (fast form only where r >= 0.97)
"$SM" map susceptibility "$DEMO_DIR" --mode dense

step "7/8 start the tile server on 127.0.0.1:${PORT}"
for f in "$LOG_DIR/serve.pid" "$LOG_DIR/dashboard.pid"; do
    if [ -f "$f" ] && kill -0 "$(cat "$f")" 2>/dev/null; then kill "$(cat "$f")" 2>/dev/null || true; sleep 1; fi
done
# CORS stays off: the dashboard's map is the server's own page (same origin for tiles and /point)
nohup "$SM" serve "$DEMO_DIR" --host "${BIND_HOST:-127.0.0.1}" --port "$PORT" \
    > "$LOG_DIR/serve.log" 2>&1 &
echo $! > "$LOG_DIR/serve.pid"
for _ in $(seq 1 120); do
    if .venv/bin/python -c "import httpx,sys; sys.exit(0 if httpx.get('http://127.0.0.1:${PORT}/health', timeout=1).status_code == 200 else 1)" 2>/dev/null; then break; fi
    sleep 1
done

step "8/8 start the dashboard on 127.0.0.1:${DASHBOARD_PORT}"
nohup "$SM" dashboard "$DEMO_DIR" --server "http://127.0.0.1:${PORT}" --host "${BIND_HOST:-127.0.0.1}" --port "$DASHBOARD_PORT" > "$LOG_DIR/dashboard.log" 2>&1 &
echo $! > "$LOG_DIR/dashboard.pid"
sleep 3

echo
echo "Done in $(( $(date +%s) - START )) s. SYNTHETIC demo region: $DEMO_DIR"
echo "  tile server  http://127.0.0.1:${PORT}/          (map page; API docs at /docs, layers at /layers)"
echo "  dashboard    http://127.0.0.1:${DASHBOARD_PORT}/"
echo "  status       $SM status $DEMO_DIR"
echo "  logs         $LOG_DIR/serve.log, $LOG_DIR/dashboard.log; stop with: kill \$(cat $LOG_DIR/serve.pid $LOG_DIR/dashboard.pid)"
