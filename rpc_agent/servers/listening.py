"""The servers' listening socket, and the one-line error when its port can't be had."""

from __future__ import annotations

import socket

LISTEN_BACKLOG = 2048


class ListenError(OSError):
    """The server can't listen on its address; the message names host and port."""

    @classmethod
    def of(cls, host: str, port: int, cause: OSError) -> ListenError:
        """The error for `cause`, raised when binding `host`:`port`."""
        error = cls(f"cannot listen on {host}:{port}: {cause.strerror or cause}")
        error.errno = cause.errno
        return error


def listening_socket(host: str, port: int) -> socket.socket:
    """A socket bound to `host`:`port` (0: any free port) and listening; `ListenError` if not."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on such sockets, and without it each
    # answer after the first on a connection waited ~40 ms for the client's delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(LISTEN_BACKLOG)
    except OSError as error:
        sock.close()
        raise ListenError.of(host, port, error) from None
    sock.set_inheritable(True)
    return sock
