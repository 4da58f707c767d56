#!/usr/bin/env bash
# A CUDA toolkit from NVIDIA's PyPI wheels, laid out the way candle's kernel
# build (cudaforge) and cudarc's build script look for one, so that
# `--features cuda` builds on a machine with no system toolkit and no GPU.
#
#   scripts/cuda-toolkit.sh [DIR]     (default: target/cuda-toolkit, from the repository root)
#
# Idempotent, and leaves a complete toolkit alone (a build may be using it). Prints the environment to build with; `eval` it:
#   eval "$(scripts/cuda-toolkit.sh)" && cargo build --release -p hfms --features cuda
#
# Why CUDA 13.0 from the `nvidia-*` (cu13) wheels: the `-cu12` nvcc wheels on
# PyPI carry only ptxas (checked: 12.4, 12.6, 12.8, 12.9), while the cu13 ones
# carry nvcc, cicc and the headers. 13.0 is the newest toolkit a 580 driver
# (CUDA 13.0, the GPU machines this project is tried on) accepts PTX from:
# candle's kernels are PTX, compiled by the driver when loaded, and a driver
# refuses PTX of a newer ISA than its own.
#
# DIR/home is CUDA_HOME: bin/, include/ and nvvm/ of the wheels, lib/ with the
# unversioned names the linker wants (libcublas.so → libcublas.so.13, …) and
# lib/stubs/libcuda.so. The driver library is not on PyPI; candle links
# cudarc with `dynamic-linking`, so the link needs one: the stub defines every
# driver entry point cudarc binds (read from the cudarc source in Cargo.lock)
# and returns CUDA_ERROR_STUB_LIBRARY (34), as the toolkit's own stub does. At
# run time the real libcuda.so.1 of the driver is used; the stub only lets a
# CUDA build start on a machine without one (`LD_LIBRARY_PATH=DIR/home/lib/stubs`).
set -euo pipefail
cd "$(dirname "$0")/.."

dir=${1:-target/cuda-toolkit}
wheels=(
    nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-crt==13.0.88
    nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85 nvidia-cuda-nvrtc==13.0.88
    nvidia-cublas==13.0.2.14 nvidia-curand==10.4.5.25
)
python=${PYTHON:-python3}

mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
venv=$dir/venv
stamp=$venv/.installed
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "${wheels[*]}" ]; then
    echo "cuda-toolkit: installing ${wheels[*]} into $venv" >&2
    rm -rf "$venv"
    "$python" -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "${wheels[@]}" >&2
    echo "${wheels[*]}" >"$stamp"
fi
cu=$("$venv/bin/python" -c 'import nvidia, os; print(os.path.join(nvidia.__path__[0], "cu13"))')
[ -x "$cu/bin/nvcc" ] || { echo "cuda-toolkit: no nvcc in $cu/bin" >&2; exit 1; }

# The driver stub, from the entry points of the cudarc this workspace locks.
if ! meta=$(cargo metadata --format-version 1 --locked --features hfms/cuda); then
    echo "cuda-toolkit: cargo metadata failed" >&2
    exit 1
fi
cudarc=$("$python" -c '
import json, os, sys
for p in json.loads(sys.stdin.read())["packages"]:
    if p["name"] == "cudarc":
        print(os.path.dirname(p["manifest_path"]))
        break
' <<<"$meta")
[ -n "$cudarc" ] || { echo "cuda-toolkit: cudarc is not in Cargo.lock" >&2; exit 1; }

home=$dir/home
made="${wheels[*]} $cudarc"
if [ ! -f "$home/.made" ] || [ "$(cat "$home/.made")" != "$made" ]; then
    rm -rf "$home"
    mkdir -p "$home/lib/stubs"
    for d in bin include nvvm; do ln -s "$cu/$d" "$home/$d"; done
    ln -s lib "$home/lib64"
    for f in "$cu"/lib/*.so.*; do
        name=$(basename "$f")
        ln -s "$f" "$home/lib/$name"
        [ -e "$home/lib/${name%%.so.*}.so" ] || ln -s "$f" "$home/lib/${name%%.so.*}.so"
    done
    grep -ohE 'pub unsafe fn cu[A-Za-z0-9_]+\(' "$cudarc/src/driver/sys/mod.rs" |
        sed -E 's/pub unsafe fn (cu[A-Za-z0-9_]+)\(/int \1(void) { return 34; }/' |
        sort -u >"$dir/libcuda-stub.c"
    [ -s "$dir/libcuda-stub.c" ] || { echo "cuda-toolkit: no driver entry points found in $cudarc" >&2; exit 1; }
    ${CC:-cc} -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$home/lib/stubs/libcuda.so" "$dir/libcuda-stub.c"
    ln -s libcuda.so "$home/lib/stubs/libcuda.so.1"
    echo "$made" >"$home/.made"
fi

# cudarc asks the nvcc on the PATH for the toolkit's version.
echo "export CUDA_HOME='$home' NVCC='$home/bin/nvcc' CUDA_COMPUTE_CAP='${CUDA_COMPUTE_CAP:-90}' PATH='$home/bin':\"\$PATH\""
