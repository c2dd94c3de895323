#!/usr/bin/env bash
# bench/memory.sh — memory comparison of mfa-gateway and nginx proxy_pass, one run, everything
# on 127.0.0.1 (its own ports, so it can run next to bench/run.sh's servers).
#
#   bench/setup.sh            # once, as root: nginx, curl, openssl (and the release build)
#   bench/memory.sh           # prints two markdown tables (and writes them to $OUT, default
#                             # bench/results/memory-<UTC time>.md); ~2 minutes for 10000
#
# What it measures, for both proxies (TLS, the same ECDSA certificate from bench/pki.sh, the same
# upstream nginx, HTTP/1.1):
#   1. Idle keep-alive connections: bench/idle_conns.py opens IDLE_CONNS TLS connections, sends
#      one keep-alive GET of the 1 KB page on each (proxied to the upstream, answer checked),
#      then leaves them open and idle. The proxy's RSS (VmRSS summed over the process and its
#      children: nginx master + workers) is read before, at each of IDLE_STEPS and at
#      IDLE_CONNS, SETTLE seconds after the last connection was opened; the ESTABLISHED sockets
#      on the proxy's port are counted at that moment and the run fails if fewer than expected.
#   2. A TRANSFER_SIZE (1 GiB) streamed download and upload through each proxy with curl:
#      throughput (curl's speed_download / speed_upload) and the proxy's peak RSS growth during
#      the transfer (VmHWM reset with clear_refs before, summed over the processes after,
#      minus the VmRSS sum before). The upload is checked at the upstream: the file it stored
#      must have every byte.
# Each measurement (the idle connections, each transfer) starts the proxy afresh: an allocator
# reuses what it kept from an earlier measurement, which would hide the growth.
#
# Environment (all optional):
#   IDLE_CONNS=10000     idle connections per proxy   IDLE_STEPS="1000"  intermediate counts
#   CONCURRENCY=200      handshakes in flight          SETTLE=2           seconds before reading RSS
#   IDLE_TIMEOUT=300     seconds an idle keep-alive connection may stay: nginx keepalive_timeout
#                        and the gateway's header_read_timeout (its idle keep-alive lifetime),
#                        always equal (checked)
#   TRANSFER_SIZE=1G     size of the download and the upload (truncate -s syntax; 0 skips them)
#   PROXIES="nginx gw"   which proxies (ids: nginx, gw)
#   NGINX_BUFFERING=off  nginx proxy_buffering for the download: off, or "memory" (on, with
#                        proxy_max_temp_file_size 0: bounded in-memory buffers, no disk spool)
#   GW_ENV="A=1 B=2"     extra environment for the gateway process (e.g. MIMALLOC_ALLOW_THP=0)
#   GW_BIN=PATH          another mfa-gateway binary (default target/release/mfa-gateway)
#   KEEP=1               keep the temporary directory (configs, logs, smaps_rollup snapshots)
#   HOLD=1               start everything, then keep it running (no measurement) until Ctrl-C
#   OUT=FILE             where the markdown tables are written as well
#
# Every server is started by this script with its own configuration in a temporary directory
# and stopped at the end (trap), whatever happens. Needs `ulimit -n` ≥ IDLE_CONNS + 1024 (the
# script raises its soft limit to 65536 or to the hard limit, for itself and the servers).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"

IDLE_CONNS="${IDLE_CONNS:-10000}"
IDLE_STEPS="${IDLE_STEPS-$((IDLE_CONNS / 10))}"
CONCURRENCY="${CONCURRENCY:-200}"
SETTLE="${SETTLE:-2}"
IDLE_TIMEOUT="${IDLE_TIMEOUT:-300}"
TRANSFER_SIZE="${TRANSFER_SIZE:-1G}"
PROXIES="${PROXIES:-nginx gw}"
NGINX_BUFFERING="${NGINX_BUFFERING:-off}"
HOST=mail.contoso.test

# Loopback ports (fixed; bench/run.sh uses 18080–18445, 19100 and 19400).
P_UPSTREAM=28080      # nginx: the 1 KB page, the big file, the upload sink (plain HTTP)
P_NGINX=28443         # nginx proxy_pass over TLS
P_GATEWAY=28445       # mfa-gateway over TLS
P_GATEWAY_ADMIN=29100 # its /readyz
P_PROVIDER=29400      # the test OpenID provider (the gateway's configuration needs one)

