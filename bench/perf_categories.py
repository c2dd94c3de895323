#!/usr/bin/env python3
"""bench/perf_categories.py — where a proxy's CPU time goes, by kind of work, from `perf script`.

    perf record -e cpu-clock -F 999 --call-graph dwarf,16384 -p PID -o perf.data -- sleep 5
    perf script -i perf.data -F comm,tid,ip,sym,dso --no-inline | bench/perf_categories.py [--us-per-request US]

Each sample is charged to one category: its stack is read from the innermost frame outwards and
the first frame that names a category decides. Allocator and memcpy frames are skipped (their
time is charged to whoever called them); cryptographic primitives (ring) are charged to the
session check when a session/auth frame is further out, else to TLS. Samples in the kernel are
split by the system call they are in (network I/O, epoll, futex = threads waking each other).
With --us-per-request (CPU µs per request, e.g. bench/run.sh's CPU ms per 1,000 requests), each
category also gets its µs per request. --threads prints the share per thread name as well.
"""

import argparse
import collections
import re
import sys

# (category, pattern) — checked in this order on each frame, innermost frame first.
CATEGORIES = [
    ("session check (cookie open, policy)", r"mfa_gateway::(session|auth|policy)::"),
    ("routing", r"mfa_gateway::routing::"),
    ("logging and metrics", r"tracing_appender|tracing_subscriber|tracing_core|mfa_gateway::observe::|mfa_gateway::init_logging|\btracing::"),
    ("TLS (rustls, ring)", r"rustls|tokio_rustls|\bring::|ring_core_|_aesni_|gcm_|aes_hw|ChaCha20|chacha20|sha256_block|sha512_block|ecp_nistz"),
    ("HTTP/1 parsing and writing (hyper h1, httparse)", r"hyper::proto::h1|httparse"),
    ("HTTP/2 (h2)", r"\bh2::|hyper::proto::h2"),
    ("upstream client and pool (hyper-util legacy client)", r"hyper_util::client|mfa_gateway::proxy::pool"),
    ("header rewriting", r"mfa_gateway::proxy::headers|http::header::"),
    ("gateway listener and pipeline (other)", r"mfa_gateway::"),
    ("hyper glue (service, body, io traits)", r"\bhyper::|hyper_util::"),
    ("tokio I/O (mio, registration)", r"tokio::io|tokio::net|\bmio::"),
    ("scheduler and synchronisation (tokio runtime, locks, wake-ups)", r"tokio::runtime|tokio::sync|parking_lot|std::sync|std::thread|crossbeam|futex"),
]
COMPILED = [(name, re.compile(pat)) for name, pat in CATEGORIES]
# Frames that do not say whose work it is: charged to the caller.
PASS_THROUGH = re.compile(
    r"^(_?mi_|mi_|malloc|free|realloc|calloc|cfree|__libc_|__memcpy|__memmove|__memset|memcpy|memmove|memset|"
    r"__rust_(alloc|dealloc|realloc)|alloc::alloc|alloc::raw_vec|<alloc::|core::ptr::drop_in_place|"
    r"bytes::|core::|alloc::|std::io::|\[unknown\])"
)
CRYPTO = re.compile(r"\bring::|ring_core_|_aesni_|gcm_|aes_hw|ChaCha20|chacha20|sha256_block|sha512_block|ecp_nistz")
SESSION = re.compile(r"mfa_gateway::(session|auth|policy)::")
ALLOC = re.compile(r"^(_?mi_|mi_|malloc|free|realloc|calloc|cfree|__rust_(alloc|dealloc|realloc))")
SYSCALLS = [
    ("kernel: futex (threads waking and parking each other)", r"futex"),
    ("kernel: epoll_wait (a thread with nothing to run parks in it)", r"epoll_wait|do_epoll"),
    ("kernel: sched_yield", r"sched_yield"),
    ("kernel: epoll_ctl and other epoll", r"epoll"),
    ("kernel: TCP send/receive over loopback (writev, recvfrom, softirq)", r"sys_(sendto|recvfrom|sendmsg|recvmsg|write|read|writev|readv)\b|do_writev|do_readv|ksys_read|ksys_write|tcp_|sock_|net_rx|__sys_recvfrom|__sys_sendto"),
    ("kernel: preempted on the way back to user space (context switches; CPU contention)", r"exit_to_user_mode_loop"),
    ("kernel: other (accept, close, timers, page faults)", r"."),
]


def samples(lines):
    """Yields (thread name, [frames innermost first]) from `perf script` output."""
    head, frames = None, []
    for line in lines:
        line = line.rstrip("\n")
        if not line.strip():
            if head is not None:
                yield head, frames
            head, frames = None, []
        elif not line.startswith((" ", "\t")):
            head = line.split()[0]
            frames = []
        else:
            parts = line.strip().split(None, 1)
            sym = parts[1] if len(parts) > 1 else "[unknown]"
            sym = re.sub(r"\+0x[0-9a-f]+$", "", sym)
            frames.append(sym)
    if head is not None:
        yield head, frames


def classify(frames):
    kernel = [f for f in frames if f.endswith("([kernel.kallsyms])")]
    if frames and frames[0].endswith("([kernel.kallsyms])"):
        # The log writer's own write(2)s are logging, whatever the kernel does for them.
        if any("tracing_appender" in f for f in frames):
            return "logging and metrics"
        text = " ".join(kernel)
        for name, pat in SYSCALLS:
            if re.search(pat, text):
                return name
    user = [re.sub(r"\s*\([^)]*\)$", "", f) for f in frames if not f.endswith("([kernel.kallsyms])")]
    for i, sym in enumerate(user):
        if PASS_THROUGH.match(sym):
            continue
        if CRYPTO.search(sym):
            if any(SESSION.search(s) for s in user[i:]):
                return CATEGORIES[0][0]
            return "TLS (rustls, ring)"
        for name, pat in COMPILED:
            if pat.search(sym):
                return name
    leaf = user[0] if user else "?"
    if ALLOC.match(leaf):
        return "allocator (no caller known)"
    return "other (libc, std, unknown)"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--us-per-request", type=float, default=None)
    ap.add_argument("--threads", action="store_true")
    ap.add_argument("--alloc", action="store_true", help="also the share of samples inside the allocator")
    args = ap.parse_args()
    total = 0
    by_cat = collections.Counter()
    by_thread = collections.Counter()
    in_alloc = 0
    for thread, frames in samples(sys.stdin):
        if not frames:
            continue
        total += 1
        by_cat[classify(frames)] += 1
        by_thread[thread] += 1
        user = [re.sub(r"\s*\([^)]*\)$", "", f) for f in frames if not f.endswith("([kernel.kallsyms])")]
        if any(ALLOC.match(s) for s in user[:3]):
            in_alloc += 1
    if total == 0:
        sys.exit("no samples")
    us = args.us_per_request
    print(f"{total} samples")
    print()
    print("| Where | Share |" + (" µs / request |" if us else ""))
    print("|---|---:|" + ("---:|" if us else ""))
    for name, n in by_cat.most_common():
        share = n / total
        row = f"| {name} | {share * 100:.1f} % |"
        if us:
            row += f" {share * us:.1f} |"
        print(row)
    if args.alloc:
        print()
        print(f"Samples with the allocator (mimalloc/malloc/free) in the innermost three frames: {in_alloc / total * 100:.1f} %")
    if args.threads:
        print()
        print("| Thread | Share |")
        print("|---|---:|")
        for name, n in by_thread.most_common():
            print(f"| {name} | {n / total * 100:.1f} % |")


if __name__ == "__main__":
    main()
