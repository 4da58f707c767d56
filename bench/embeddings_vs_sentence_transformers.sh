#!/usr/bin/env bash
# Embeddings, hfms vs sentence-transformers (all-MiniLM-L6-v2, the same folder), the
# same sentences, 2 threads each, one after the other:
#   1. sentence-transformers in-process (bench/st_embed.py): no HTTP at all;
#   2. hfms serve, measured by `hfms bench --mode embeddings` over HTTP;
#   3. sentence-transformers behind a small OpenAI-compatible HTTP server
#      (bench/st_server.py), measured by the same `hfms bench` client.
# Ratios: hfms vs 1 (hfms' figures include HTTP and JSON, 1's do not) and hfms vs 3
# (both over HTTP: the like-for-like one).
#
#   bench/embeddings_vs_sentence_transformers.sh
#
# Environment (defaults): HFMS_BIN (target/release/hfms), THREADS (2), REQUESTS (64
# per batch size), PYTHON (python3, to create bench/.venv), HFMS_SERVE_ARGS.
# Output: bench/out/<stamp>-emb-*.jsonl and the ratio tables.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

threads=${THREADS:-2}
requests=${REQUESTS:-64}
batch_sizes=1,32
model_dir=$repo_root/models/sentence-transformers/all-MiniLM-L6-v2
if [ ! -f "$model_dir/model.safetensors" ]; then
    echo "no $model_dir: run scripts/fetch-models.sh" >&2
    exit 1
fi
export OMP_NUM_THREADS=$threads MKL_NUM_THREADS=$threads RAYON_NUM_THREADS=$threads

venv=$bench_dir/.venv
if ! cmp -s "$bench_dir/requirements.txt" "$venv/.installed" 2>/dev/null; then
    echo "== creating $venv (torch, sentence-transformers: a large download the first time) =="
    "${PYTHON:-python3}" -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$bench_dir/requirements.txt"
    cp "$bench_dir/requirements.txt" "$venv/.installed"
fi

sentences=$out_dir/$stamp-emb-sentences.txt
"$hfms" bench --print-sentences $((requests * 32)) >"$sentences"
bench_args=(bench --mode embeddings --embed-model all-minilm --batch-sizes "$batch_sizes"
    --embed-concurrency 1 --requests "$requests")

echo "== 1. sentence-transformers in-process, torch.set_num_threads($threads) =="
busy_check
"$venv/bin/python" "$bench_dir/st_embed.py" --model "$model_dir" --sentences "$sentences" \
    --batch-sizes "$batch_sizes" --requests "$requests" --threads "$threads" \
    --label st-inprocess --json "$out_dir/$stamp-emb-st-inprocess.jsonl"

echo "== 2. hfms serve --threads $threads (all-MiniLM-L6-v2 only) =="
busy_check
start_hfms "$out_dir/$stamp-emb-hfms-serve.log" \
    --model "sentence-transformers/all-MiniLM-L6-v2=$model_dir" --preload all-minilm
"$hfms" "${bench_args[@]}" --base-url "http://127.0.0.1:$port/v1" --label hfms \
    --json "$out_dir/$stamp-emb-hfms.jsonl"
stop_server

echo "== 3. sentence-transformers behind bench/st_server.py, $threads threads =="
busy_check
port=$(free_port)
"$venv/bin/python" "$bench_dir/st_server.py" --model "$model_dir" --name all-minilm \
    --port "$port" --threads "$threads" >"$out_dir/$stamp-emb-st-server.log" 2>&1 &
server_pid=$!
wait_ok "http://127.0.0.1:$port/health"
"$hfms" "${bench_args[@]}" --base-url "http://127.0.0.1:$port/v1" --label st-http \
    --json "$out_dir/$stamp-emb-st-http.jsonl"
stop_server

echo
{
    echo "hfms over HTTP vs sentence-transformers in-process (hfms' latency includes HTTP + JSON):"
    python3 "$bench_dir/compare.py" embeddings "$out_dir/$stamp-emb-hfms.jsonl" "$out_dir/$stamp-emb-st-inprocess.jsonl"
    echo
    echo "both over HTTP, both measured by hfms bench:"
    python3 "$bench_dir/compare.py" embeddings "$out_dir/$stamp-emb-hfms.jsonl" "$out_dir/$stamp-emb-st-http.jsonl"
} | tee "$out_dir/$stamp-emb-compare.txt"
echo "JSON lines, logs and these tables: $out_dir/$stamp-emb-*"
