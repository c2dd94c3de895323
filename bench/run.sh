#!/usr/bin/env bash
# bench/run.sh — side-by-side load comparison, one run, everything on 127.0.0.1.
#
#   bench/setup.sh            # once, as root: nginx, apache2, mod_auth_openidc, wrk, h2load
#   bench/run.sh              # prints a markdown table (and writes it to $OUT, default
#                             # bench/results/<date>.md)
#
# Environment (all optional):
#   DURATION=10   seconds of load per row          WARMUP=2   seconds of load before each row
#   THREADS=2     wrk/h2load threads               CONNS=64   connections
#   H2_STREAMS=10 concurrent streams per h2 conn   ROWS="..." subset of row ids (see below)
#   KEEP=1        keep the temporary directory (configs, logs) and print its path
#   OUT=FILE      where the markdown table is written as well
#   HOLD=1        start and sign in, then keep everything running (no rows) until Ctrl-C
#   GW_BIN=PATH   another mfa-gateway binary (default target/release/mfa-gateway; with
#                 SKIP_BUILD=1 nothing is built)
#   ROUNDS=1      run the rows (in order) this many times; the table shows each row's median
#   WORKERS="1 2" thread-count mode: every row at each of these thread counts, the servers
#                 restarted for each — nginx `worker_processes N`, the gateway `[server] workers
#                 = N`, Apache `StartServers`/`ServerLimit N` (N event-MPM processes of 64
#                 threads); default ROWS then "nginx nginx-h2 gw gw-h2", no half-load rows, and
#                 a scaling table (requests/s, CPU ms per 1,000 requests, gateway/nginx ratios
#                 per thread count). Unset: every server at its default (one per CPU).
#
# Rows (ids): direct, nginx, nginx-close, nginx-h2, apache, apache-close, gw, gw-h2, gw-close.
# Every server is started by this script with its own configuration in a temporary directory
# and stopped at the end (trap), whatever happens.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"

DURATION="${DURATION:-10}"
WARMUP="${WARMUP:-2}"
THREADS="${THREADS:-2}"
CONNS="${CONNS:-64}"
H2_STREAMS="${H2_STREAMS:-10}"
ROUNDS="${ROUNDS:-1}"
WORKERS="${WORKERS:-}"
for n in $WORKERS; do [[ "$n" =~ ^[1-9][0-9]*$ ]] || { echo "bench/run.sh: WORKERS: '$n' is not a thread count" >&2; exit 1; }; done
if [ -n "$WORKERS" ]; then
    ROWS="${ROWS:-nginx nginx-h2 gw gw-h2}"
    HALF_LOAD="${HALF_LOAD:-0}"
else
    ROWS="${ROWS:-direct nginx nginx-close nginx-h2 apache apache-close gw gw-h2 gw-close}"
fi
# The thread count the servers start with: the first of WORKERS, or "" (their defaults).
first_workers() { set -- $WORKERS; echo "${1:-}"; }
HOST=mail.contoso.test

# Loopback ports (fixed, so that logs and configs are readable; change here on a clash).
P_UPSTREAM=18080      # nginx: the 1 KB page (plain HTTP), the upstream of every proxy
P_NGINX=18443         # nginx proxy_pass over TLS
P_APACHE=18444        # Apache + mod_auth_openidc over TLS
P_GATEWAY=18445       # mfa-gateway over TLS
P_GATEWAY_ADMIN=19100 # its /readyz
P_PROVIDER=19400      # the test OpenID provider (plain HTTP on loopback)
P_STATUS=18081        # upstream nginx stub_status (request counter)

CLIENT_ID=bench-client
CLIENT_SECRET="bench-secret-$RANDOM$RANDOM"

die() { echo "bench/run.sh: $*" >&2; exit 1; }
log() { echo "[bench] $*" >&2; }

for tool in nginx wrk curl openssl; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool not found: run bench/setup.sh first (as root)"
done
[ -x /usr/sbin/apache2 ] || die "apache2 not found: run bench/setup.sh first"
[ -e /usr/lib/apache2/modules/mod_auth_openidc.so ] || die "mod_auth_openidc not found: run bench/setup.sh first"
have_h2load=0
command -v h2load >/dev/null 2>&1 && have_h2load=1

gw_bin="${GW_BIN:-$root/target/release/mfa-gateway}"
provider_bin="$root/target/release/test-provider"
if [ "${SKIP_BUILD:-0}" != 1 ]; then
    log "cargo build --release --bins"
    (cd "$root" && cargo build --release --bins --quiet) || die "cargo build failed"
fi
[ -x "$gw_bin" ] && [ -x "$provider_bin" ] || die "release binaries missing: cargo build --release --bins"

# shellcheck source=bench/lib.sh
. "$here/lib.sh"
new_workdir mfagw-bench

# ---------------------------------------------------------------------------------------------
# PKI and the 1 KB page

"$here/pki.sh" "$work/pki" >/dev/null
CA="$work/pki/ca.pem"
CERT="$work/pki/server.pem"
KEY="$work/pki/server.key"
chmod 644 "$KEY" # Apache reads it as root before dropping privileges; tmp dir is private anyway.
mkdir -p "$work/www"
head -c 1024 /dev/zero | tr '\0' 'x' >"$work/www/index.html"
cp "$work/www/index.html" "$work/www/page"

# ---------------------------------------------------------------------------------------------
# nginx: the upstream (row 1 measures it directly) and the proxy (row 2), two instances.

