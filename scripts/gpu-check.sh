#!/usr/bin/env bash
# Proves the CUDA build on a machine with an NVIDIA GPU (CUDA 13 driver) in a
# few minutes, compiling nothing: it runs the prebuilt binary of a bundle that
# `make gpu-bundle` made on a CPU machine.
#
#   OUT=DIR scripts/gpu-check.sh [BUNDLE]      (default BUNDLE: gpu-bundle)
#
# BUNDLE holds hfms.xz (the `--features cuda` release binary) and
# models.tar.xz (real models small enough to travel, each served as `--model
# ID=PATH`); the committed tiny fixtures come from the repository. What it checks, with
# scripts/gpu_check.py: `hfms hardware --json` sees the GPU through NVML; the
# same models served with CUDA forbidden (the CPU reference) and then placed
# freely, where every model must land on cuda:0, give the same greedy tokens
# (a near-tie aside) and embeddings with cosine >= 0.999; `hfms bench` at
# c=1/8/32 on both. Results go to $OUT (summary.txt first).
#
# Libraries: libcuda.so.1 comes from the driver (found by the loader, or in
# /usr/local/nvidia/lib64). cuBLAS, cuRAND and the CUDA 13 runtime are taken
# from, in order: $HFMS_CUDA_LIBS (colon-separated), python3's `nvidia` wheels
# (PyTorch brings them), /usr/local/cuda. Only on a machine with no NVIDIA
# driver at all does the bundle's stub stand in for libcuda.so.1, so that the
# CPU part still runs; the check then stops where a GPU is needed (exit 2; 0
# with GPU_CHECK_NO_GPU_OK=1).
set -euo pipefail
cd "$(dirname "$0")/.."

bundle=${1:-gpu-bundle}
[ -d "$bundle" ] || { echo "gpu-check: no bundle at $bundle: run make gpu-bundle on a CPU machine" >&2; exit 1; }
bundle=$(cd "$bundle" && pwd)
out=${OUT:?set OUT to the folder for the results}
mkdir -p "$out"
exec > >(tee "$out/gpu-check.log") 2>&1
echo "gpu-check: $(date -u +%FT%TZ) on $(hostname), bundle $bundle"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv || echo "gpu-check: no nvidia-smi"

[ -f "$bundle/hfms.xz" ] || { echo "gpu-check: $bundle/hfms.xz is missing: run make gpu-bundle on a CPU machine" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
bin=$work/hfms
python3 - "$bundle" "$work" <<'PY'
import lzma, os, shutil, sys, tarfile
bundle, work = sys.argv[1:]
with lzma.open(os.path.join(bundle, "hfms.xz")) as src, open(os.path.join(work, "hfms"), "wb") as dst:
    shutil.copyfileobj(src, dst)
os.chmod(os.path.join(work, "hfms"), 0o755)
packed = os.path.join(bundle, "models.tar.xz")
if os.path.exists(packed):
    with tarfile.open(packed) as t:
        t.extractall(work, filter="data")
PY

libs=()
if [ -n "${HFMS_CUDA_LIBS:-}" ]; then IFS=: read -ra libs <<<"$HFMS_CUDA_LIBS"; fi
if command -v python3 >/dev/null; then
    while IFS= read -r d; do libs+=("$d"); done < <(python3 - <<'PY' 2>/dev/null || true
import glob, os
try:
    import nvidia
except ImportError:
    raise SystemExit
for root in nvidia.__path__:
    for d in sorted(glob.glob(os.path.join(root, "*", "lib"))):
        print(d)
PY
)
fi
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib /usr/local/nvidia/lib64 /usr/local/nvidia/lib; do
    [ -d "$d" ] && libs+=("$d")
done
path=$(IFS=:; echo "${libs[*]}")
export LD_LIBRARY_PATH=${path}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
missing=$(ldd "$bin" | awk '/not found/ {print $1}')
driver=no
{ [ -e /proc/driver/nvidia ] || nvidia-smi -L >/dev/null 2>&1; } && driver=yes
if [ "$missing" = libcuda.so.1 ] && [ $driver = no ] && [ -f "$bundle/stubs/libcuda.so.1" ]; then
    echo "gpu-check: no NVIDIA driver on this machine; the stub stands in for libcuda.so.1 (no GPU work can run)"
    export LD_LIBRARY_PATH=$LD_LIBRARY_PATH:$bundle/stubs
    missing=$(ldd "$bin" | awk '/not found/ {print $1}')
fi
ldd "$bin" | grep -E 'cuda|cublas|curand|nvrtc' || true
if [ -n "$missing" ]; then
    echo "gpu-check: libraries not found: $missing (set HFMS_CUDA_LIBS to the folders that hold them)" >&2
    exit 1
fi

models=()
for m in "$work"/models/*/ "$work"/models/*.gguf; do
    [ -e "$m" ] || continue
    id=$(basename "${m%/}" .gguf)
    models+=(--model "$id=${m%/}")
done
flags=()
[ "${GPU_CHECK_NO_GPU_OK:-0}" = 1 ] && flags+=(--no-gpu-ok)
python3 scripts/gpu_check.py --bin "$bin" --out "$out" "${models[@]}" "${flags[@]}" \
    --bench-seconds "${GPU_CHECK_BENCH_SECONDS:-10}"
