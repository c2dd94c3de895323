# bench/lib.sh — what bench/run.sh and bench/memory.sh share: the temporary directory and the
# processes to stop with it, waiting for a port, nginx's common configuration, and reading a
# server's CPU time and memory from /proc. Sourced after the script defines die() and log().

# new_workdir NAME: a new temporary directory in $work (readable by the servers' unprivileged
# workers: Apache's www-data, nginx's nobody), and the trap that stops every process listed
# in $pids and removes the directory at exit, also on error or Ctrl-C (KEEP=1 keeps it).
new_workdir() {
    work="$(mktemp -d "/tmp/$1.XXXXXX")"
    chmod 755 "$work"
    pids=()
    trap cleanup EXIT
    trap 'exit 130' INT TERM
}

cleanup() {
    local pid
    for pid in "${pids[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    sleep 0.5
    for pid in "${pids[@]}"; do
        kill -KILL "$pid" 2>/dev/null || true
    done
    if [ "${KEEP:-0}" = 1 ]; then
        log "kept $work"
    else
        rm -rf "$work"
    fi
}

# Waits until a TCP port answers (curl exit 0 or any HTTP status), at most 20 s.
wait_port() {
    local url="$1" i
    for i in $(seq 1 200); do
        if curl -sk -o /dev/null --max-time 1 "$url"; then return 0; fi
        sleep 0.1
    done
    die "nothing answers at $url (see the logs in $work; KEEP=1 keeps them)"
}

# The top of an nginx configuration: NAME [WORKER_CONNECTIONS [NOFILE [WORKER_PROCESSES]]]
# (worker processes: "auto", one per CPU, when not given or empty).
nginx_common() {
    cat <<CONF
daemon off;
master_process on;
worker_processes ${4:-auto};
${3:+worker_rlimit_nofile $3;}
pid $work/$1.pid;
error_log $work/$1.error.log warn;
events { worker_connections ${2:-16384}; }
CONF
}

# PIDs of a server: the process and its children (nginx/apache workers).
server_pids() { echo "$1"; pgrep -P "$1" 2>/dev/null || true; }

# Sum of one /proc/PID/status field (in kB) over the server's processes, in KiB.
status_kib() { # PID FIELD
    local total=0 pid kib
    for pid in $(server_pids "$1"); do
        kib="$(awk -v f="$2:" '$1 == f { print $2 }' "/proc/$pid/status" 2>/dev/null || echo 0)"
        total=$((total + ${kib:-0}))
    done
    echo "$total"
}
rss_kib() { status_kib "$1" VmRSS; }
peak_rss_kib() { status_kib "$1" VmHWM; }

# Resets the peak RSS (VmHWM) of a server's processes to their current RSS (Linux >= 4.0), so
# that each measurement reports its own peak, not the peak of an earlier one.
reset_peak_rss() {
    local pid
    for pid in $(server_pids "$1"); do
        echo 5 >"/proc/$pid/clear_refs" 2>/dev/null || die "cannot reset VmHWM of $pid (/proc/$pid/clear_refs)"
    done
}

# utime+stime (+ cutime+cstime: children that exited) of a server, in ticks.
cpu_ticks() {
    local total=0 pid stat
    for pid in $(server_pids "$1"); do
        stat="$(cat "/proc/$pid/stat" 2>/dev/null)" || continue
        stat="${stat##*) }" # fields after "(comm) "; utime is field 14 = 12th here
        set -- $stat
        total=$((total + ${12} + ${13} + ${14} + ${15}))
    done
    echo "$total"
}

# Busy ticks of the whole machine (all CPUs, everything but idle and iowait), from /proc/stat.
machine_busy_ticks() {
    awk '$1 == "cpu" { print $2 + $3 + $4 + $7 + $8 + $9; exit }' /proc/stat
}

# Stops one server started in the background (SIGTERM, then waits for it) and forgets its PID.
stop_server() { # PID
    local pid="$1" p keep=()
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    for p in "${pids[@]}"; do [ "$p" = "$pid" ] || keep+=("$p"); done
    pids=("${keep[@]}")
}