{
    nginx_common upstream 16384
    cat <<EOF
http {
    access_log off;
    client_body_temp_path $work/upstream.tmp;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
    server {
        listen 127.0.0.1:$P_UPSTREAM reuseport backlog=4096;
        root $work/www;
        location / { default_type text/html; try_files /page =404; }
    }
    server {
        listen 127.0.0.1:$P_STATUS;
        location / { stub_status; }
    }
}
EOF
} >"$work/upstream.conf"

# The nginx proxy with N worker processes ("" = auto), (re)started.
start_nginx_proxy() { # N
[ -z "${PID_NGINX:-}" ] || stop_server "$PID_NGINX"
{
    nginx_common proxy 16384 "" "$1"
    cat <<EOF
http {
    access_log off;
    client_body_temp_path $work/proxy.tmp;
    proxy_temp_path $work/proxy.ptmp;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
    upstream page { server 127.0.0.1:$P_UPSTREAM; keepalive 128; }
    server {
        listen 127.0.0.1:$P_NGINX ssl reuseport backlog=4096;
        http2 on;
        server_name $HOST;
        ssl_certificate $CERT;
        ssl_certificate_key $KEY;
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_session_cache off;
        ssl_session_tickets off;
        location / {
            proxy_pass http://page;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host \$host;
            proxy_set_header X-Forwarded-For \$remote_addr;
            proxy_set_header X-Forwarded-Proto https;
        }
    }
}
EOF
} >"$work/proxy.conf"
# nginx 1.22 (Debian 12) has no "http2 on;": use "listen ... ssl http2" there.
if ! nginx -t -q -c "$work/proxy.conf" -e "$work/proxy.error.log" 2>/dev/null; then
    sed -i -e 's/ ssl reuseport/ ssl http2 reuseport/' -e '/^ *http2 on;$/d' "$work/proxy.conf"
fi

nginx -c "$work/proxy.conf" -e "$work/proxy.error.log" &
PID_NGINX=$!
pids+=("$PID_NGINX")
wait_port "https://127.0.0.1:$P_NGINX/"
}

nginx -c "$work/upstream.conf" -e "$work/upstream.error.log" &
PID_UPSTREAM=$!
pids+=("$PID_UPSTREAM")
wait_port "http://127.0.0.1:$P_UPSTREAM/"
PID_NGINX=""
start_nginx_proxy "$(first_workers)"

# ---------------------------------------------------------------------------------------------
# The test OpenID provider

"$provider_bin" --listen "127.0.0.1:$P_PROVIDER" --client-id "$CLIENT_ID" \
    --client-secret "$CLIENT_SECRET" >"$work/provider.out" 2>"$work/provider.log" &
PID_PROVIDER=$!
pids+=("$PID_PROVIDER")
for _ in $(seq 1 200); do [ -s "$work/provider.out" ] && break; sleep 0.1; done
ISSUER="$(head -n1 "$work/provider.out")"
[ -n "$ISSUER" ] || die "the test provider did not start: $(cat "$work/provider.log")"
DISCOVERY="${ISSUER}.well-known/openid-configuration"
curl -sf -o /dev/null "$DISCOVERY" || die "no discovery document at $DISCOVERY"
log "provider: $ISSUER"

# ---------------------------------------------------------------------------------------------
# Apache 2.4 + mod_auth_openidc

mods=/usr/lib/apache2/modules
mkdir -p "$work/apache"
APACHE_PASSPHRASE="$(openssl rand -hex 32)"
# Apache with N event-MPM processes ("" = 2, Debian's StartServers), (re)started.
PID_APACHE=""
start_apache() { # N
[ -z "$PID_APACHE" ] || stop_server "$PID_APACHE"
local procs="${1:-2}"
cat >"$work/apache.conf" <<EOF
ServerRoot /etc/apache2
PidFile $work/apache/apache.pid
DefaultRuntimeDir $work/apache
Mutex file:$work/apache default
ServerName $HOST
User www-data
Group www-data
ErrorLog $work/apache.error.log
LogLevel warn
Listen 127.0.0.1:$P_APACHE

LoadModule mpm_event_module $mods/mod_mpm_event.so
LoadModule authz_core_module $mods/mod_authz_core.so
LoadModule authn_core_module $mods/mod_authn_core.so
LoadModule authz_user_module $mods/mod_authz_user.so
LoadModule socache_shmcb_module $mods/mod_socache_shmcb.so
LoadModule ssl_module $mods/mod_ssl.so
LoadModule proxy_module $mods/mod_proxy.so
LoadModule proxy_http_module $mods/mod_proxy_http.so
LoadModule auth_openidc_module $mods/mod_auth_openidc.so

# Debian's defaults for mpm_event, with fixed processes (no child recycling during a row).
StartServers $procs
ServerLimit $(( ${1:-0} > 0 ? procs : 4 ))
ThreadsPerChild 64
MaxRequestWorkers $(( ${1:-0} > 0 ? procs * 64 : 256 ))
MinSpareThreads 64
MaxSpareThreads 256
MaxConnectionsPerChild 0
KeepAlive On
MaxKeepAliveRequests 0
KeepAliveTimeout 75

SSLEngine on
SSLCertificateFile $CERT
SSLCertificateKeyFile $KEY
SSLProtocol -all +TLSv1.2 +TLSv1.3
SSLSessionCache none
SSLSessionTickets off

OIDCProviderMetadataURL $DISCOVERY
OIDCClientID $CLIENT_ID
OIDCClientSecret $CLIENT_SECRET
OIDCRedirectURI https://$HOST:$P_APACHE/redirect_uri
OIDCCryptoPassphrase $APACHE_PASSPHRASE
OIDCResponseMode form_post
OIDCPKCEMethod S256
OIDCScope "openid profile email"
OIDCSessionInactivityTimeout 3600
OIDCSessionMaxDuration 36000

<Location />
    AuthType openid-connect
    Require claim amr:mfa
    ProxyPass http://127.0.0.1:$P_UPSTREAM/ keepalive=On
    ProxyPassReverse http://127.0.0.1:$P_UPSTREAM/
</Location>
EOF
/usr/sbin/apache2 -f "$work/apache.conf" -DFOREGROUND >>"$work/apache.out" 2>&1 &
PID_APACHE=$!
pids+=("$PID_APACHE")
wait_port "https://127.0.0.1:$P_APACHE/"
}
start_apache "$(first_workers)"

