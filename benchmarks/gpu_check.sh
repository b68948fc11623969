#!/usr/bin/env bash
# The GPU measurements issue #3 asks for, in one go — for one call on a GPU machine that has torch
# but not Prefect (the benchmarks below never import it). Prepare once, on this side:
#     cp -r ../shared shared        # the stand-in's source and tool; git ignores shared/
# then run `bash benchmarks/gpu_check.sh` there; the log and CSVs land in $OUT (or ./gpu-check).
# Knobs for a quick smoke run elsewhere: PYTHON=.venv/bin/python DEVICE=cpu EPOCHS=1 STEPS=20
# LIMIT_TRAIN=2000 SETTINGS=fp32 DATA=<folder holding cifar-10-batches-py/>.
set -uo pipefail
export PYTHONUNBUFFERED=1
device=${DEVICE:-cuda} epochs=${EPOCHS:-8} steps=${STEPS:-1500} limit=${LIMIT_TRAIN:-0}
settings=${SETTINGS:-bf16,fp32+compile,bf16+compile}
out=${OUT:-gpu-check} data=${DATA:-/tmp/dropout-lab-standin}
mkdir -p "$out"
python=${PYTHON:-$(command -v python3 || command -v python)}
{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "no nvidia-smi"
    "$python" -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'no CUDA')"
    [ -d "$data/cifar-10-batches-py" ] || "$python" shared/tools/make_cifar10_standin.py "$data" || exit 1
    echo "== 1. trainer: tutorial loop vs ours, the pair as the flow trains it, K sweep, precision/compile"
    "$python" benchmarks/bench_train.py --data-dir "$data" --device "$device" --steps "$steps" \
        --eval-images 10000 --k-sweep 1,2,4,8 --settings "$settings" --out "$out"
    echo "== 2. the default comparison's training stage (2 models x $epochs epochs + evaluation each epoch)"
    common=(--data-dir "$data" --device "$device" --epochs "$epochs" --limit-train "$limit")
    "$python" benchmarks/time_training.py "${common[@]}" --stack auto   # cold: first CUDA/cuDNN start
    "$python" benchmarks/time_training.py "${common[@]}" --stack auto   # warm
    "$python" benchmarks/time_training.py "${common[@]}" --stack off
    if [ "$device" != cpu ]; then
        "$python" benchmarks/time_training.py "${common[@]}" --precision bf16
        "$python" benchmarks/time_training.py "${common[@]}" --precision bf16 --compile   # cold compile
        "$python" benchmarks/time_training.py "${common[@]}" --precision bf16 --compile   # warm compile cache
    fi
} 2>&1 | tee "$out/gpu-check.log"
