"""`python -m bench.hung_servers`: two hung "agents" on 127.0.0.1, for the benchmarks.

- never-answers: accepts every connection, reads and discards what comes, never writes a
  byte; it closes its side only once the client has closed its own.
- full-backlog: listens with a backlog of 1 and never accepts. This process fills the
  accept queue itself with a few connections it keeps open, so every later SYN is dropped
  by the kernel and a client's connect() hangs (SYN retransmits) until its own timeout.

It prints one JSON line when ready (`{"never_answers": PORT, "full_backlog": PORT, ...}`),
then runs until its stdin closes (the parent exited or closed the pipe), SIGTERM/SIGINT, or
`--max-seconds`, whichever comes first, so it never outlives the benchmark.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import signal
import socket
import sys
import threading

HOST = "127.0.0.1"
FILL_ATTEMPTS = 8
FILL_CONNECT_TIMEOUT_S = 0.3


async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Swallow the request and never answer; close once the client has gone."""
    try:
        while await reader.read(65536):
            pass
    except OSError:
        pass
    finally:
        writer.close()


def full_backlog_listener() -> tuple[socket.socket, list[socket.socket]]:
    """A listener with backlog 1 whose accept queue this process fills; (listener, fillers)."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind((HOST, 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    fillers: list[socket.socket] = []
    for _ in range(FILL_ATTEMPTS):
        filler = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        filler.settimeout(FILL_CONNECT_TIMEOUT_S)
        try:
            filler.connect((HOST, port))
        except OSError:  # timed out: the queue is full, SYNs are dropped from now on
            filler.close()
            return listener, fillers
        fillers.append(filler)
    raise RuntimeError(f"accept queue of port {port} never filled ({FILL_ATTEMPTS} connects)")


def raise_fd_limit() -> None:
    """Hold as many connections as the hard limit allows."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def watch_stdin(loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> None:
    """Set `stop` once stdin reaches EOF (the parent is gone or done)."""

    def read_until_eof() -> None:
        # os.read, not sys.stdin: a buffered reader's lock held by a daemon thread makes the
        # interpreter abort at exit.
        while os.read(0, 4096):
            pass
        loop.call_soon_threadsafe(stop.set)

    threading.Thread(target=read_until_eof, name="stdin-lifeline", daemon=True).start()


async def serve(max_seconds: float) -> None:
    """Run both servers until told to stop."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    watch_stdin(loop, stop)
    server = await asyncio.start_server(hold, HOST, 0, backlog=1024)
    listener, fillers = full_backlog_listener()
    ready = {
        "never_answers": server.sockets[0].getsockname()[1],
        "full_backlog": listener.getsockname()[1],
        "full_backlog_fillers": len(fillers),
    }
    print(json.dumps(ready), flush=True)
    try:
        await asyncio.wait_for(stop.wait(), max_seconds)
    except TimeoutError:
        pass
    finally:
        server.close()
        for sock in (listener, *fillers):
            sock.close()


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments and serve."""
    parser = argparse.ArgumentParser(prog="python -m bench.hung_servers", description=__doc__)
    parser.add_argument("--max-seconds", type=float, default=3600.0)
    args = parser.parse_args(argv)
    raise_fd_limit()
    asyncio.run(serve(args.max_seconds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