# ---------------------------------------------------------------------------------------------
# mfa-gateway

openssl rand -base64 32 >"$work/session.key"
printf '%s\n' "$CLIENT_SECRET" >"$work/client-secret"
chmod 600 "$work/session.key" "$work/client-secret"
# The gateway with `[server] workers = N` ("" = its default, one per CPU), (re)started.
PID_GATEWAY=""
start_gateway() { # N
[ -z "$PID_GATEWAY" ] || stop_server "$PID_GATEWAY"
cat >"$work/gateway.toml" <<EOF
[server]
https_listen = "127.0.0.1:$P_GATEWAY"
admin_listen = "127.0.0.1:$P_GATEWAY_ADMIN"
shutdown_grace = "0s"
${1:+workers = $1}

[[tls.certificates]]
cert = "$CERT"
key = "$KEY"

[upstreams.page]
servers = ["http://127.0.0.1:$P_UPSTREAM"]

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
access = "mfa"
EOF
"$gw_bin" check-config --config "$work/gateway.toml" >/dev/null || die "gateway configuration refused"
# The gateway writes its access log (one line per request, to gateway.log) as in production;
# nginx's and Apache's access logs are off.
MFA_GATEWAY_LOG="${MFA_GATEWAY_LOG:-info}" "$gw_bin" run --config "$work/gateway.toml" >>"$work/gateway.log" 2>&1 &
PID_GATEWAY=$!
pids+=("$PID_GATEWAY")

for _ in $(seq 1 200); do
    curl -sf -o /dev/null "http://127.0.0.1:$P_GATEWAY_ADMIN/readyz" && break
    sleep 0.1
done
curl -sf -o /dev/null "http://127.0.0.1:$P_GATEWAY_ADMIN/readyz" || die "gateway not ready: $(tail -5 "$work/gateway.log")"
}
start_gateway "$(first_workers)"

# ---------------------------------------------------------------------------------------------
# Scripted sign-in: a browser with curl and a cookie jar.
#   GET page (navigation) -> 302 to the provider's authorize URL
#   POST the authorize parameters + user=alice&mfa=yes&decision=approve (the sign-in form)
#   -> the provider's form_post page; POST its hidden fields to its action (the proxy's callback)
#   -> 302 back to the page, with the session cookie. Prints "Cookie: ..." for wrk/h2load.

html_unescape() { sed -e 's/&lt;/</g' -e 's/&gt;/>/g' -e 's/&quot;/"/g' -e "s/&#39;/'/g" -e 's/&amp;/\&/g'; }

