#!/usr/bin/env bash
# What scripts/gpu-check.sh needs on a GPU machine besides the repository's
# tracked files, small enough to travel (a device run takes the working tree
# plus at most 64 MiB in all):
#
#   scripts/gpu-bundle.sh [BINARY] [DIR]   (defaults: target/cuda/release/hfms, gpu-bundle)
#
#   DIR/hfms.xz                  the `--features cuda` binary, stripped, xz'd
#                                (65 MB → 11 MB: most of it is kernels)
#   DIR/stubs/libcuda.so.1       the driver stub (scripts/cuda-toolkit.sh), used
#                                only where no driver is installed
#   DIR/models.tar.xz            models/all-MiniLM-L6-v2-f16/: MiniLM with f16
#                                weights (45 MB, 41 MB packed, instead of 90),
#                                when models/ has it and it fits the budget
# xz because it is what fits: gzip leaves the binary at 19 MB. Packed and
# unpacked with python3's lzma, so neither machine needs the xz program.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-target/cuda/release/hfms}
dir=${2:-gpu-bundle}
budget=$((64 << 20))
[ -x "$bin" ] || { echo "gpu-bundle: $bin is missing: run make check-cuda first" >&2; exit 1; }

# Only a folder this script made is replaced.
if [ -e "$dir" ] && [ ! -f "$dir/hfms.xz" ]; then
    echo "gpu-bundle: $dir exists and is not a bundle; not touching it" >&2
    exit 1
fi
rm -rf "$dir"
mkdir -p "$dir/stubs"
staging=$(mktemp -d)
trap 'rm -rf "$staging"' EXIT
strip -o "$staging/hfms" "$bin"
xz() {
    python3 -c '
import lzma, shutil, sys
with lzma.open(sys.stdout.buffer, "w", preset=int(sys.argv[1])) as out:
    shutil.copyfileobj(sys.stdin.buffer, out)' "$1"
}
xz 9 <"$staging/hfms" >"$dir/hfms.xz"
stub=target/cuda-toolkit/home/lib/stubs/libcuda.so
[ -f "$stub" ] || scripts/cuda-toolkit.sh >/dev/null
cp "$stub" "$dir/stubs/libcuda.so.1"

# What a device run takes besides the bundle: tracked and untracked,
# not-ignored files.
tracked=$(git ls-files -z --cached --others --exclude-standard | du --files0-from=- -cb 2>/dev/null | tail -1 | cut -f1)
used=$(( tracked + $(du -cb "$dir" | tail -1 | cut -f1) ))
minilm=models/sentence-transformers/all-MiniLM-L6-v2
if [ -f "$minilm/model.safetensors" ]; then
    dest=$staging/models/all-MiniLM-L6-v2-f16
    mkdir -p "$dest/1_Pooling"
    for f in config.json tokenizer.json tokenizer_config.json special_tokens_map.json vocab.txt \
             modules.json sentence_bert_config.json config_sentence_transformers.json 1_Pooling/config.json; do
        [ -f "$minilm/$f" ] && cp "$minilm/$f" "$dest/$f"
    done
    python3 - "$minilm/model.safetensors" "$dest/model.safetensors" <<'PY'
# f32 tensors to f16 (IEEE half, round to nearest even, as struct's 'e' does;
# it refuses values beyond f16's range, which MiniLM's weights are not).
import json, struct, sys
src, dst = sys.argv[1], sys.argv[2]
with open(src, "rb") as f:
    n = struct.unpack("<Q", f.read(8))[0]
    header = json.loads(f.read(n))
    base = 8 + n
    meta = header.pop("__metadata__", None)
    names = sorted(header, key=lambda k: header[k]["data_offsets"][0])
    out_header, blobs, offset = {}, [], 0
    for name in names:
        t = header[name]
        start, end = t["data_offsets"]
        f.seek(base + start)
        data = f.read(end - start)
        if t["dtype"] == "F32":
            count = len(data) // 4
            data = b"".join(
                struct.pack(f"<{min(1 << 20, count - i)}e",
                            *struct.unpack_from(f"<{min(1 << 20, count - i)}f", data, 4 * i))
                for i in range(0, count, 1 << 20))
            t = dict(t, dtype="F16")
        out_header[name] = dict(t, data_offsets=[offset, offset + len(data)])
        blobs.append(data)
        offset += len(data)
if meta is not None:
    out_header["__metadata__"] = meta
h = json.dumps(out_header, separators=(",", ":")).encode()
h += b" " * (-len(h) % 8)
with open(dst, "wb") as f:
    f.write(struct.pack("<Q", len(h)) + h)
    for b in blobs:
        f.write(b)
PY
    tar -C "$staging" -cf - models | xz 6 >"$dir/models.tar.xz"
    size=$(du -b "$dir/models.tar.xz" | cut -f1)
    if [ $(( used + size )) -gt $(( budget - (2 << 20) )) ]; then
        echo "gpu-bundle: MiniLM f16 ($size bytes packed) does not fit beside $used bytes; left out"
        rm -f "$dir/models.tar.xz"
    fi
fi
total=$(( tracked + $(du -cb "$dir" | tail -1 | cut -f1) ))
echo "gpu-bundle: $(ls "$dir" | tr '\n' ' ')in $dir; with the tracked files $((total >> 20)) MiB of the 64 MiB a device run takes"
[ "$total" -le "$budget" ] || { echo "gpu-bundle: over the 64 MiB budget" >&2; exit 1; }