CLIENT_ID=bench-client
CLIENT_SECRET="bench-secret-$RANDOM$RANDOM"

die() { echo "bench/memory.sh: $*" >&2; exit 1; }
log() { echo "[memory] $*" >&2; }

for tool in nginx curl openssl python3 ss; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool not found: run bench/setup.sh first (as root)"
done
[[ "$IDLE_CONNS" =~ ^[1-9][0-9]*$ ]] || die "IDLE_CONNS must be a positive integer"
[[ "$NGINX_BUFFERING" == off || "$NGINX_BUFFERING" == memory ]] || die "NGINX_BUFFERING must be off or memory"
for id in $PROXIES; do
    [[ "$id" == nginx || "$id" == gw ]] || die "unknown proxy '$id' (nginx, gw)"
done

# The intermediate steps, sorted, below IDLE_CONNS, then IDLE_CONNS itself.
steps=()
for s in $(printf '%s\n' $IDLE_STEPS | sort -n -u); do
    [[ "$s" =~ ^[0-9]+$ ]] || die "IDLE_STEPS: '$s' is not a number"
    if [ "$s" -gt 0 ] && [ "$s" -lt "$IDLE_CONNS" ]; then steps+=("$s"); fi
done
steps+=("$IDLE_CONNS")

# Open files: N client sockets here (idle_conns.py), N browser sockets + upstream sockets in
# the proxy. Raise the soft limit as far as allowed; the servers inherit it.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
NOFILE="$(ulimit -n)"
if [ "$NOFILE" != unlimited ] && [ "$NOFILE" -lt $((IDLE_CONNS + 1024)) ]; then
    die "ulimit -n is $NOFILE (hard limit $(ulimit -Hn)); IDLE_CONNS=$IDLE_CONNS needs at least $((IDLE_CONNS + 1024)): lower IDLE_CONNS or raise the hard limit"
fi
[ "$NOFILE" = unlimited ] && NOFILE=1048576
WORKER_CONNECTIONS=$((IDLE_CONNS + 4096))
[ "$WORKER_CONNECTIONS" -le "$NOFILE" ] || WORKER_CONNECTIONS="$NOFILE"

gw_bin="${GW_BIN:-$root/target/release/mfa-gateway}"
provider_bin="$root/target/release/test-provider"
[ -x "$gw_bin" ] && [ -x "$provider_bin" ] || die "release binaries missing: cargo build --release --bins"

# shellcheck source=bench/lib.sh
. "$here/lib.sh"
new_workdir mfagw-memory

# ---------------------------------------------------------------------------------------------
# PKI, the 1 KB page, the big file, the upload source

"$here/pki.sh" "$work/pki" >/dev/null
CA="$work/pki/ca.pem"
CERT="$work/pki/server.pem"
KEY="$work/pki/server.key"
mkdir -p "$work/www/big" "$work/sink/upload" "$work/sink.tmp"
chmod 777 "$work/sink/upload" "$work/sink.tmp" # the upstream's workers store uploads here
head -c 1024 /dev/zero | tr '\0' 'x' >"$work/www/page"
TRANSFER_BYTES=0
if [ "$TRANSFER_SIZE" != 0 ]; then
    # Sparse files: reading them costs no disk I/O on either side.
    truncate -s "$TRANSFER_SIZE" "$work/www/big/blob.bin" "$work/upload.bin"
    TRANSFER_BYTES="$(stat -c %s "$work/upload.bin")"
fi

# ---------------------------------------------------------------------------------------------
# nginx: the upstream and the proxy, two instances.