sign_in() { # $1 = port, $2 = name (for files), $3 = the session cookie's name
    local port="$1" name="$2" cookie_name="$3" base="https://$HOST:$1"
    local jar="$work/$name.jar" curl_=(curl -s --cacert "$CA" --resolve "$HOST:$port:127.0.0.1" -c "$work/$name.jar" -b "$work/$name.jar")
    : >"$jar"
    local location
    location="$("${curl_[@]}" -o /dev/null -w '%{redirect_url}' \
        -H 'Accept: text/html' -H 'Sec-Fetch-Mode: navigate' -H 'Sec-Fetch-Dest: document' \
        "$base/")"
    [[ "$location" == "${ISSUER}"* ]] || die "$name: the page did not redirect to the provider (got '$location')"
    local authorize="${location%%\?*}" query="${location#*\?}"
    "${curl_[@]}" -o "$work/$name.formpost.html" \
        -H 'Content-Type: application/x-www-form-urlencoded' \
        --data-raw "$query&user=alice&mfa=yes&decision=approve" "$authorize"
    local action
    action="$(grep -o 'action="[^"]*"' "$work/$name.formpost.html" | head -n1 | sed 's/^action="//; s/"$//' | html_unescape)"
    [ -n "$action" ] || die "$name: the provider did not answer with a form_post page: $(head -c 300 "$work/$name.formpost.html")"
    local fields=()
    while IFS=$'\t' read -r field value; do
        fields+=(--data-urlencode "$field=$value")
    done < <(grep -o '<input type="hidden" name="[^"]*" value="[^"]*"' "$work/$name.formpost.html" |
        sed 's/^<input type="hidden" name="\([^"]*\)" value="\([^"]*\)"$/\1\t\2/' | html_unescape)
    local status
    status="$("${curl_[@]}" -o "$work/$name.callback.html" -w '%{http_code}' \
        -H "Origin: $ISSUER" "${fields[@]}" "$action")"
    [[ "$status" == 30[23] ]] || die "$name: the callback answered $status: $(head -c 300 "$work/$name.callback.html")"
    # Only the session cookie (mod_auth_openidc leaves its ~650-byte state cookie in the jar
    # as a browser-session cookie; a browser would keep sending it, but it is not the session).
    local cookies
    cookies="$(awk -F'\t' -v want="$cookie_name" 'NF == 7 && $6 == want { print $6 "=" $7; exit }' "$jar")"
    [ -n "$cookies" ] || die "$name: no $cookie_name cookie after sign-in"
    # Proof: the page itself, 200 and 1024 bytes, with only that header.
    local check
    check="$(curl -s --cacert "$CA" --resolve "$HOST:$port:127.0.0.1" -o /dev/null -w '%{http_code} %{size_download}' \
        -H "Cookie: $cookies" "$base/")"
    [ "$check" = "200 1024" ] || die "$name: signed-in request got '$check' instead of '200 1024'"
    # And without it, no page.
    check="$(curl -s --cacert "$CA" --resolve "$HOST:$port:127.0.0.1" -o /dev/null -w '%{http_code}' "$base/")"
    [ "$check" != 200 ] || die "$name: the page is served without a session"
    printf 'Cookie: %s' "$cookies"
}

COOKIE_GW="$(sign_in "$P_GATEWAY" gateway __Host-mfagw)"
log "gateway sign-in ok (${#COOKIE_GW} bytes of Cookie header)"
COOKIE_APACHE=""
if [[ " $ROWS " == *" apache"* ]]; then
    COOKIE_APACHE="$(sign_in "$P_APACHE" apache mod_auth_openidc_session)" || die "Apache sign-in failed: see $work/apache.error.log"
    log "apache sign-in ok (${#COOKIE_APACHE} bytes of Cookie header)"
fi

# HOLD=1: keep every server running, signed in, for profiling or other measurements by hand;
# the cookies are in $work/cookie-*.txt. Ctrl-C (or SIGTERM) stops everything.
if [ "${HOLD:-0}" = 1 ]; then
    printf '%s' "$COOKIE_GW" >"$work/cookie-gateway.txt"
    printf '%s' "$COOKIE_APACHE" >"$work/cookie-apache.txt"
    log "holding: $work (gateway https://$HOST:$P_GATEWAY pid $PID_GATEWAY, nginx proxy :$P_NGINX pid $PID_NGINX, upstream :$P_UPSTREAM)"
    echo "$work" >&2
    while :; do sleep 3600 & wait $!; done
fi

# ---------------------------------------------------------------------------------------------
# Measurement

TICKS="$(getconf CLK_TCK)"
LOAD_BEFORE="$(cut -d' ' -f1-3 /proc/loadavg)"
# The busiest processes other than this benchmark's, for the record (the machine may be shared).
OTHERS_BEFORE="busiest other processes (top, %CPU): $(top -bn2 -d1 -w 200 | awk '/^top -/ { f++; h = 0 } f == 2 && h && $9 + 0 >= 5 { printf "%s%s %s%%", (n++ ? ", " : ""), $12, $9 } /^ *PID / { h = 1 }')"
[ -n "${OTHERS_BEFORE##*: }" ] || OTHERS_BEFORE="no other process above 5 % CPU"

upstream_count() { curl -s "http://127.0.0.1:$P_STATUS/" | awk 'NR == 3 { print $3 }'; }

to_ms() { # "1.23ms" / "456.00us" / "1.01s" -> milliseconds
    awk -v v="$1" 'BEGIN {
        if (v ~ /us$/) { sub(/us$/, "", v); printf "%.3f", v / 1000 }
        else if (v ~ /ms$/) { sub(/ms$/, "", v); printf "%.3f", v }
        else if (v ~ /s$/) { sub(/s$/, "", v); printf "%.3f", v * 1000 }
        else printf "?" }'
}

declare -A RPS P50 P99 CPU UCPU OTHER RSS FWD ERR LABEL
# Every round's figures of a row, space-separated; the table shows their median.
declare -A RPS_ALL P50_ALL P99_ALL CPU_ALL UCPU_ALL OTHER_ALL RSS_ALL FWD_ALL ERR_ALL
NCPU="$(nproc)"
results=()

# CPU ticks of a run: the server's, the upstream nginx's, the whole machine's busy ticks, and
# the wall-clock time, read before (cpu_mark) and after (cpu_since) the load.
cpu_mark() { # PID
    MARK=("$(cpu_ticks "$1")" "$(cpu_ticks "$PID_UPSTREAM")" "$(machine_busy_ticks)" "$(date +%s.%N)")
}
cpu_since() { # PID -> "SERVER_TICKS UPSTREAM_TICKS OTHER_PERCENT"
    local srv ups busy t1
    srv="$(cpu_ticks "$1")"; ups="$(cpu_ticks "$PID_UPSTREAM")"; busy="$(machine_busy_ticks)"; t1="$(date +%s.%N)"
    srv=$((srv - MARK[0])); ups=$((ups - MARK[1])); busy=$((busy - MARK[2]))
    [ "$1" = "$PID_UPSTREAM" ] && ups=0
    # Everything else the machine did meanwhile (the load generator included), in % of all CPUs.
    local other
    other="$(awk -v b="$busy" -v s="$srv" -v u="$ups" -v t0="${MARK[3]}" -v t1="$t1" -v hz="$TICKS" -v c="$NCPU" \
        'BEGIN { w = (t1 - t0) * hz * c; if (w > 0) printf "%.0f", (b - s - u) / w * 100; else print "?" }')"
    echo "$srv $ups $other"
}

