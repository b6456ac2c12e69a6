#!/usr/bin/env bash
# The checks only a GPU can run, as one script for a short lease on a GPU machine:
#   1. tests/test_cuda.py (the CUDA path's promises),
#   2. scripts/bench_strategies.py on CUDA (every row, plus variants that explain the figures),
#   3. MAML (Omniglot 5-way 1-shot preset) with a 32-task meta-batch for ITERS meta-iterations,
#   4. the default job (`metalearn train`) end to end,
#   5. ResNet-12 pre-trained on Omniglot's background alphabets, then prototypes and FEAT on Lake's runs
#      and random 20-way tasks (scripts/bench_pretrained.py, one seed, one budget).
# Each part has its own time limit, cut to what is left of BUDGET seconds (default 500, so that one
# device call of 10 minutes holds the script and the install), and writes under $OUT (default ./gpu-out) as it goes.
# Where hydra-core/omegaconf are missing (a bare GPU image), wheels in .whl/ are installed first:
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 -d .whl hydra-core==1.3.8 omegaconf==2.3.1
#   pip wheel --no-deps -w .whl antlr4-python3-runtime==4.9.3
# Usage: bash scripts/gpu_checks.sh            (PY=python3 ITERS=1000 by default)
set -u
OUT=${OUT:-gpu-out}
PY=${PY:-python3}
ITERS=${ITERS:-1000}
DEVICE=${DEVICE:-cuda}  # DEVICE=cpu ITERS=2 for a dry run of the script itself
BUDGET=${BUDGET:-500}
END=$((SECONDS + BUDGET))
within() {  # a part's own limit, cut to the seconds left of BUDGET (at least 1)
    local left=$((END - SECONDS))
    [ "$left" -lt 1 ] && left=1
    [ "$1" -lt "$left" ] && echo "$1" || echo "$left"
}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
cd "$(dirname "$0")/.."

if ! "$PY" -c "import hydra, omegaconf" 2>/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
"$PY" -c "import metalearn_cli.configs" 2>/dev/null \
    || "$PY" -m pip install -q --no-deps --no-build-isolation --no-index -e . >"$OUT/install.txt" 2>&1 \
    || { echo "cannot install the project"; cat "$OUT/install.txt"; exit 1; }

{
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv
    "$PY" -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(), 'bf16', torch.cuda.is_bf16_supported())"
    nproc
} 2>&1 | tee "$OUT/env.txt"

echo "== tests/test_cuda.py"
# -o addopts=: in one process, without the -n auto of pyproject.toml (pytest-xdist is not in a bare GPU image)
timeout "$(within 150)" "$PY" -m pytest -q -rs -o addopts= -p no:cacheprovider tests/test_cuda.py 2>&1 | tee "$OUT/tests.txt"

echo "== bench_strategies --device cuda"
timeout "$(within 200)" "$PY" scripts/bench_strategies.py --device "$DEVICE" --iterations 5 \
    --variants vmap+sync,vmap+nhwc,vmap+noautotune,vmap+nhwc+noautotune,vmap+bf16 ${BENCH_ARGS:-} 2>&1 | tee "$OUT/bench.txt"

run_job() {  # name, timeout, overrides...: a training run on cuda; its log and results.json to $OUT/<name>.txt
    local name=$1 limit=$2
    shift 2
    local dir=/tmp/gpu-runs/$name
    rm -rf "$dir"
    echo "== metalearn train $*"
    timeout --signal=INT "$(within "$limit")" "$PY" -m metalearn_cli train "device=$DEVICE" trainer.progress=false "hydra.run.dir=$dir" "$@" \
        >"$OUT/$name.txt" 2>&1
    echo "exit $?" >>"$OUT/$name.txt"
    for f in results.json status.json; do [ -f "$dir/$f" ] && { echo "-- $f"; cat "$dir/$f"; } >>"$OUT/$name.txt"; done
    grep '"split": "train"' "$dir/metrics.jsonl" 2>/dev/null | tail -2 >>"$OUT/$name.txt"
    tail -25 "$OUT/$name.txt"
}

run_job maml 120 experiment=maml_omniglot_5w1s "trainer.iterations=$ITERS" trainer.val_every=500 \
    trainer.checkpoint_every=500
run_job default 100

echo "== bench_pretrained --encoder resnet12 (Lake's runs and random 20-way, seed 0)"
timeout --signal=INT "$(within 240)" "$PY" scripts/bench_pretrained.py --encoder resnet12 --seeds 0 --rows 0,1 \
    --pretrain-epochs "${PRETRAIN_EPOCHS:-10}" --budgets "${ROW_ITERS:-300}" --device "$DEVICE" \
    --out /tmp/gpu-runs/bench_pretrained 2>&1 | tee "$OUT/bench_pretrained.txt"
echo "== done in $SECONDS s"