# The upstream: the 1 KB page, a big file (sendfile), and an upload sink. The sink is a WebDAV
# PUT: nginx reads the whole body (into a temporary file, renamed into place) before it answers
# 201/204, so the answer cannot overtake the upload, and the stored file's size proves that
# every byte went through the proxy. (A plain "return 200" answers at once and discards the body
# afterwards: a proxy could then finish early without forwarding it all.)
{
    nginx_common upstream "$WORKER_CONNECTIONS" "$NOFILE"
    cat <<EOF
http {
    access_log off;
    sendfile on;
    client_body_temp_path $work/sink.tmp;
    keepalive_requests 1000000;
    keepalive_timeout ${IDLE_TIMEOUT}s;
    server {
        listen 127.0.0.1:$P_UPSTREAM reuseport backlog=4096;
        root $work/www;
        location = /page { default_type text/html; }
        location /big/ { default_type application/octet-stream; }
        location /upload/ {
            root $work/sink;
            dav_methods PUT;
            client_max_body_size 0;
        }
    }
}
EOF
} >"$work/upstream.conf"

# The proxy: as in bench/run.sh (TLS 1.2/1.3, no session cache or tickets, upstream keep-alive
# pool), HTTP/1.1 only, with streaming in both directions:
#   proxy_request_buffering off — the upload goes to the upstream as it arrives (the default
#     reads the whole body first, spooling it to disk: a 1 GiB body in a temporary file).
#   proxy_buffering off (NGINX_BUFFERING=off, the default here) — the answer goes to the client
#     as it arrives, through one proxy_buffer_size buffer. The default (on) fills proxy_buffers
#     and then spools the rest of a large answer to a temporary file (up to
#     proxy_max_temp_file_size, 1 GiB) whenever the client reads slower than the upstream
#     sends — which a TLS client on loopback does: that would measure nginx's disk, not
#     streaming. The gateway streams with bounded buffers, so "off" is the like-for-like
#     setting. NGINX_BUFFERING=memory keeps buffering on in memory only (proxy_max_temp_file_size
#     0: nginx waits for the client instead of spooling), for comparison.
if [ "$NGINX_BUFFERING" = off ]; then
    nginx_buffering="proxy_buffering off"
else
    nginx_buffering="proxy_buffering on, proxy_max_temp_file_size 0"