per_1k() { # TICKS REQUESTS -> CPU milliseconds per 1,000 requests
    awk -v t="$1" -v n="$2" -v hz="$TICKS" 'BEGIN { if (n > 0) printf "%.1f", t / hz * 1000 / n * 1000; else print "?" }'
}

# record ID LABEL RPS P50_MS P99_MS REQUESTS CPU_TICKS RSS_KIB UPSTREAM_DELTA ERRORS UPSTREAM_TICKS OTHER_PERCENT
record() {
    local id="$1"
    [ -n "${LABEL[$id]:-}" ] || results+=("$id")
    LABEL[$id]="$2"
    RPS_ALL[$id]+="$3 "; P50_ALL[$id]+="$4 "; P99_ALL[$id]+="$5 "
    CPU_ALL[$id]+="$(per_1k "$7" "$6") "
    UCPU_ALL[$id]+="$(per_1k "${11:-0}" "$6") "
    OTHER_ALL[$id]+="${12:-?} "
    RSS_ALL[$id]+="$(awk -v k="$8" 'BEGIN { printf "%.1f", k / 1024 }') "
    FWD_ALL[$id]+="$(awk -v u="$9" -v n="$6" 'BEGIN { if (n > 0) printf "%.3f", u / n; else print "?" }') "
    ERR_ALL[$id]+="${10} "
    summarize "$id"
}

median() { tr ' ' '\n' | awk 'NF' | sort -g | awk '{ v[NR] = $1 } END { if (NR) print v[int((NR + 1) / 2)]; else print "?" }'; }
largest() { tr ' ' '\n' | awk 'NF' | sort -g | tail -n1; }
total() { tr ' ' '\n' | awk 'NF { s += $1 } END { print s + 0 }'; }

# The figures of a row over its rounds: medians; peak RSS the largest, errors the sum.
summarize() {
    local id="$1"
    RPS[$id]="$(median <<<"${RPS_ALL[$id]}")"; P50[$id]="$(median <<<"${P50_ALL[$id]}")"
    P99[$id]="$(median <<<"${P99_ALL[$id]}")"; CPU[$id]="$(median <<<"${CPU_ALL[$id]}")"
    UCPU[$id]="$(median <<<"${UCPU_ALL[$id]}")"; OTHER[$id]="$(median <<<"${OTHER_ALL[$id]}")"
    RSS[$id]="$(largest <<<"${RSS_ALL[$id]}")"; FWD[$id]="$(median <<<"${FWD_ALL[$id]}")"
    ERR[$id]="$(total <<<"${ERR_ALL[$id]}")"
}

run_wrk() { # ID LABEL PID PORT SCHEME COOKIE CLOSE
    local id="$1" label="$2" pid="$3" port="$4" scheme="$5" cookie="$6" close="$7"
    local url="$scheme://127.0.0.1:$port/" hdrs=(-H "Host: $HOST")
    [ -n "$cookie" ] && hdrs+=(-H "$cookie")
    [ "$close" = 1 ] && hdrs+=(-H "Connection: close")
    local conns="$CONNS"
    log "$label: warm-up ${WARMUP}s"
    wrk -t"$THREADS" -c"$conns" -d"${WARMUP}s" "${hdrs[@]}" "$url" >/dev/null 2>&1 || true
    sleep 0.5
    local up0 up1 out cpu
    reset_peak_rss "$pid"
    up0="$(upstream_count)"; cpu_mark "$pid"
    log "$label: wrk -t$THREADS -c$conns -d${DURATION}s --latency"
    out="$(wrk -t"$THREADS" -c"$conns" -d"${DURATION}s" --latency "${hdrs[@]}" "$url" 2>&1)"
    cpu="$(cpu_since "$pid")"; up1="$(upstream_count)"
    printf '%s\n' "$out" >"$work/wrk.$id.txt"
    local rps p50 p99 n errors non2xx socket_errors
    rps="$(awk '/^Requests\/sec:/ { printf "%.0f", $2 }' <<<"$out")"
    p50="$(to_ms "$(awk '$1 == "50%" { print $2 }' <<<"$out")")"
    p99="$(to_ms "$(awk '$1 == "99%" { print $2 }' <<<"$out")")"
    n="$(awk '/requests in/ { print $1 }' <<<"$out")"
    non2xx="$(awk '/Non-2xx or 3xx responses:/ { print $5 }' <<<"$out")"
    socket_errors="$(awk '/Socket errors:/ { gsub(",", ""); print $4 + $6 + $8 + $10 }' <<<"$out")"
    errors=$(( ${non2xx:-0} + ${socket_errors:-0} ))
    local fwd=$(( up1 - up0 ))
    [[ "$id" == direct* ]] && fwd=$(( fwd - 1 )) # the stub_status request itself is not counted, but be exact
    local srv ups other; read -r srv ups other <<<"$cpu"
    record "$id" "$label" "${rps:-0}" "$p50" "$p99" "${n:-0}" "$srv" "$(peak_rss_kib "$pid")" "$fwd" "$errors" "$ups" "$other"
}

