#!/usr/bin/env bash
# Every GPU check in one unattended script for a lent GPU machine (the device tool; about 8
# minutes, nothing from the network): the engine's tests with CUDA visible (runs with
# `device: auto` train on the GPU; GPU-only tests run instead of being skipped), both standalone
# examples through `distill-studio train` on CUDA (digits, then the causal-LM demo), then the
# peers benchmark (benchmarks/gpu.sh) in fp32 and bf16. Everything it writes lies under $OUT:
# engine.txt (pytest's report), train_digits/, train_lm/ (each run's evaluation.json and log),
# peers.md and log.txt.
#
# Before the run, here, in the repository root (the GPU machine lacks pydantic and
# pydantic-settings, which core.config and core.settings need):
#
#   echo /.whl/ >> "$(git rev-parse --git-path info/exclude)"
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
#     pydantic==2.14.4 pydantic_core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 \
#     pydantic-settings==2.16.3 python-dotenv==1.2.4
#   # and for the detection tests (the GPU image lacks it): faster-coco-eval==1.8.0 the same way
#   .venv/bin/python -m worker.engine.pipeline .whl/demo
#   .venv/bin/python -c "from worker.engine.tasks.text.lm_demo import make_lm_demo; make_lm_demo('.whl/demo')"
#
# then: device run, carry [".whl"], command `bash benchmarks/gpu_checks.sh`, timeout_s 570.
# `ONLY_LM_CACHE=1 TESTS="tests/unit/engine/test_lm_topk_cache.py ..."` runs the named tests and
# the causal-LM cache example twice (record, then replay without the teacher), nothing else.
# (run on an H200 on 2026-12-04 in 316 s: docs/benchmarks.md, "On an H200").
# Each part has its own time limit (ENGINE_S, TRAIN_S, LIMITS for gpu.sh), so a slow part costs
# itself, not the report.
set -u -o pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu-checks}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1

if ls .whl/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD
nvidia-smi -L 2>&1 | tee "$OUT/gpu.txt"
"$PY" -c "import torch, transformers, sys; print('python', sys.version.split()[0], 'torch', \
torch.__version__, 'transformers', transformers.__version__, 'cuda', torch.cuda.is_available())" \
    2>&1 | tee -a "$OUT/gpu.txt"

# 1. the engine's tests, CUDA visible (verbose, so a run cut short still says what passed;
# TESTS narrows them)
echo "== engine tests" | tee -a "$OUT/gpu.txt"
PARALLEL=()
if "$PY" -c "import xdist" 2>/dev/null; then  # pytest-xdist, on the GPU machine's image
    PARALLEL=(-n "${WORKERS:-12}")
fi
timeout "${ENGINE_S:-200}" "$PY" -m pytest ${TESTS:-tests/unit/engine} -q -rfE -o addopts="" \
    -p no:cacheprovider --timeout 150 "${PARALLEL[@]}" >"$OUT/engine.txt" 2>&1
echo "engine tests: exit $?" | tee -a "$OUT/gpu.txt"
tail -n 40 "$OUT/engine.txt"

# 2. the two examples through `distill-studio train`, device auto (CUDA here)
train() {  # name, config, then train's extra arguments
    local name=$1 config=$2
    shift 2
    mkdir -p "$OUT/train_$name"
    echo "== train $name" | tee -a "$OUT/gpu.txt"
    local start=$SECONDS
    timeout "${TRAIN_S:-80}" "$PY" -m cli.main train "$config" --out "/tmp/train_$name" "$@" \
        >"$OUT/train_$name/log.txt" 2>&1
    echo "train $name: exit $? in $((SECONDS - start)) s" | tee -a "$OUT/gpu.txt"
    cp /tmp/train_"$name"/evaluation.json "$OUT/train_$name/" 2>/dev/null
    tail -n 5 "$OUT/train_$name/log.txt"
}
[ "${ONLY_LM_CACHE:-0}" = 1 ] || train digits examples/digits_run.yaml \
    --teacher .whl/demo/digits_teacher.pt2 --dataset .whl/demo/digits.npz
[ "${ONLY_LM_CACHE:-0}" = 1 ] || train lm examples/lm_run.yaml --teacher .whl/demo/lm_teacher.zip \
    --dataset .whl/demo/lm_corpus.txt

# 2b. the causal-LM cache example twice into one folder: the second run replays the teacher on
# the GPU without loading it (its teacher_cache says teacher_loaded "no")
if [ "${LM_CACHE:-1}" = 1 ]; then
    for round in record replay; do
        train lm_cache examples/lm_cache_run.yaml --teacher .whl/demo/lm_teacher.zip \
            --dataset .whl/demo/lm_corpus.txt
        cp "$OUT/train_lm_cache/log.txt" "$OUT/train_lm_cache/log_$round.txt"
        cp "$OUT/train_lm_cache/evaluation.json" "$OUT/train_lm_cache/evaluation_$round.json"
    done
fi
[ "${ONLY_LM_CACHE:-0}" = 1 ] && exit 0

# 3. the peers benchmark: fp32 and bf16 (compile left out unless LIMITS names it)
OUT=$OUT LIMITS=${LIMITS:-"90 90 0"} STEPS=${STEPS:-30} PYTHON=$PY bash benchmarks/gpu.sh \
    >/dev/null 2>&1
echo "peers: exit $?" | tee -a "$OUT/gpu.txt"
cat "$OUT/peers.md"
