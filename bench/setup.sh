#!/usr/bin/env bash
# bench/setup.sh — installs what bench/run.sh needs on a fresh Debian 12, as root.
#
#   sudo bench/setup.sh            # packages only (idempotent)
#   sudo bench/setup.sh --pki DIR  # also (re)generate the test CA and server certificate in DIR
#
# Nothing is started at boot: the Debian packages enable nginx and apache2 when installed, so
# this script stops and disables both right away (bench/run.sh starts its own instances on
# 127.0.0.1 with its own configuration files, and stops them at the end).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"

if [ "$(id -u)" != 0 ]; then
    echo "bench/setup.sh: run as root (it installs Debian packages)" >&2
    exit 1
fi

packages=(nginx apache2 libapache2-mod-auth-openidc wrk nghttp2-client curl openssl procps)
export DEBIAN_FRONTEND=noninteractive
# policy-rc.d 101: the packages' maintainer scripts must not start the services.
policy=/usr/sbin/policy-rc.d
created_policy=0
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod +x "$policy"
    created_policy=1
fi
cleanup() { if [ "$created_policy" = 1 ]; then rm -f "$policy"; fi; }
trap cleanup EXIT

apt-get update
apt-get install -y --no-install-recommends "${packages[@]}"

# Not at boot, and not now: run.sh starts its own instances.
for unit in nginx apache2 apache-htcacheclean; do
    # systemctl disable also works when systemd is not running (it removes the symlinks).
    if command -v systemctl >/dev/null 2>&1; then
        systemctl disable "$unit" >/dev/null 2>&1 || true
    fi
    update-rc.d "$unit" disable >/dev/null 2>&1 || true
    if [ -d /run/systemd/system ]; then
        systemctl stop "$unit" >/dev/null 2>&1 || true
    else
        service "$unit" stop >/dev/null 2>&1 || true
    fi
done

# The release build of the gateway and the test provider (needs the Rust toolchain).
if command -v cargo >/dev/null 2>&1; then
    (cd "$here/.." && cargo build --release --bins)
else
    echo "bench/setup.sh: cargo not found: install Rust (rustup) and run 'cargo build --release --bins'" >&2
fi

if [ "${1:-}" = "--pki" ]; then
    "$here/pki.sh" "${2:?--pki needs a directory}"
fi

echo "bench/setup.sh: done. Now: bench/run.sh"