run_h2load() { # ID LABEL PID PORT COOKIE [SCHEME [extra h2load arguments...]]
    local id="$1" label="$2" pid="$3" port="$4" cookie="$5" scheme="${6:-https}"
    shift 5; [ $# -gt 0 ] && shift
    local extra=("$@")
    local url="$scheme://127.0.0.1:$port/" hdrs=(-H ":authority: $HOST" "${extra[@]}")
    [ -n "$cookie" ] && hdrs+=(-H "$cookie")
    log "$label: warm-up ${WARMUP}s"
    h2load -t"$THREADS" -c"$CONNS" -m"$H2_STREAMS" -D "$WARMUP" "${hdrs[@]}" "$url" >/dev/null 2>&1 || true
    sleep 0.5 # requests still in flight when the warm-up client stopped reach the upstream now
    log "$label: h2load -t$THREADS -c$CONNS -m$H2_STREAMS -D $DURATION ${extra[*]}"
    local up0 up1 out cpu
    reset_peak_rss "$pid"
    up0="$(upstream_count)"; cpu_mark "$pid"
    out="$(h2load -t"$THREADS" -c"$CONNS" -m"$H2_STREAMS" -D "$DURATION" \
        --log-file="$work/h2load.$id.log" "${hdrs[@]}" "$url" 2>&1)"
    cpu="$(cpu_since "$pid")"; up1="$(upstream_count)"
    printf '%s\n' "$out" >"$work/h2load.$id.txt"
    local rps p50 p99 errors
    rps="$(awk '/^finished in/ { gsub(",", ""); printf "%.0f", $4 }' <<<"$out")"
    # "requests: N total, N started, N done, N succeeded, N failed, N errored, N timeout"
    # "status codes: N 2xx, N 3xx, N 4xx, N 5xx": everything but 2xx is an error here.
    errors="$(awk '/^requests:/ { gsub(",", ""); e += $10 + $12 + $14 } /^status codes:/ { gsub(",", ""); e += $5 + $7 + $9 } END { print e + 0 }' <<<"$out")"
    # Latency percentiles from the per-request log (3rd column: microseconds), measured part only.
    read -r p50 p99 < <(awk -F'\t' '{ print $3 }' "$work/h2load.$id.log" | sort -n |
        awk '{ v[NR] = $1 } END { if (NR) printf "%.3f %.3f\n", v[int(NR * 0.50) + 1] / 1000, v[int(NR * 0.99) + 1] / 1000; else print "? ?" }')
    local n; n="$(awk '/^requests:/ { print $2 }' <<<"$out")"
    local srv ups other; read -r srv ups other <<<"$cpu"
    record "$id" "$label" "${rps:-0}" "$p50" "$p99" "${n:-0}" "$srv" "$(peak_rss_kib "$pid")" $((up1 - up0)) "$errors" "$ups" "$other"
}

# A browser stores the re-sealed session cookie the gateway sends (at most once a minute, for
# the idle timeout); wrk and h2load replay one fixed cookie, which after a minute would make the
# gateway re-seal on every request. So each gateway row signs in anew right before it starts,
# and its cookie is as fresh as a browser's for the row's warm-up and duration.
fresh_gateway_cookie() {
    COOKIE_GW="$(sign_in "$P_GATEWAY" gateway __Host-mfagw)" || die "gateway sign-in failed"
}

# The servers' current thread count ("" = their defaults): restarted when a row needs another.
CURRENT_WORKERS="$(first_workers)"
use_workers() { # N
    [ "$1" = "$CURRENT_WORKERS" ] && return 0
    log "restarting the servers with $1 thread(s)"
    start_nginx_proxy "$1"
    start_gateway "$1"
    if [[ " $ROWS " == *" apache"* ]]; then
        start_apache "$1"
        COOKIE_APACHE="$(sign_in "$P_APACHE" apache mod_auth_openidc_session)" || die "Apache sign-in failed: see $work/apache.error.log"
    fi
    CURRENT_WORKERS="$1"
}

for round in $(seq 1 "$ROUNDS"); do
[ "$ROUNDS" = 1 ] || log "round $round of $ROUNDS"
for workers in ${WORKERS:-default}; do
sfx="" lsfx=""
if [ "$workers" != default ]; then
    use_workers "$workers"
    sfx="@$workers"
    lsfx=", $workers thread$([ "$workers" = 1 ] || echo s)"
fi
for id in $ROWS; do
    case "$id" in
        gw*) fresh_gateway_cookie ;;
    esac
    case "$id" in
        direct) run_wrk "direct$sfx" "1. nginx, the 1 KB page directly (plain HTTP, ceiling)$lsfx" "$PID_UPSTREAM" "$P_UPSTREAM" http "" 0 ;;
        nginx) run_wrk "nginx$sfx" "2. nginx proxy_pass, TLS, keep-alive$lsfx" "$PID_NGINX" "$P_NGINX" https "" 0 ;;
        nginx-close) run_wrk "nginx-close$sfx" "2c. nginx proxy_pass, TLS, new connection per request$lsfx" "$PID_NGINX" "$P_NGINX" https "" 1 ;;
        nginx-h2)
            if [ "$have_h2load" = 1 ]; then run_h2load "nginx-h2$sfx" "2h. nginx proxy_pass, TLS, HTTP/2 (h2load)$lsfx" "$PID_NGINX" "$P_NGINX" ""
            else log "h2load missing (Debian package nghttp2-client): no HTTP/2 rows"; fi ;;
        apache) run_wrk "apache$sfx" "3. Apache + mod_auth_openidc, session, TLS, keep-alive$lsfx" "$PID_APACHE" "$P_APACHE" https "$COOKIE_APACHE" 0 ;;
        apache-close) run_wrk "apache-close$sfx" "3c. Apache + mod_auth_openidc, session, new TLS connection per request$lsfx" "$PID_APACHE" "$P_APACHE" https "$COOKIE_APACHE" 1 ;;
        gw) run_wrk "gw$sfx" "4. mfa-gateway, session, TLS, keep-alive$lsfx" "$PID_GATEWAY" "$P_GATEWAY" https "$COOKIE_GW" 0 ;;
        gw-h2)
            if [ "$have_h2load" = 1 ]; then run_h2load "gw-h2$sfx" "4h. mfa-gateway, session, TLS, HTTP/2 (h2load)$lsfx" "$PID_GATEWAY" "$P_GATEWAY" "$COOKIE_GW"
            else log "h2load missing (Debian package nghttp2-client): no HTTP/2 rows"; fi ;;
        gw-close) run_wrk "gw-close$sfx" "4c. mfa-gateway, session, new TLS connection per request$lsfx" "$PID_GATEWAY" "$P_GATEWAY" https "$COOKIE_GW" 1 ;;
        *) die "unknown row '$id'" ;;
    esac
