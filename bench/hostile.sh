#!/usr/bin/env bash
# The hardening issue's hostile requests against a release `hfms serve` with
# both test models: what each returns, the peak RSS and time of one
# 2048-input embeddings request, whether work stops when its client gives
# up, and /health latency while every core is busy.
#
#   bench/hostile.sh [keep_alive,embeddings,health]
#
# Environment (defaults): HFMS_BIN (target/release/hfms), THREADS (2),
# HFMS_SERVE_ARGS (e.g. --max-embedding-tokens 600000 to have the 2048-input
# request served rather than refused), HOSTILE_ARGS (e.g. --give-up-only). Output: bench/out/<stamp>-hostile.jsonl (and the log).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

threads=${THREADS:-2}
only=${1:-keep_alive,embeddings,health}
gguf=$repo_root/models/HuggingFaceTB/SmolLM2-135M-Instruct/SmolLM2-135M-Instruct.Q4_1.gguf
minilm=$repo_root/models/sentence-transformers/all-MiniLM-L6-v2
busy_check
start_hfms "$out_dir/$stamp-hostile-serve.log" \
    --model "HuggingFaceTB/SmolLM2-135M-Instruct=$gguf" \
    --model "sentence-transformers/all-MiniLM-L6-v2=$minilm" --preload smollm2,all-minilm
python3 "$bench_dir/hostile.py" --base-url "http://127.0.0.1:$port" --pid "$server_pid" --only "$only" ${HOSTILE_ARGS:-} \
    | tee "$out_dir/$stamp-hostile.jsonl"
