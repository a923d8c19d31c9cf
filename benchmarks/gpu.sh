#!/usr/bin/env bash
# The peers benchmark (benchmarks/peers.py, issue 14 item 7) on a GPU machine, unattended, in
# under 10 minutes, installing nothing from the network: resnet32x4 -> resnet8x4, batch 64, the
# engine against the hand-written loop and the floor (and torchdistill's hooks when it is
# importable) in fp32, bf16 autocast, and bf16 + torch.compile; then 1 vs N GPUs where the engine
# and the machine have them. Prints one markdown table per setting and writes them, with the log,
# under $OUT (peers.md, log.txt).
#
# The GPU machine (Python 3.12, torch 2.11 CUDA, no registry) lacks pydantic, which the engine's
# run config needs. Before the run, on a machine with pip and the network, in the repository root:
#
#   echo /.whl/ >> "$(git rev-parse --git-path info/exclude)"
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
#     pydantic==2.14.4 pydantic_core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5
#   # optional, for the torchdistill row (pure Python; its other needs are preinstalled there):
#   python3 -m pip download --no-deps --only-binary=:all: -d .whl torchdistill
#
# then carry `.whl` and run `bash benchmarks/gpu.sh` from the repository root (the device tool:
# carry [".whl"], timeout_s 600). Every setting runs under its own time limit, so a hung compile
# costs its row, not the whole report.
#
# Smoke run on CPU (what tests/unit/test_benchmarks_smoke.py does): DEVICE=cpu QUICK=1 OUT=/tmp/x
# PYTHON=.venv/bin/python bash benchmarks/gpu.sh: tiny models, 2 steps, compile with the `eager`
# backend (the compile path is traced, nothing is built).
set -u -o pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/peers-gpu}
PY=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
QUICK=${QUICK:-}
mkdir -p "$OUT"
TABLE=$OUT/peers.md
LOG=$OUT/log.txt
: >"$TABLE"
: >"$LOG"

if ls .whl/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD
export PYTHONUNBUFFERED=1

if ! "$PY" -c "import pydantic, torch" 2>>"$LOG"; then
    echo "pydantic or torch is missing: carry the wheels named at the top of $0 (.whl)" | tee -a "$TABLE"
    exit 1
fi
"$PY" -c "import torch, sys; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), \
    torch.cuda.device_count(), 'GPU(s)', sys.version.split()[0])" | tee -a "$LOG"
if "$PY" -c "import torchdistill" 2>/dev/null; then
    TD=",torchdistill +fit"
else
    TD=""
    echo "torchdistill is not importable: its row is left out (see the top of $0)" | tee -a "$TABLE"
fi

if [ -n "$QUICK" ]; then
    COMMON=(--device "$DEVICE" --quick --compile-backend eager)
    LIMIT=(120 120 240)
else
    COMMON=(--device "$DEVICE" --warmup 5 --steps "${STEPS:-40}")
    LIMIT=(140 140 250)
fi
# LIMITS="fp32 amp compile" seconds overrides the three rows' limits; 0 leaves a row out
if [ -n "${LIMITS:-}" ]; then
    read -r -a LIMIT <<<"$LIMITS"
fi
ALL="floor,hand kd,engine kd,hand +fit,engine +fit,hand kd nosync$TD"

run() {  # limit, then peers.py's arguments
    local limit=$1
    shift
    if [ "$limit" = 0 ]; then
        echo "### peers.py $*: left out (LIMITS)" >>"$TABLE"
        return
    fi
    echo "== peers.py ${COMMON[*]} $*" | tee -a "$LOG"
    if ! timeout "$limit" "$PY" -m benchmarks.peers "${COMMON[@]}" "$@" --out "$TABLE" \
        --no-write 2>&1 | tee -a "$LOG"; then
        echo "### peers.py ${COMMON[*]} $*: failed or ran past ${limit} s (see log.txt)" >>"$TABLE"
    fi
}

run "${LIMIT[0]}" --variants "$ALL" --repeats 3
run "${LIMIT[1]}" --variants "$ALL" --repeats 3 --amp
# compiling costs tens of seconds per model and run: fewer variants, one repeat
run "${LIMIT[2]}" --variants "floor,hand kd,engine kd,engine +fit" --repeats 1 --amp --compile

GPUS=$("$PY" -c "import torch; print(torch.cuda.device_count())")
if "$PY" -c "from core.config import TrainSettings as T; raise SystemExit('gpus' not in T.model_fields)"; then
    echo "1 vs N GPUs: training.gpus exists but peers.py does not pass it yet ($GPUS GPU(s) here)" \
        | tee -a "$TABLE"
else
    echo "1 vs N GPUs: not available (training.gpus, issue 14 item 6, is not built yet; $GPUS GPU(s) here)" \
        | tee -a "$TABLE"
fi

echo
cat "$TABLE"
