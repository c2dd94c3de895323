#!/usr/bin/env bash
# bench/profile.sh — a CPU profile of the gateway under load (TLS, HTTP/1.1 keep-alive, mfa route
# with a session, the 1 KB page), at each thread count, with perf; prints where the time goes.
#
#   WORKERS="1 2" bench/profile.sh     # needs perf (Debian: linux-perf) and bench/setup.sh's tools
#
# For each N: bench/run.sh HOLD=1 WORKERS=N starts the servers and signs in; wrk loads the
# gateway (LOAD seconds) while `perf record` samples it (SECONDS_PERF seconds, software clock,
# DWARF call graphs); bench/perf_categories.py charges the samples to kinds of work. The CPU per
# request of the same run (from /proc) turns shares into µs per request.
#
# Environment: WORKERS="1 2", LOAD=12, SECONDS_PERF=6, FREQ=999, CONNS=64, THREADS=2,
# OUT=DIR (perf.data and reports; default bench/results/profile-<UTC time>),
# PROTO=h1 (wrk, HTTP/1.1) or h2 (h2load, HTTP/2 with H2_STREAMS=10 streams per connection).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
WORKERS="${WORKERS:-1 2}"
LOAD="${LOAD:-12}"
SECONDS_PERF="${SECONDS_PERF:-6}"
FREQ="${FREQ:-999}"
CONNS="${CONNS:-64}"
THREADS="${THREADS:-2}"
PROTO="${PROTO:-h1}"
H2_STREAMS="${H2_STREAMS:-10}"
[[ "$PROTO" == h1 || "$PROTO" == h2 ]] || { echo "bench/profile.sh: PROTO must be h1 or h2" >&2; exit 1; }
OUT="${OUT:-$here/results/profile-$(date -u +%Y%m%dT%H%M%SZ)}"
HOST=mail.contoso.test
P_GATEWAY=18445

die() { echo "bench/profile.sh: $*" >&2; exit 1; }
log() { echo "[profile] $*" >&2; }
command -v perf >/dev/null 2>&1 || die "perf not found (Debian: apt-get install linux-perf)"
mkdir -p "$OUT"

hold_pid=""
stop_hold() {
    if [ -n "$hold_pid" ]; then
        kill -TERM "$hold_pid" 2>/dev/null || true
        wait "$hold_pid" 2>/dev/null || true
        hold_pid=""
    fi
}
trap stop_hold EXIT

for n in $WORKERS; do
    log "$n worker(s): starting the servers"
    SKIP_BUILD="${SKIP_BUILD:-1}" HOLD=1 WORKERS="$n" ROWS=gw "$here/run.sh" 2>"$OUT/hold.$n.log" &
    hold_pid=$!
    work=""
    for _ in $(seq 1 600); do
        work="$(grep -o '^/tmp/mfagw-bench\.[A-Za-z0-9]*$' "$OUT/hold.$n.log" | tail -n1 || true)"
        [ -n "$work" ] && [ -s "$work/cookie-gateway.txt" ] && break
        kill -0 "$hold_pid" 2>/dev/null || die "bench/run.sh HOLD=1 stopped: $(tail -5 "$OUT/hold.$n.log")"
        sleep 0.2
    done
    [ -n "$work" ] || die "bench/run.sh HOLD=1 did not come up: $(tail -5 "$OUT/hold.$n.log")"
    gw_pid="$(grep -o 'pid [0-9]*' "$OUT/hold.$n.log" | head -n1 | awk '{ print $2 }')"
    cookie="$(cat "$work/cookie-gateway.txt")"
    ticks0="$(awk '{ print $14 + $15 }' "/proc/$gw_pid/stat")"
    if [ "$PROTO" = h2 ]; then
        h2load -t"$THREADS" -c"$CONNS" -m"$H2_STREAMS" -D "$LOAD" -H ":authority: $HOST" -H "$cookie" "https://127.0.0.1:$P_GATEWAY/" >"$OUT/load.$n.txt" 2>&1 &
    else
        wrk -t"$THREADS" -c"$CONNS" -d"${LOAD}s" -H "Host: $HOST" -H "$cookie" "https://127.0.0.1:$P_GATEWAY/" >"$OUT/load.$n.txt" 2>&1 &
    fi
    wrk_pid=$!
    sleep 2
    log "$n worker(s): perf record -p $gw_pid for ${SECONDS_PERF}s"
    perf record -q -e cpu-clock -F "$FREQ" --call-graph dwarf,16384 -p "$gw_pid" -o "$OUT/perf.$n.data" -- sleep "$SECONDS_PERF" 2>"$OUT/perf-record.$n.log" || true
    wait "$wrk_pid" || true
    ticks1="$(awk '{ print $14 + $15 }' "/proc/$gw_pid/stat")"
    # wrk: "N requests in …"; h2load: "requests: N total, N started, N done, N succeeded, …".
    requests="$(awk '/requests in/ { print $1 } /^requests:/ { gsub(",", ""); print $8 }' "$OUT/load.$n.txt")"
    rps="$(awk '/Requests\/sec/ { print $2 } /^finished in/ { gsub(",", ""); printf "%.0f", $4 }' "$OUT/load.$n.txt")"
    # CPU per request over the whole wrk run (profiling overhead included: perf's own cost
    # falls on the gateway's threads while they are sampled).
    us="$(awk -v t=$((ticks1 - ticks0)) -v n="${requests:-0}" -v hz="$(getconf CLK_TCK)" 'BEGIN { if (n > 0) printf "%.1f", t / hz / n * 1e6; else print 0 }')"
    log "$n worker(s): $rps req/s under perf, ${us} µs CPU per request"
    perf script -i "$OUT/perf.$n.data" -F comm,tid,ip,sym,dso --no-inline 2>/dev/null >"$OUT/perf-script.$n.txt" || true
    {
        echo "## $n worker thread(s), $PROTO: $rps req/s, ${us} µs CPU per request (under perf)"
        echo
        "$here/perf_categories.py" --us-per-request "$us" --threads --alloc <"$OUT/perf-script.$n.txt"
        echo
        echo "Top 40 functions by own time (perf report --no-children):"
        echo
        echo '```'
        perf report -i "$OUT/perf.$n.data" --no-children --sort sym --stdio -g none --percent-limit 0.4 2>/dev/null | grep -v '^#' | awk 'NF' | head -n 40
        echo '```'
        echo
    } >"$OUT/report.$n.md"
    cat "$OUT/report.$n.md"
    rm -f "$OUT/perf-script.$n.txt"
    stop_hold
done
log "reports in $OUT"
