#!/usr/bin/env bash
# CI stage: candle's CUDA build of moshid (no GPU needed) for Jetson Orin (sm_87), proving every
# CUDA code path compiles. sm_90 (H100) and the others: cross/cuda-build.sh 87 90 by hand.
set -euo pipefail
cd "$(dirname "$0")/.."
exec ./cross/cuda-build.sh ${MOSHID_CUDA_CAPS:-87}
