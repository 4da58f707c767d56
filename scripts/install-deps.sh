#!/usr/bin/env bash
# The Debian packages the tests start as real services (DESIGN.md's table):
# installed with apt-get when missing, as root (or through sudo).
#
#   scripts/install-deps.sh [COMMAND...]   (default: prometheus)
set -euo pipefail

declare -A package=([prometheus]=prometheus [redis-server]=redis-server [postgres]=postgresql
                   [haproxy]=haproxy [chromium]=chromium [kubectl]=kubernetes-client)
wanted=("${@:-prometheus}")
missing=()
have() {
    # Debian keeps PostgreSQL's server binaries off the PATH.
    if [ "$1" = postgres ]; then
        compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null
    else
        command -v "$1" >/dev/null 2>&1
    fi
}
for cmd in "${wanted[@]}"; do
    have "$cmd" || missing+=("${package[$cmd]:-$cmd}")
done
[ ${#missing[@]} -eq 0 ] && exit 0

as_root=()
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || {
        echo "install-deps: ${missing[*]} missing and not root (install them with apt-get)" >&2
        exit 1
    }
    as_root=(sudo)
fi
echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
"${as_root[@]}" apt-get update -q
"${as_root[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