fi
{
    nginx_common proxy "$WORKER_CONNECTIONS" "$NOFILE"
    cat <<EOF
http {
    access_log off;
    client_body_temp_path $work/proxy.tmp;
    proxy_temp_path $work/proxy.ptmp;
    keepalive_requests 1000000;
    keepalive_timeout ${IDLE_TIMEOUT}s;
    upstream page { server 127.0.0.1:$P_UPSTREAM; keepalive 128; }
    server {
        listen 127.0.0.1:$P_NGINX ssl reuseport backlog=4096;
        server_name $HOST;
        ssl_certificate $CERT;
        ssl_certificate_key $KEY;
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_session_cache off;
        ssl_session_tickets off;
        client_max_body_size 0;
        location / {
            proxy_pass http://page;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host \$host;
            proxy_set_header X-Forwarded-For \$remote_addr;
            proxy_set_header X-Forwarded-Proto https;
            proxy_request_buffering off;
            ${nginx_buffering//,/;};
            proxy_read_timeout 300s;
            proxy_send_timeout 300s;
        }
    }
}
EOF
} >"$work/proxy.conf"

nginx -t -q -c "$work/upstream.conf" -e "$work/upstream.error.log" || die "upstream nginx configuration refused"
nginx -t -q -c "$work/proxy.conf" -e "$work/proxy.error.log" || die "proxy nginx configuration refused"
nginx -c "$work/upstream.conf" -e "$work/upstream.error.log" &
PID_UPSTREAM=$!
pids+=("$PID_UPSTREAM")
wait_port "http://127.0.0.1:$P_UPSTREAM/page"

# ---------------------------------------------------------------------------------------------
# The gateway (and the test OpenID provider its configuration needs). Every route is public:
# the session check is per request (a cookie opened and verified), it holds no memory per
# connection or per stream, so it does not change what is measured here.

if [[ " $PROXIES " == *" gw "* ]]; then
    "$provider_bin" --listen "127.0.0.1:$P_PROVIDER" --client-id "$CLIENT_ID" \
        --client-secret "$CLIENT_SECRET" >"$work/provider.out" 2>"$work/provider.log" &
    pids+=("$!")
    for _ in $(seq 1 200); do [ -s "$work/provider.out" ] && break; sleep 0.1; done
    ISSUER="$(head -n1 "$work/provider.out")"
    [ -n "$ISSUER" ] || die "the test provider did not start: $(cat "$work/provider.log")"

    openssl rand -base64 32 >"$work/session.key"
    printf '%s\n' "$CLIENT_SECRET" >"$work/client-secret"
    chmod 600 "$work/session.key" "$work/client-secret"
    # max_request_body: a size; above the transfer (at least the 128MiB default).
    max_body=$(( TRANSFER_BYTES * 2 > 134217728 ? TRANSFER_BYTES * 2 : 134217728 ))
    cat >"$work/gateway.toml" <<EOF
[server]
https_listen = "127.0.0.1:$P_GATEWAY"
admin_listen = "127.0.0.1:$P_GATEWAY_ADMIN"
shutdown_grace = "0s"
max_connections = $((IDLE_CONNS + 1024))
header_read_timeout = "${IDLE_TIMEOUT}s"

[[tls.certificates]]
cert = "$CERT"
key = "$KEY"

[upstreams.page]
servers = ["http://127.0.0.1:$P_UPSTREAM"]
max_request_body = $max_body

[oidc]
issuer = "$ISSUER"
client_id = "$CLIENT_ID"
client_secret = { file = "$work/client-secret" }

[session]
keys = [{ file = "$work/session.key" }]

[[routes]]
host = "$HOST"
path = "/"
upstream = "page"
access = "public"
EOF
    "$gw_bin" check-config --config "$work/gateway.toml" >"$work/check-config.log" 2>&1 ||
        die "gateway configuration refused: $(cat "$work/check-config.log")"
    # The same idle-connection lifetime for both: the gateway closes an idle keep-alive
    # connection after header_read_timeout (docs/configuration.md), nginx after keepalive_timeout.
    # A shorter lifetime on one side would make it close connections the other still holds.
    gw_idle="$(awk -F'"' '/^header_read_timeout = / { print $2 }' "$work/gateway.toml")"
    nginx_idle="$(awk '/^ *keepalive_timeout / { sub(";", "", $2); print $2; exit }' "$work/proxy.conf")"
    [ "$gw_idle" = "$nginx_idle" ] && [ "$gw_idle" = "${IDLE_TIMEOUT}s" ] ||
        die "idle lifetimes differ: gateway header_read_timeout '$gw_idle', nginx keepalive_timeout '$nginx_idle'"
fi

# ---------------------------------------------------------------------------------------------
# Starting and stopping the proxies. Every measurement (the idle connections, each transfer)
# gets a freshly started proxy that has answered one request: memory that an allocator kept
# from an earlier measurement (after 10000 connections, hundreds of MiB) would otherwise be
# reused and hide the growth.

PID_NGINX=""
PID_GATEWAY=""
proxy_port() { if [ "$1" = gw ]; then echo "$P_GATEWAY"; else echo "$P_NGINX"; fi; }
proxy_pid() { if [ "$1" = gw ]; then echo "$PID_GATEWAY"; else echo "$PID_NGINX"; fi; }
proxy_name() { if [ "$1" = gw ]; then echo "mfa-gateway"; else echo "nginx proxy_pass"; fi; }

start_proxy() { # ID
    local id="$1" port
    port="$(proxy_port "$id")"
    if [ "$id" = nginx ]; then
        nginx -c "$work/proxy.conf" -e "$work/proxy.error.log" &
        PID_NGINX=$!
        pids+=("$PID_NGINX")
    else
        # shellcheck disable=SC2086 # GW_ENV is a list of NAME=VALUE words
        env RUST_LOG="${RUST_LOG:-warn}" ${GW_ENV:-} "$gw_bin" run --config "$work/gateway.toml" >>"$work/gateway.log" 2>&1 &
        PID_GATEWAY=$!
        pids+=("$PID_GATEWAY")
        for _ in $(seq 1 200); do
            curl -sf -o /dev/null "http://127.0.0.1:$P_GATEWAY_ADMIN/readyz" && break
            sleep 0.1
        done
        curl -sf -o /dev/null "http://127.0.0.1:$P_GATEWAY_ADMIN/readyz" || die "gateway not ready: $(tail -5 "$work/gateway.log")"
    fi
    # The page through the upstream, with the bench CA and the name (the same certificate).
    local check=""
    for _ in $(seq 1 200); do
        check="$(curl -s --http1.1 --max-time 2 --cacert "$CA" --resolve "$HOST:$port:127.0.0.1" -o /dev/null \
            -w '%{http_code} %{size_download}' "https://$HOST:$port/page" || true)"
        [ "$check" = "200 1024" ] && return 0
        sleep 0.1
    done
    die "$(proxy_name "$id"): GET /page answered '$check' instead of '200 1024' (logs in $work; KEEP=1 keeps them)"
}

# Fails loudly when the proxy under test is no longer running (crashed, or stopped from outside).
alive() { # ID
    local pid
    pid="$(proxy_pid "$1")"
    kill -0 "$pid" 2>/dev/null || die "$(proxy_name "$1") (pid $pid) is no longer running: crashed or stopped from outside (logs in $work; KEEP=1 keeps them)"
}

stop_proxy() { # ID
    local id="$1" pid p keep=()
    pid="$(proxy_pid "$id")"
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    for p in "${pids[@]}"; do [ "$p" = "$pid" ] || keep+=("$p"); done
    pids=("${keep[@]}")
}

# HOLD=1: keep every server running for measurements by hand (bench/idle_conns.py --cafile
# $work/pki/ca.pem --connect 127.0.0.1:PORT ...). Ctrl-C (or SIGTERM) stops everything.
if [ "${HOLD:-0}" = 1 ]; then
    for id in $PROXIES; do start_proxy "$id"; done
    log "holding: $work (gateway :$P_GATEWAY pid ${PID_GATEWAY:-none}, nginx proxy :$P_NGINX pid ${PID_NGINX:-none}, upstream :$P_UPSTREAM pid $PID_UPSTREAM)"
    echo "$work" >&2
    sleep infinity & # in the background: the INT/TERM trap runs at once, not after the sleep
    pids+=("$!")
    wait "$!" || true
    exit 0
fi

# ---------------------------------------------------------------------------------------------
# Measurement helpers

# Anonymous memory (heap, not files) of a server, in KiB.
anon_kib() { status_kib "$1" RssAnon; }

# smaps_rollup of each process of a server, for the record (KEEP=1 keeps them).
snapshot_smaps() { # PID NAME
    local pid
    for pid in $(server_pids "$1"); do
        { echo "== $pid $(cat "/proc/$pid/comm" 2>/dev/null)"; cat "/proc/$pid/smaps_rollup" 2>/dev/null; } >>"$work/smaps.$2.txt"
    done
}

established() { ss -Htn state established "( sport = :$1 )" | wc -l; }

mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }
per_conn() { awk -v a="$1" -v b="$2" -v n="$3" 'BEGIN { if (n > 0) printf "%.1f", (b - a) / n; else print "n/a" }'; }

