#!/usr/bin/env bash
# Chat generation, hfms vs llama.cpp's llama-server: the same GGUF, the same thread
# count, the same client (`hfms bench`), one server after the other, never together.
#
#   bench/chat_vs_llama_server.sh LLAMA_SERVER_BIN
#
# Environment (defaults): GGUF (SmolLM2-135M-Instruct Q4_1 from models/; any GGUF file),
# MODEL_ID (the model's id in both servers: HuggingFaceTB/SmolLM2-135M-Instruct, or
# local/<file stem> for another GGUF), HFMS_BIN (target/release/hfms), THREADS (2),
# CONCURRENCY (1,4,8,16), MAX_TOKENS (128), PROMPT_TOKENS (128), REQUESTS (hfms
# bench's default: max(2 x concurrency, 4) per level), LLAMA_PARALLEL (8: llama-server
# slots, -np), HFMS_SERVE_ARGS / LLAMA_SERVER_ARGS (extra flags for either server).
# Output: bench/out/<stamp>-chat-{hfms,llama-server}.jsonl and the ratio table.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

llama_server=${1:?usage: bench/chat_vs_llama_server.sh LLAMA_SERVER_BIN}
if [ ! -x "$llama_server" ]; then
    echo "$llama_server is not an executable" >&2
    exit 1
fi
default_gguf=$repo_root/models/HuggingFaceTB/SmolLM2-135M-Instruct/SmolLM2-135M-Instruct.Q4_1.gguf
gguf=${GGUF:-$default_gguf}
if [ ! -f "$gguf" ]; then
    echo "no $gguf: run scripts/fetch-models.sh (or scripts/fetch-models.sh --extra for the larger ones)" >&2
    exit 1
fi
if [ "$gguf" = "$default_gguf" ]; then
    model_id=${MODEL_ID:-HuggingFaceTB/SmolLM2-135M-Instruct}
else
    stem=$(basename "$gguf" .gguf)
    model_id=${MODEL_ID:-local/$stem}
fi
threads=${THREADS:-2}
concurrency=${CONCURRENCY:-1,4,8,16}
max_tokens=${MAX_TOKENS:-128}
prompt_tokens=${PROMPT_TOKENS:-128}
parallel=${LLAMA_PARALLEL:-8}
max_conc=$(tr ',' '\n' <<<"$concurrency" | sort -n | tail -1)
# Context for max_conc requests of (prompt + max_tokens) each; a prompt word may be
# more than one token and the chat template adds some: count 2 tokens a word + 64.
ctx=$((max_conc * (2 * prompt_tokens + 64 + max_tokens)))

bench_args=(bench --mode chat --model "$model_id" --concurrency "$concurrency"
    --max-tokens "$max_tokens" --prompt-tokens "$prompt_tokens")
if [ -n "${REQUESTS:-}" ]; then
    bench_args+=(--requests "$REQUESTS")
fi

echo "== hfms: $hfms serve --threads $threads ($model_id only) =="
busy_check
start_hfms "$out_dir/$stamp-chat-hfms-serve.log" --model "$model_id=$gguf" --preload "$model_id"
"$hfms" "${bench_args[@]}" --base-url "http://127.0.0.1:$port/v1" --label hfms \
    --json "$out_dir/$stamp-chat-hfms.jsonl"
stop_server

echo "== llama-server: $llama_server -np $parallel -t $threads -c $ctx =="
busy_check
port=$(free_port)
# shellcheck disable=SC2086 # LLAMA_SERVER_ARGS is a list of flags
"$llama_server" -m "$gguf" -a "$model_id" -np "$parallel" -t "$threads" -tb "$threads" -c "$ctx" \
    --host 127.0.0.1 --port "$port" ${LLAMA_SERVER_ARGS:-} >"$out_dir/$stamp-chat-llama-server.log" 2>&1 &
server_pid=$!
wait_ok "http://127.0.0.1:$port/health"
"$hfms" "${bench_args[@]}" --base-url "http://127.0.0.1:$port/v1" --label llama-server \
    --json "$out_dir/$stamp-chat-llama-server.jsonl"
stop_server

echo
python3 "$bench_dir/compare.py" chat "$out_dir/$stamp-chat-hfms.jsonl" "$out_dir/$stamp-chat-llama-server.jsonl" |
    tee "$out_dir/$stamp-chat-compare.txt"
echo "JSON lines, logs and this table: $out_dir/$stamp-chat-*"
