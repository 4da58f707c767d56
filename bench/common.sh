# Helpers shared by the bench scripts (sourced, not run).

bench_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo_root=$(dirname "$bench_dir")
out_dir=$bench_dir/out
mkdir -p "$out_dir"
stamp=$(date -u +%Y%m%dT%H%M%SZ)
hfms=${HFMS_BIN:-$repo_root/target/release/hfms}

if [ ! -x "$hfms" ]; then
    echo "no hfms binary at $hfms: run 'cargo build --release -p hfms' or set HFMS_BIN" >&2
    exit 1
fi

# The server started last (stopped by stop_server or on exit), and the empty
# models folder start_hfms gave it.
server_pid=
empty_models=

stop_server() {
    if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
        kill "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
    server_pid=
    if [ -n "$empty_models" ]; then
        rmdir "$empty_models" 2>/dev/null || true
        rm -rf "$empty_models.data"
        empty_models=
    fi
}
trap stop_server EXIT
trap 'exit 130' INT TERM

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# wait_ok URL [SECONDS]: until URL answers 200, the server dies, or time runs out.
wait_ok() {
    local url=$1 deadline=$((SECONDS + ${2:-180}))
    while ((SECONDS < deadline)); do
        if [ "$(curl -s -o /dev/null -w '%{http_code}' "$url" 2>/dev/null)" = 200 ]; then
            return 0
        fi
        if ! kill -0 "$server_pid" 2>/dev/null; then
            echo "the server exited before $url answered" >&2
            return 1
        fi
        sleep 0.5
    done
    echo "$url did not answer 200 in time" >&2
    return 1
}

# start_hfms LOG [serve flags]: `hfms serve` on a free loopback port ($port)
# with $threads threads, only the models the flags name (an empty models
# folder, no Hugging Face cache) and $HFMS_SERVE_ARGS; waits until /ready.
start_hfms() {
    local log=$1
    shift
    port=$(free_port)
    empty_models=$(mktemp -d)
    # shellcheck disable=SC2086 # HFMS_SERVE_ARGS is a list of flags
    "$hfms" serve --host 127.0.0.1 --port "$port" --threads "$threads" \
        --models-dir "$empty_models" --no-hf-cache --data-dir "$empty_models.data" "$@" ${HFMS_SERVE_ARGS:-} >"$log" 2>&1 &
    server_pid=$!
    wait_ok "http://127.0.0.1:$port/ready"
}

# Timing on a busy machine means nothing: say so before each run. Measures how busy
# the CPUs were over one second (before our server starts) and looks for builds.
cpu_busy_percent() {
    local a b
    read -ra a </proc/stat
    sleep 1
    read -ra b </proc/stat
    # user nice system idle iowait irq softirq steal
    local busy=$(((b[1] + b[2] + b[3] + b[6] + b[7] + b[8]) - (a[1] + a[2] + a[3] + a[6] + a[7] + a[8])))
    local idle=$(((b[4] + b[5]) - (a[4] + a[5])))
    echo $((100 * busy / (busy + idle > 0 ? busy + idle : 1)))
}

busy_check() {
    local load others busy
    load=$(cut -d' ' -f1 /proc/loadavg 2>/dev/null || echo '?')
    busy=$(cpu_busy_percent)
    others=
    for name in cargo rustc cc1 cc1plus ld make ninja; do
        others+=$(pgrep -x "$name" | tr '\n' ' ' || true)
    done
    echo "machine: $(nproc) cores, load average (1 min) $load, CPUs ${busy}% busy over the last second"
    if [ -n "$others" ] || ((busy > 10)); then
        echo "WARNING: the machine is busy (${busy}% CPU${others:+; builds running: pids $others}):" \
            "figures from this run are not meaningful" >&2
    fi
}
