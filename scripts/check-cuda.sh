#!/usr/bin/env bash
# make check-cuda: builds `cargo build --release -p hfms --features cuda` with
# the CUDA toolkit from NVIDIA's wheels (scripts/cuda-toolkit.sh) on a machine
# that may have no GPU, then bundles the binary (scripts/gpu-bundle.sh) and
# runs scripts/gpu-check.sh with it as far as this machine allows: the
# libraries resolve, `hfms hardware` reports the CUDA backend compiled in, and
# the CPU reference of the check serves every fixture. Any failure fails loudly.
set -euo pipefail
cd "$(dirname "$0")/.."
# (A failing command inside `eval "$(…)"` would not stop the script.)
toolkit=$(scripts/cuda-toolkit.sh)
eval "$toolkit"
export CARGO_TARGET_DIR=${HFMS_CUDA_TARGET_DIR:-target/cuda}
start=$(date +%s)
echo "check-cuda: cargo build --release -p hfms --features cuda (CUDA $(nvcc --version | sed -n 's/.*release \([0-9.]*\).*/\1/p'), compute capability $CUDA_COMPUTE_CAP)"
cargo build --release --locked -p hfms --features cuda
echo "check-cuda: built in $(( $(date +%s) - start )) s: $CARGO_TARGET_DIR/release/hfms"
# The code only this build compiles gets the lints `make lint` gives the rest.
cargo clippy --release --locked -p hfms -p hfms-backend-candle --features hfms/cuda --all-targets -- -D warnings
scripts/gpu-bundle.sh "$CARGO_TARGET_DIR/release/hfms" gpu-bundle
HFMS_CUDA_LIBS=$CUDA_HOME/lib GPU_CHECK_NO_GPU_OK=1 GPU_CHECK_BENCH_SECONDS=${GPU_CHECK_BENCH_SECONDS:-2} \
    OUT=$CARGO_TARGET_DIR/gpu-check scripts/gpu-check.sh gpu-bundle
echo "check-cuda: done in $(( $(date +%s) - start )) s"
