#!/usr/bin/env bash
# Memory with both test models loaded and busy: hfms serve's peak and current
# resident set against the weight files + the configured KV cache budget
# (the issue's bound: RSS <= 1.3 x that sum).
#
#   bench/memory.sh
#
# Environment (defaults): HFMS_BIN (target/release/hfms), THREADS (2),
# KV_CACHE_MB (64: small enough that the chat load below fills it, so the
# figure includes a full KV cache), HFMS_SERVE_ARGS.
# Output: bench/out/<stamp>-memory.txt (and the server's log).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

threads=${THREADS:-2}
kv_mb=${KV_CACHE_MB:-64}
gguf=$repo_root/models/HuggingFaceTB/SmolLM2-135M-Instruct/SmolLM2-135M-Instruct.Q4_1.gguf
minilm=$repo_root/models/sentence-transformers/all-MiniLM-L6-v2
for f in "$gguf" "$minilm/model.safetensors"; do
    [ -f "$f" ] || { echo "no $f: run scripts/fetch-models.sh" >&2; exit 1; }
done

start_hfms "$out_dir/$stamp-memory-serve.log" --kv-cache-mb "$kv_mb" \
    --model "HuggingFaceTB/SmolLM2-135M-Instruct=$gguf" \
    --model "sentence-transformers/all-MiniLM-L6-v2=$minilm" --preload smollm2,all-minilm

kib() { awk -v k="$1" '$1 == k":" {print $2}' "/proc/$server_pid/status"; }
loaded_rss=$(kib VmRSS)
loaded_parts="anonymous $(kib RssAnon) KiB, file-backed $(kib RssFile) KiB, peak so far $(kib VmHWM) KiB"

# Fill the KV cache (16 sequences of ~160 prompt + 256 output tokens need
# more than 64 MB of SmolLM2's f32 KV) and run embedding batches.
"$hfms" bench --base-url "http://127.0.0.1:$port/v1" --mode chat --model smollm2 \
    --concurrency 16 --requests 32 --max-tokens 256 --prompt-tokens 128 --warmup 0 >/dev/null
"$hfms" bench --base-url "http://127.0.0.1:$port/v1" --mode embeddings --embed-model all-minilm \
    --batch-sizes 32 --embed-concurrency 4 --requests 64 --warmup 0 >/dev/null
status=$(curl -s "http://127.0.0.1:$port/status")
rss=$(kib VmRSS)
hwm=$(kib VmHWM)
parts="anonymous $(kib RssAnon) KiB, file-backed $(kib RssFile) KiB"
stop_server

files=$(($(stat -c %s "$gguf") + $(stat -c %s "$minilm/model.safetensors")))
{
python3 - "$files" "$kv_mb" "$loaded_rss" "$rss" "$hwm" "$status" <<'PY'

import json, sys
files, kv_mb, loaded, rss, hwm = (int(a) for a in sys.argv[1:6])
status = json.loads(sys.argv[6])
mib = lambda b: b / 2**20
bound = files + (kv_mb << 20)
print(f"weight files: {mib(files):.1f} MiB; KV budget: {kv_mb} MiB; sum: {mib(bound):.1f} MiB")
for m in status.get("models", []):
    if m.get("state") == "loaded":
        s = m.get("scheduler") or {}
        extra = ""
        if "kv_blocks_total" in s:
            extra = (f", KV blocks {s['kv_blocks_used']} used of {s['kv_blocks_total']},"
                     f" {s['preemptions']} preemptions")
        print(f"  {m['id']}: weights in memory {mib(m.get('bytes') or 0):.1f} MiB{extra}")
for name, kib in (("RSS after loading", loaded), ("RSS after the load", rss), ("peak RSS (VmHWM)", hwm)):
    print(f"{name:>20}: {kib / 1024:7.1f} MiB = {kib * 1024 / bound:.2f} x (files + KV budget)")
PY
echo "after loading: $loaded_parts; after the load: $parts"
} | tee "$out_dir/$stamp-memory.txt"
