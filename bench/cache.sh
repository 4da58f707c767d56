#!/usr/bin/env bash
# Response-cache hit latency at the server (p50/p99 of its own request
# times) with the in-memory cache and with Redis on loopback, and the cost
# of metrics: chat output tok/s at concurrency 8 with and without a
# Prometheus-like scrape of /metrics every second.
#
#   bench/cache.sh
#
# Environment (defaults): HFMS_BIN (target/release/hfms), THREADS (2),
# ROUNDS (4: alternating runs without and with scraping).
# Needs redis-server (scripts/install-deps.sh redis-server).
# Output: bench/out/<stamp>-cache.jsonl
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

threads=${THREADS:-2}
gguf=$repo_root/models/HuggingFaceTB/SmolLM2-135M-Instruct/SmolLM2-135M-Instruct.Q4_1.gguf
out=$out_dir/$stamp-cache.jsonl
busy_check

log=$out_dir/$stamp-cache-memory.log
start_hfms "$log" --log-format json --model "HuggingFaceTB/SmolLM2-135M-Instruct=$gguf" --preload smollm2
python3 "$bench_dir/cache_hits.py" --base-url "http://127.0.0.1:$port" --log "$log" --label memory | tee -a "$out"
stop_server

redis_port=$(free_port)
redis_dir=$(mktemp -d)
redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no --dir "$redis_dir" >/dev/null &
redis_pid=$!
trap 'kill $redis_pid 2>/dev/null || true; rm -rf "$redis_dir"; stop_server' EXIT
sleep 0.5
log=$out_dir/$stamp-cache-redis.log
start_hfms "$log" --log-format json --model "HuggingFaceTB/SmolLM2-135M-Instruct=$gguf" --preload smollm2 \
    --cache-url "redis://127.0.0.1:$redis_port/0"
python3 "$bench_dir/cache_hits.py" --base-url "http://127.0.0.1:$port" --log "$log" --label redis | tee -a "$out"
stop_server

# Metrics overhead: the same chat load, without and with a scrape a second.
start_hfms "$out_dir/$stamp-cache-scrape.log" --model "HuggingFaceTB/SmolLM2-135M-Instruct=$gguf" --preload smollm2
for round in $(seq 1 "${ROUNDS:-4}"); do
    for scrape in off on; do
        scraper=
        if [ "$scrape" = on ]; then
            (while true; do curl -s -o /dev/null "http://127.0.0.1:$port/metrics"; sleep 1; done) &
            scraper=$!
        fi
        tps=$("$hfms" bench --base-url "http://127.0.0.1:$port/v1" --mode chat --concurrency 8 --requests 32 \
            --max-tokens 128 --warmup 1 --json - 2>/dev/null | python3 -c 'import json,sys; print(json.loads(sys.stdin.readline())["output_tokens_per_s"])')
        [ -n "$scraper" ] && kill "$scraper"
        echo "{\"label\": \"metrics-overhead\", \"round\": $round, \"scrape_every_second\": \"$scrape\", \"chat_c8_output_tok_s\": $tps}" | tee -a "$out"
    done
done
