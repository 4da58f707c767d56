#!/usr/bin/env bash
# The cost of exporting traces: chat output tok/s at concurrency 8 with and
# without `--otlp-endpoint` (every request sampled, exported to a local
# OTLP/HTTP sink), in alternating rounds on the same binary.
#
#   bench/traces.sh
#
# Environment (defaults): HFMS_BIN (target/release/hfms), THREADS (2),
# ROUNDS (3).
# Output: bench/out/<stamp>-traces.jsonl
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

threads=${THREADS:-2}
gguf=$repo_root/models/HuggingFaceTB/SmolLM2-135M-Instruct/SmolLM2-135M-Instruct.Q4_1.gguf
out=$out_dir/$stamp-traces.jsonl
busy_check

sink_port=$(free_port)
python3 "$bench_dir/otlp_sink.py" "$sink_port" &
sink_pid=$!
trap 'kill $sink_pid 2>/dev/null || true; stop_server' EXIT
sleep 0.5

for round in $(seq 1 "${ROUNDS:-3}"); do
    for export in off on; do
        flags=()
        [ "$export" = on ] && flags=(--otlp-endpoint "http://127.0.0.1:$sink_port")
        start_hfms "$out_dir/$stamp-traces-$export.log" --model "HuggingFaceTB/SmolLM2-135M-Instruct=$gguf" \
            --preload smollm2 "${flags[@]}"
        tps=$("$hfms" bench --base-url "http://127.0.0.1:$port/v1" --mode chat --concurrency 8 --requests 32 \
            --max-tokens 128 --warmup 1 --json - 2>/dev/null | python3 -c 'import json,sys; print(json.loads(sys.stdin.readline())["output_tokens_per_s"])')
        stop_server
        echo "{\"label\": \"trace-export-overhead\", \"round\": $round, \"otlp_export\": \"$export\", \"chat_c8_output_tok_s\": $tps}" | tee -a "$out"
    done
done