# ---------------------------------------------------------------------------------------------
# 1. Idle keep-alive connections

declare -A IDLE_ROW
IDLE_WAIT=$(( 120 + IDLE_CONNS / 20 )) # seconds allowed for opening all connections

# Waits until the client prints "READY <n>"; fails on "FAIL", on its exit, or after IDLE_WAIT s.
wait_ready() { # CLIENT_PID OUTFILE N
    local cpid="$1" file="$2" n="$3" i
    for i in $(seq 1 $((IDLE_WAIT * 5))); do
        grep -qx "READY $n" "$file" 2>/dev/null && return 0
        if grep -q '^FAIL' "$file" 2>/dev/null; then
            die "idle_conns.py: $(grep '^FAIL' "$file" | head -n1)"
        fi
        kill -0 "$cpid" 2>/dev/null || die "idle_conns.py exited early: $(tail -n3 "$file" "${file%.out}.err")"
        sleep 0.2
    done
    die "idle_conns.py: not READY $n after ${IDLE_WAIT}s"
}

idle_run() { # ID
    local id="$1" pid port
    pid="$(proxy_pid "$id")"; port="$(proxy_port "$id")"
    sleep "$SETTLE"
    local rss0 anon0
    rss0="$(rss_kib "$pid")"; anon0="$(anon_kib "$pid")"
    snapshot_smaps "$pid" "$id.0"
    local steps_csv
    steps_csv="$(IFS=,; echo "${steps[*]}")"
    log "$(proxy_name "$id"): opening $IDLE_CONNS idle TLS keep-alive connections (steps $steps_csv, $CONCURRENCY handshakes at a time)"
    local out="$work/idle.$id.out"
    python3 "$here/idle_conns.py" --connect "127.0.0.1:$port" --host "$HOST" --path /page \
        --cafile "$CA" --conns "$IDLE_CONNS" --concurrency "$CONCURRENCY" --steps "$steps_csv" \
        >"$out" 2>"$work/idle.$id.err" &
    local cpid=$!
    pids+=("$cpid")
    local step rss anon est first_rss="" first_step="" t0 t1
    t0="$(date +%s.%N)"
    local cells=""
    for step in "${steps[@]}"; do
        wait_ready "$cpid" "$out" "$step"
        t1="$(date +%s.%N)"
        sleep "$SETTLE"
        alive "$id"
        est="$(established "$port")"
        rss="$(rss_kib "$pid")"; anon="$(anon_kib "$pid")"
        snapshot_smaps "$pid" "$id.$step"
        log "$(proxy_name "$id"): $step open ($(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }') s), $est ESTABLISHED on :$port, RSS $(mib "$rss") MiB (+$(per_conn "$rss0" "$rss" "$step") KiB/conn), anon +$(per_conn "$anon0" "$anon" "$step") KiB/conn"
        [ "$est" -ge "$step" ] || die "$(proxy_name "$id"): only $est ESTABLISHED connections on :$port, expected $step (the proxy closed idle connections?)"
        if [ "$step" != "$IDLE_CONNS" ]; then
            [ -z "$first_step" ] && { first_step="$step"; first_rss="$rss"; }
            cells+="$(mib "$rss") | "
            kill -USR1 "$cpid"
        fi
    done
    # The client agrees: none of its connections was closed by the server.
    kill -USR2 "$cpid"
    local open=""
    for _ in $(seq 1 50); do
        open="$(awk '$1 == "OPEN" { print $2 }' "$out" | tail -n1)"
        [ -n "$open" ] && break
        sleep 0.1
    done
    alive "$id"
    [ "${open:-0}" -ge "$IDLE_CONNS" ] || die "$(proxy_name "$id"): the client sees ${open:-?} of $IDLE_CONNS connections still open"
    kill -TERM "$cpid" 2>/dev/null || true
    wait "$cpid" 2>/dev/null || true
    local keep=() p # the client is gone: the cleanup must not signal its (reusable) PID
    for p in "${pids[@]}"; do [ "$p" = "$cpid" ] || keep+=("$p"); done
    pids=("${keep[@]}")
    sleep "$SETTLE"
    local rss_after est_after
    rss_after="$(rss_kib "$pid")"; est_after="$(established "$port")"
    log "$(proxy_name "$id"): all closed ($est_after ESTABLISHED left), RSS $(mib "$rss_after") MiB"
    local slope=""
    [ -n "$first_step" ] && slope="$(per_conn "$first_rss" "$rss" $((IDLE_CONNS - first_step))) | "
    IDLE_ROW[$id]="| $(proxy_name "$id") | $(mib "$rss0") | ${cells}$(mib "$rss") | $(per_conn "$rss0" "$rss" "$IDLE_CONNS") | ${slope}$(per_conn "$anon0" "$anon" "$IDLE_CONNS") | $est (client: $open) | $(mib "$rss_after") |"
}

