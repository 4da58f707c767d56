#!/usr/bin/env bash
# Usage records lost when the server is killed (SIGKILL) under load: the
# client counts the answers it got, the database is read after the kill.
# At most one commit interval (--usage-commit-ms, 1000 by default) of
# records should be missing; a graceful stop loses none (tested).
#
#   bench/usage_kill.sh
#
# Environment (defaults): HFMS_BIN (target/release/hfms), THREADS (2),
# SECONDS_OF_LOAD (5), CLIENTS (8).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

threads=${THREADS:-2}
out=$out_dir/$stamp-usage-kill.jsonl
busy_check
start_hfms "$out_dir/$stamp-usage-kill.log" --model "sentence-transformers/all-MiniLM-L6-v2=$repo_root/models/sentence-transformers/all-MiniLM-L6-v2" \
    --preload all-minilm
data_dir="$empty_models.data"
count_file=$(mktemp)
python3 - "$port" 600 "${CLIENTS:-8}" >"$count_file" <<'PY' &
import json, sys, threading, time, urllib.request
port, seconds, clients = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
ok = [0] * clients
stop = time.time() + seconds
def run(i):
    body = json.dumps({"model": "all-minilm", "input": f"sentence {i}"}).encode()
    while time.time() < stop:
        req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/embeddings", data=body,
                                     headers={"content-type": "application/json", "cache-control": "no-store"})
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                r.read()
                ok[i] += 1
        except Exception:
            return
ts = [threading.Thread(target=run, args=(i,)) for i in range(clients)]
[t.start() for t in ts]
[t.join() for t in ts]
print(sum(ok))
PY
client=$!
# Killed while the clients are still sending.
sleep "${SECONDS_OF_LOAD:-5}"
kill -9 "$server_pid"
wait "$server_pid" 2>/dev/null || true
server_pid=
wait "$client"
answered=$(cat "$count_file")
rm -f "$count_file"
recorded=$("$hfms" usage --data-dir "$data_dir" --csv | awk -F, 'NR == 2 {print $2}')
recorded=${recorded:-0}
echo "{\"label\": \"usage-sigkill\", \"answered\": $answered, \"recorded\": $recorded, \"lost\": $((answered - recorded))}" | tee -a "$out"