done
done
done

# Half load: the direct page and the gateway, HTTP/1.1 keep-alive, both at half the gateway's
# maximum (row 4), paced by h2load --rps (wrk cannot pace). Their p99 difference is the latency
# the gateway adds (target: ≤ 1 ms).
if [ "$have_h2load" = 1 ] && [ -n "${RPS[gw]:-}" ] && [ "${RPS[gw]}" -gt 0 ] && [ "${HALF_LOAD:-1}" = 1 ]; then
    half=$(( RPS[gw] / 2 ))
    per_client=$(awk -v r="$half" -v c="$CONNS" 'BEGIN { v = r / c; printf "%.0f", (v < 1 ? 1 : v) }')
    H2_STREAMS_SAVED="$H2_STREAMS"; H2_STREAMS=1
    run_h2load half-direct "1½. the page directly at ½ of row 4's maximum (~${half}/s, HTTP/1.1)" "$PID_UPSTREAM" "$P_UPSTREAM" "" http --h1 --rps="$per_client"
    if [[ " $ROWS " == *" nginx "* ]]; then
        run_h2load half-nginx "2½. nginx proxy_pass, TLS, at ½ of row 4's maximum (~${half}/s, HTTP/1.1)" "$PID_NGINX" "$P_NGINX" "" https --h1 --rps="$per_client"
    fi
    fresh_gateway_cookie
    run_h2load half-gw "4½. mfa-gateway, session, TLS, at ½ of row 4's maximum (~${half}/s, HTTP/1.1)" "$PID_GATEWAY" "$P_GATEWAY" "$COOKIE_GW" https --h1 --rps="$per_client"
    H2_STREAMS="$H2_STREAMS_SAVED"
fi

# ---------------------------------------------------------------------------------------------
# The table

ratio() { # a b -> a/b with 2 decimals, or n/a
    if [ -n "${1:-}" ] && [ -n "${2:-}" ] && [ "${2:-0}" != 0 ]; then awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f×", a / b }'; else echo "n/a"; fi
}

