#!/usr/bin/env python3
"""bench/idle_conns.py — hold many idle keep-alive TLS connections open against a proxy.

Used by bench/memory.sh. Opens --conns TLS connections to --connect (HOST:PORT), at most
--concurrency handshakes at a time; on each one sends a single HTTP/1.1 keep-alive GET for
--path with Host/SNI --host, reads the whole answer and checks that it is a 200 with the
announced body; then leaves the connection open and idle (nothing more is read or written).

--steps 1000,10000 pauses at each count: it prints "READY <count>" on stdout (one line,
flushed) and waits for SIGUSR1 before opening more. After the last step it prints
"READY <conns>" and holds every connection until SIGTERM/SIGINT or --hold seconds. On SIGUSR2
it prints "OPEN <n>": how many of its connections the server has not closed (an EOF or error
is noticed only for a closed socket; nothing is sent).

Any failure (connect, handshake, status other than 200, short body) prints "FAIL <reason>"
on stdout and exits 1: a half-opened set of connections would measure nothing.
Standard library only (Python >= 3.8).
"""

import argparse
import asyncio
import signal
import ssl
import sys


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--connect", required=True, help="HOST:PORT to connect to, e.g. 127.0.0.1:28445")
    p.add_argument("--host", default="mail.contoso.test", help="SNI and Host header")
    p.add_argument("--path", default="/page")
    p.add_argument("--cafile", required=True, help="CA certificate (PEM) the server must chain to")
    p.add_argument("--conns", type=int, default=10000)
    p.add_argument("--concurrency", type=int, default=200, help="handshakes in flight at once")
    p.add_argument("--steps", default="", help="comma-separated counts to pause at (the last is --conns)")
    p.add_argument("--hold", type=float, default=0, help="seconds to hold after the last step (0: until killed)")
    return p.parse_args()


def say(line):
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


class Failure(Exception):
    pass


async def open_one(host, port, context, server_name, request, path):
    reader, writer = await asyncio.open_connection(
        host, port, ssl=context, server_hostname=server_name, ssl_handshake_timeout=60
    )
    try:
        writer.write(request)
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 60)
        lines = head.decode("latin-1").split("\r\n")
        status = lines[0].split(" ", 2)
        if len(status) < 2 or status[1] != "200":
            raise Failure(f"GET {path}: {lines[0]!r}")
        length = None
        chunked = False
        for line in lines[1:]:
            name, _, value = line.partition(":")
            name = name.strip().lower()
            if name == "content-length":
                length = int(value.strip())
            elif name == "transfer-encoding" and "chunked" in value.lower():
                chunked = True
            elif name == "connection" and "close" in value.lower():
                raise Failure(f"GET {path}: the server answered Connection: close")
        if length is not None:
            await asyncio.wait_for(reader.readexactly(length), 60)
        elif chunked:
            while True:
                size_line = await asyncio.wait_for(reader.readuntil(b"\r\n"), 60)
                size = int(size_line.split(b";")[0].strip(), 16)
                await asyncio.wait_for(reader.readexactly(size + 2), 60)
                if size == 0:
                    break
        else:
            raise Failure(f"GET {path}: no Content-Length and not chunked: the body would end at close")
    except BaseException:
        writer.close()
        raise
    # Keep the socket small on our side; the server's side is what is measured.
    return reader, writer


async def main():
    args = parse_args()
    host, _, port = args.connect.rpartition(":")
    port = int(port)
    steps = sorted({int(s) for s in args.steps.split(",") if s.strip()} | {args.conns})
    steps = [s for s in steps if 0 < s <= args.conns]

    context = ssl.create_default_context(cafile=args.cafile)
    context.set_alpn_protocols(["http/1.1"])  # both proxies also speak h2; compare HTTP/1.1
    request = (
        f"GET {args.path} HTTP/1.1\r\nHost: {args.host}\r\nUser-Agent: bench-idle-conns\r\n"
        "Accept: */*\r\n\r\n"
    ).encode()

    loop = asyncio.get_running_loop()
    go = asyncio.Event()
    stop = asyncio.Event()
    conns = []

    def report_open():
        n = 0
        for reader, writer in conns:
            transport = writer.transport
            if not reader.at_eof() and reader.exception() is None and not transport.is_closing():
                n += 1
        say(f"OPEN {n}")

    loop.add_signal_handler(signal.SIGUSR1, go.set)
    loop.add_signal_handler(signal.SIGUSR2, report_open)
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)

    semaphore = asyncio.Semaphore(args.concurrency)

    async def guarded():
        async with semaphore:
            return await open_one(host, port, context, args.host, request, args.path)

    opened = 0
    for step in steps:
        tasks = [asyncio.create_task(guarded()) for _ in range(step - opened)]
        results = await asyncio.gather(*tasks, return_exceptions=True)
        failures = [r for r in results if isinstance(r, BaseException)]
        for r in results:
            if not isinstance(r, BaseException):
                conns.append(r)
        if failures:
            kinds = {}
            for f in failures:
                key = f"{type(f).__name__}: {f}"
                kinds[key] = kinds.get(key, 0) + 1
            summary = "; ".join(f"{n}× {k}" for k, n in sorted(kinds.items(), key=lambda kv: -kv[1])[:3])
            say(f"FAIL {len(failures)} of {step - opened} connections: {summary}")
            return 1
        opened = step
        say(f"READY {opened}")
        if step != steps[-1]:
            go.clear()
            waiter = asyncio.create_task(go.wait())
            stopper = asyncio.create_task(stop.wait())
            await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            stopper.cancel()
            if stop.is_set():
                return 0

    if args.hold > 0:
        try:
            await asyncio.wait_for(stop.wait(), args.hold)
        except asyncio.TimeoutError:
            pass
    else:
        await stop.wait()
    for _, writer in conns:
        writer.transport.abort()
    return 0


if __name__ == "__main__":
    try:
        sys.exit(asyncio.run(main()))
    except KeyboardInterrupt:
        sys.exit(130)