NGINX_WORKERS="?"
for id in $PROXIES; do
    start_proxy "$id"
    [ "$id" = nginx ] && NGINX_WORKERS="$(pgrep -c -P "$PID_NGINX" || true)"
    idle_run "$id"
    stop_proxy "$id"
done

# ---------------------------------------------------------------------------------------------
# 2. Streamed download and upload

declare -A XFER_ROW
GW_GROWTH_KIB=()

transfer() { # ID DIRECTION (down|up)
    local id="$1" dir="$2" pid port
    pid="$(proxy_pid "$id")"; port="$(proxy_port "$id")"
    local curl_=(curl -sS --http1.1 --max-time 600 --cacert "$CA" --resolve "$HOST:$port:127.0.0.1" -o /dev/null)
    rm -f "$work/sink/upload/blob"
    sleep 0.5
    alive "$id"
    reset_peak_rss "$pid"
    local before out
    before="$(rss_kib "$pid")"
    log "$(proxy_name "$id"): $dir $TRANSFER_SIZE"
    if [ "$dir" = down ]; then
        out="$("${curl_[@]}" -w '%{http_code} %{size_download} %{speed_download}' "https://$HOST:$port/big/blob.bin")" ||
            die "$(proxy_name "$id"): download failed: $out"
    else
        # -T streams the file (PUT); "Expect:" off: no 100-continue round trip for either proxy.
        out="$("${curl_[@]}" -H 'Expect:' -T "$work/upload.bin" -w '%{http_code} %{size_upload} %{speed_upload}' "https://$HOST:$port/upload/blob")" ||
            die "$(proxy_name "$id"): upload failed: $out"
    fi
    local peak code size speed
    alive "$id"
    peak="$(peak_rss_kib "$pid")"
    read -r code size speed <<<"$out"
    if [ "$dir" = down ]; then
        [ "$code" = 200 ] && [ "$size" = "$TRANSFER_BYTES" ] || die "$(proxy_name "$id"): download answered $code with $size bytes (expected 200, $TRANSFER_BYTES)"
    else
        local stored
        stored="$(stat -c %s "$work/sink/upload/blob" 2>/dev/null || echo 0)"
        [[ "$code" == 20[14] ]] && [ "$size" = "$TRANSFER_BYTES" ] && [ "$stored" = "$TRANSFER_BYTES" ] ||
            die "$(proxy_name "$id"): upload answered $code after sending $size bytes; the upstream stored $stored (expected $TRANSFER_BYTES)"
        rm -f "$work/sink/upload/blob"
    fi
    local growth=$((peak - before))
    [ "$id" = gw ] && GW_GROWTH_KIB+=("$growth")
    local mbs
    mbs="$(awk -v s="$speed" 'BEGIN { printf "%.0f", s / 1e6 }')"
    log "$(proxy_name "$id"): $dir $mbs MB/s, peak RSS growth $(mib "$growth") MiB"
    local what="download (GET)"; [ "$dir" = up ] && what="upload (PUT)"
    XFER_ROW[$id.$dir]="| $(proxy_name "$id") | $what | $mbs | $(mib "$before") | $(mib "$peak") | $(mib "$growth") |"
}