{
    echo "| Row | Requests/s | p50 ms | p99 ms | CPU ms / 1,000 req | Upstream nginx CPU ms / 1,000 req | Rest of machine CPU % | Peak RSS MiB | Upstream hits / request | Errors |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    for id in "${results[@]}"; do
        echo "| ${LABEL[$id]} | ${RPS[$id]} | ${P50[$id]} | ${P99[$id]} | ${CPU[$id]} | ${UCPU[$id]} | ${OTHER[$id]} | ${RSS[$id]} | ${FWD[$id]} | ${ERR[$id]} |"
    done
    echo
    if [ -n "$WORKERS" ]; then
        # Scaling: each protocol's gateway and nginx rows side by side per thread count, and how
        # CPU per request changes from the first thread count (target: within 10 %).
        first="$(first_workers)"
        echo "Thread scaling (CPU ms per 1,000 requests of the proxy under test; in brackets the change against $first thread$([ "$first" = 1 ] || echo s)):"
        echo
        echo "| Protocol | Threads | nginx req/s | gateway req/s | req/s gateway / nginx | nginx CPU ms / 1k req | gateway CPU ms / 1k req | CPU gateway / nginx |"
        echo "|---|---:|---:|---:|---:|---:|---:|---:|"
        change() { # VALUE BASE -> "VALUE (+x %)"
            if [ -n "${2:-}" ] && [ "${2:-?}" != "?" ] && [ "$1" != "?" ]; then
                awk -v v="$1" -v b="$2" -v same="${3:-0}" 'BEGIN { if (b > 0 && !same) printf "%s (%+.0f %%)", v, (v / b - 1) * 100; else print v }'
            else echo "${1:-n/a}"; fi
        }
        for proto in "HTTP/1.1:nginx:gw" "HTTP/2:nginx-h2:gw-h2"; do
            IFS=: read -r pname nrow grow <<<"$proto"
            [ -n "${RPS[$nrow@$first]:-}${RPS[$grow@$first]:-}" ] || continue
            for n in $WORKERS; do
                echo "| $pname | $n | ${RPS[$nrow@$n]:-n/a} | ${RPS[$grow@$n]:-n/a} | $(ratio "${RPS[$grow@$n]:-}" "${RPS[$nrow@$n]:-}") | $(change "${CPU[$nrow@$n]:-}" "${CPU[$nrow@$first]:-}" "$([ "$n" = "$first" ] && echo 1)") | $(change "${CPU[$grow@$n]:-}" "${CPU[$grow@$first]:-}" "$([ "$n" = "$first" ] && echo 1)") | $(ratio "${CPU[$grow@$n]:-}" "${CPU[$nrow@$n]:-}") |"
            done
        done
        echo
        echo "Threads: nginx worker_processes N; the gateway [server] workers = N (tokio worker threads); Apache (rows 3) StartServers = ServerLimit = N event-MPM processes of 64 threads. The upstream nginx: worker_processes auto."
        echo
    fi
    if [ -z "$WORKERS" ]; then
        echo "Ratios of requests/s (target: row 4 ≥ 1.0× row 2 and ≥ 3× row 3):"
        echo
        echo "| Ratio | Value |"
        echo "|---|---:|"
        echo "| 4 / 2 (gateway / nginx proxy_pass, keep-alive) | $(ratio "${RPS[gw]:-}" "${RPS[nginx]:-}") |"
        if [ "$ROUNDS" -gt 1 ] && [ -n "${RPS_ALL[gw]:-}" ] && [ -n "${RPS_ALL[nginx]:-}" ]; then
            echo "| 4 / 2 in each round | $(paste -d' ' <(tr ' ' '\n' <<<"${RPS_ALL[gw]}" | awk 'NF') <(tr ' ' '\n' <<<"${RPS_ALL[nginx]}" | awk 'NF') | awk '{ printf "%s%.2f×", (NR > 1 ? ", " : ""), $1 / $2 }') |"
        fi
        echo "| 4 / 3 (gateway / Apache + mod_auth_openidc, keep-alive) | $(ratio "${RPS[gw]:-}" "${RPS[apache]:-}") |"
        echo "| 4h / 2h (HTTP/2) | $(ratio "${RPS[gw-h2]:-}" "${RPS[nginx-h2]:-}") |"
        echo "| 4c / 2c (new TLS connection per request) | $(ratio "${RPS[gw-close]:-}" "${RPS[nginx-close]:-}") |"
        echo "| 4c / 3c (new TLS connection per request) | $(ratio "${RPS[gw-close]:-}" "${RPS[apache-close]:-}") |"
        if [ -n "${P99[half-gw]:-}" ] && [ -n "${P99[half-direct]:-}" ]; then
            echo "| p99 added by the gateway over the direct page at ½ load, 4½ − 1½ (target ≤ 1 ms) | $(awk -v a="${P99[half-gw]}" -v b="${P99[half-direct]}" 'BEGIN { printf "%.3f ms", a - b }') |"
        fi
        if [ -n "${P99[half-nginx]:-}" ] && [ -n "${P99[half-direct]:-}" ]; then
            echo "| p99 added by nginx proxy_pass over the direct page at ½ load, 2½ − 1½ (for comparison) | $(awk -v a="${P99[half-nginx]}" -v b="${P99[half-direct]}" 'BEGIN { printf "%.3f ms", a - b }') |"
        fi
    fi
    echo
    [ "$ROUNDS" = 1 ] || echo "Rounds: the rows ran $ROUNDS times, in order (1, 2, …, 4c${WORKERS:+, at each thread count}, then again); each figure is the median of the rounds (peak RSS: the largest, errors: the sum).${WORKERS:- Half-load rows: once, after the rounds, at half of row 4's median.}"
    echo "Load: wrk -t$THREADS -c$CONNS -d${DURATION}s --latency (after ${WARMUP}s warm-up); HTTP/2: h2load -t$THREADS -c$CONNS -m$H2_STREAMS -D $DURATION (after ${WARMUP}s warm-up); ½ load: h2load --h1 -m1 --rps per connection."
    echo "Latency: wrk --latency percentiles; for h2load rows, percentiles of its per-request log."
    echo "CPU (user + system time from /proc/PID/stat, in ms per 1,000 requests answered) and peak RSS are those of the server under test only (for rows 2–4 not the upstream nginx, whose CPU is the next column); all processes (master and workers). Rest of machine: busy time of all CPUs (/proc/stat) minus the server's and the upstream's, in % of all CPUs during the row — the load generator and whatever else ran. Errors: non-2xx/3xx answers and socket errors."
    echo "Before the run: load average $LOAD_BEFORE; $OTHERS_BEFORE"
    echo "Machine: $(nproc) CPUs, $(uname -srm); $(nginx -v 2>&1 | sed 's/^nginx version: //'), $(/usr/sbin/apache2 -v | awk -F': ' '/version/ { print $2 }'), mod_auth_openidc $(dpkg-query -W -f '${Version}' libapache2-mod-auth-openidc 2>/dev/null || echo '?'), $(wrk -v 2>&1 | head -n1 | awk '{ print $1, $2 }'), $("$gw_bin" --version 2>/dev/null || echo mfa-gateway)."
} >"$work/table.md"

cat "$work/table.md"
out="${OUT:-$here/results/$(date -u +%Y%m%dT%H%M%SZ).md}"
mkdir -p "$(dirname "$out")"
cp "$work/table.md" "$out"
log "table written to $out"
