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

# Both servers stay up (an idle one costs nothing) and are warmed first: a
# fresh server's first runs are slower, which would swamp the difference.
start_hfms "$out_dir/$stamp-traces-off.log" --model "HuggingFaceTB/SmolLM2-135M-Instruct=$gguf" --preload smollm2
port_off=$port pid_off=$server_pid
start_hfms "$out_dir/$stamp-traces-on.log" --model "HuggingFaceTB/SmolLM2-135M-Instruct=$gguf" --preload smollm2 \
    --otlp-endpoint "http://127.0.0.1:$sink_port"
port_on=$port pid_on=$server_pid
trap 'kill $sink_pid $pid_off $pid_on 2>/dev/null || true' EXIT

c8() {
    "$hfms" bench --base-url "http://127.0.0.1:$1/v1" --mode chat --concurrency 8 --requests 32 \
        --max-tokens 128 --warmup 1 --json - 2>/dev/null | python3 -c 'import json,sys; print(json.loads(sys.stdin.readline())["output_tokens_per_s"])'
}
c8 "$port_off" >/dev/null
c8 "$port_on" >/dev/null
for round in $(seq 1 "${ROUNDS:-3}"); do
    for export in off on; do
        p=port_$export
        tps=$(c8 "${!p}")
        echo "{\"label\": \"trace-export-overhead\", \"round\": $round, \"otlp_export\": \"$export\", \"chat_c8_output_tok_s\": $tps}" | tee -a "$out"
    done
done