if [ "$TRANSFER_BYTES" -gt 0 ]; then
    for id in $PROXIES; do
        for dir in down up; do
            start_proxy "$id"
            transfer "$id" "$dir"
            stop_proxy "$id"
        done
    done
fi

# ---------------------------------------------------------------------------------------------
# The tables

{
    step_heads="" step_align="" slope_head="" slope_align=""
    for s in "${steps[@]}"; do
        [ "$s" = "$IDLE_CONNS" ] && continue
        step_heads+="RSS, $s idle MiB | "; step_align+="---:|"
    done
    if [ "${#steps[@]}" -gt 1 ]; then slope_head="KiB / connection, ${steps[0]}→$IDLE_CONNS | "; slope_align="---:|"; fi
    echo "Idle keep-alive TLS connections (HTTP/1.1, one request each, then idle):"
    echo
    echo "| Proxy | RSS before MiB | ${step_heads}RSS, $IDLE_CONNS idle MiB | KiB / connection | ${slope_head}Anonymous KiB / connection | ESTABLISHED at $IDLE_CONNS | RSS after closing MiB |"
    echo "|---|---:|${step_align}---:|---:|${slope_align}---:|---:|---:|"
    for id in $PROXIES; do echo "${IDLE_ROW[$id]}"; done
    echo
    if [ "$TRANSFER_BYTES" -gt 0 ]; then
        echo "Streamed transfers of $TRANSFER_BYTES bytes ($TRANSFER_SIZE), one at a time, HTTP/1.1 over TLS:"
        echo
        echo "| Proxy | Transfer | MB/s | RSS before MiB | Peak RSS MiB | Peak RSS growth MiB |"
        echo "|---|---|---:|---:|---:|---:|"
        for id in $PROXIES; do echo "${XFER_ROW[$id.down]}"; echo "${XFER_ROW[$id.up]}"; done
        if [ "${#GW_GROWTH_KIB[@]}" -gt 0 ]; then
            max=0; for g in "${GW_GROWTH_KIB[@]}"; do [ "$g" -gt "$max" ] && max="$g"; done
            verdict="met"; [ $((max * 1024)) -lt 16000000 ] || verdict="NOT met"
            echo
            echo "Gateway peak RSS growth during a transfer: $(mib "$max") MiB (target < 16 MB = 15.3 MiB: $verdict)."
        fi
        echo
    fi
    echo "Command: \`IDLE_CONNS=$IDLE_CONNS IDLE_STEPS=\"$IDLE_STEPS\" CONCURRENCY=$CONCURRENCY SETTLE=$SETTLE IDLE_TIMEOUT=$IDLE_TIMEOUT TRANSFER_SIZE=$TRANSFER_SIZE NGINX_BUFFERING=$NGINX_BUFFERING${GW_ENV:+ GW_ENV=\"$GW_ENV\"} bench/memory.sh\`."
    echo "RSS: VmRSS summed over the proxy's processes (nginx: master and $NGINX_WORKERS workers; the gateway: one process), SETTLE=${SETTLE}s after the last connection opened; KiB / connection = (RSS at N − RSS before) / N$([ "${#steps[@]}" -gt 1 ] && echo "; the ${steps[0]}→$IDLE_CONNS column is the slope between the two counts (startup and allocator warm-up excluded)"); anonymous = RssAnon (the same difference, anonymous memory only). RSS after closing: SETTLE s after the client closed every connection (what the allocator keeps). ESTABLISHED: server-side sockets on the proxy's port (ss), and the client's own count of connections not closed by the server."
    echo "Idle connections: bench/idle_conns.py (Python asyncio + ssl, ALPN http/1.1, SNI/Host $HOST, $CONCURRENCY handshakes at a time), one GET of the 1 KB page per connection, proxied to the upstream nginx (200 checked). Gateway header_read_timeout and nginx keepalive_timeout: ${IDLE_TIMEOUT}s; gateway max_connections $((IDLE_CONNS + 1024)), nginx worker_connections $WORKER_CONNECTIONS; ulimit -n $NOFILE."
    echo "Transfers: curl --http1.1 -o /dev/null, speed_download / speed_upload in 10^6 bytes/s; upload with -T (PUT, no Expect: 100-continue) to a WebDAV PUT location of the upstream nginx, which answers after storing the whole body (its size is checked). Peak RSS growth: VmHWM (reset with clear_refs before the transfer) summed over the proxy's processes, minus their VmRSS before. Each measurement (the idle connections, each transfer) on a freshly started proxy that has answered one request. nginx: proxy_request_buffering off, $nginx_buffering (streaming both ways, no temporary files); the gateway streams both ways."
    echo "Gateway routes: access = \"public\" (the session check is per request, it holds no memory per connection or per stream). Both proxies: TLS 1.2/1.3, the same ECDSA P-256 certificate (bench/pki.sh), no TLS session cache or tickets on nginx, the same upstream nginx on 127.0.0.1:$P_UPSTREAM."
    echo "Machine: $(nproc) CPUs, $(uname -srm), $(awk '/^MemTotal:/ { printf "%.0f GiB RAM", $2 / 1048576 }' /proc/meminfo); $(nginx -v 2>&1 | sed 's/^nginx version: //'), $(curl --version | head -n1 | awk '{ print $1, $2, $5 }'), $(python3 -c 'import ssl, sys; print("Python", sys.version.split()[0], ssl.OPENSSL_VERSION)'), $("$gw_bin" --version 2>/dev/null || echo mfa-gateway) (target/release/mfa-gateway built $(date -u -r "$gw_bin" +%Y-%m-%dT%H:%MZ))."
} >"$work/table.md"

cat "$work/table.md"
out="${OUT:-$here/results/memory-$(date -u +%Y%m%dT%H%M%SZ).md}"
mkdir -p "$(dirname "$out")"
cp "$work/table.md" "$out"
log "tables written to $out"
