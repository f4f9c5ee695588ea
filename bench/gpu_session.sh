#!/usr/bin/env bash
# The checks of a session lent an NVIDIA GPU, as one command (device time is short):
# bench/gpu_check.py first (correctness at real sizes and times against cuDNN; its
# results file is rewritten row by row), then the CUDA tests on the card (no
# simulator). Runs from the repository root without installing fastlstm (the C
# extension is not needed: the reference backend checks the GPU).
#
#     bash bench/gpu_session.sh OUTDIR [gpu_check options...]
set -uo pipefail
out=${1:?usage: bash bench/gpu_session.sh OUTDIR [gpu_check options...]}
shift
mkdir -p "$out"
unset NUMBA_ENABLE_CUDASIM
export PYTHONUNBUFFERED=1 FASTLSTM_PUREPYTHON=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
py=${PYTHON:-python3}

{ nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
  "$py" -m pip list 2>/dev/null | grep -i -E "^(numba|numpy|torch|cuda|nvidia-cuda-nvcc)" ; } > "$out/machine.txt" 2>&1

echo "== gpu_check =="
timeout 240 "$py" bench/gpu_check.py --out "$out/GPU_RESULTS.md" "$@" > "$out/gpu_check.log" 2>&1
echo "gpu_check exit $?"
tail -5 "$out/gpu_check.log"

echo "== CUDA tests on the card =="
FASTLSTM_REQUIRE_CUDA=1 timeout 150 "$py" -m pytest -q -p no:cacheprovider -x \
    tests/test_cuda.py tests/test_cuda_launch.py tests/test_cuda_setup.py tests/test_gpu_check.py \
    > "$out/pytest_cuda.log" 2>&1
echo "pytest cuda exit $?"
tail -3 "$out/pytest_cuda.log"
FASTLSTM_REQUIRE_CUDA=1 timeout 100 "$py" -m pytest -q -p no:cacheprovider -k cuda \
    tests/test_backends.py tests/test_inputs.py tests/test_errors.py > "$out/pytest_grid.log" 2>&1
echo "pytest grid exit $?"
tail -3 "$out/pytest_grid.log"
