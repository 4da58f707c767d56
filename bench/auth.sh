#!/usr/bin/env bash
# The cost of API keys: the same requests to a server without keys and to
# one where they carry a key with request, token and budget limits (auth,
# RPM and TPM buckets, the concurrency slot, the budget's reservation; both
# price and write usage records). Chat output
# tok/s at concurrency 16 and one-sentence embedding latency, two warmed
# servers in alternating rounds.
#
#   bench/auth.sh
#
# Environment (defaults): HFMS_BIN (target/release/hfms), THREADS (2),
# ROUNDS (3).
# Output: bench/out/<stamp>-auth.jsonl
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

threads=${THREADS:-2}
gguf=$repo_root/models/HuggingFaceTB/SmolLM2-135M-Instruct/SmolLM2-135M-Instruct.Q4_1.gguf
minilm=$repo_root/models/sentence-transformers/all-MiniLM-L6-v2
out=$out_dir/$stamp-auth.jsonl
busy_check

models=(--model "HuggingFaceTB/SmolLM2-135M-Instruct=$gguf" --model "sentence-transformers/all-MiniLM-L6-v2=$minilm"
        --preload smollm2,all-minilm --price 'smollm2=0.1,0.05,0.2;all-minilm=0.02,0.02,0')
start_hfms "$out_dir/$stamp-auth-open.log" "${models[@]}"
port_open=$port pid_open=$server_pid dir_open=$empty_models
admin=bench-admin-key-0123456789abcdef
HFMS_ADMIN_KEY=$admin start_hfms "$out_dir/$stamp-auth-keyed.log" "${models[@]}"
port_keyed=$port pid_keyed=$server_pid dir_keyed=$empty_models
trap 'kill $pid_open $pid_keyed 2>/dev/null || true; rm -rf "$dir_open" "$dir_open.data" "$dir_keyed" "$dir_keyed.data"' EXIT
key=$(curl -s "http://127.0.0.1:$port_keyed/admin/keys" -H "authorization: Bearer $admin" \
    -H 'content-type: application/json' \
    -d '{"name": "bench", "rpm": 1000000, "tpm": 1000000000, "max_concurrent": 1000, "budget_daily": 1e12, "budget_monthly": 1e12}' |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["secret"])')

run() { # PORT KEY MODE...
    local p=$1 k=$2
    shift 2
    "$hfms" bench --base-url "http://127.0.0.1:$p/v1" ${k:+--api-key "$k"} --warmup 1 --json - "$@" 2>/dev/null
}
chat() { run "$1" "$2" --mode chat --concurrency 16 --requests 32 --max-tokens 128 |
    python3 -c 'import json,sys; print(json.loads(sys.stdin.readline())["output_tokens_per_s"])'; }
embed() { run "$1" "$2" --mode embeddings --batch-sizes 1 --embed-concurrency 1 --requests 200 |
    python3 -c 'import json,sys; print(json.loads(sys.stdin.readline())["latency_p50_ms"])'; }

chat "$port_open" "" >/dev/null
chat "$port_keyed" "$key" >/dev/null
for round in $(seq 1 "${ROUNDS:-3}"); do
    for setup in open keyed; do
        p=port_$setup
        k=
        [ "$setup" = keyed ] && k=$key
        tps=$(chat "${!p}" "$k")
        p50=$(embed "${!p}" "$k")
        echo "{\"label\": \"auth-overhead\", \"round\": $round, \"setup\": \"$setup\", \"chat_c16_output_tok_s\": $tps, \"embed_one_p50_ms\": $p50}" | tee -a "$out"
    done
done
