"""Port checks for the local stack: is a TCP port free on an address, and free ports for a sandbox stack."""

from __future__ import annotations

import socket
from collections.abc import Iterable

from deploy.errors import PortInUseError


def port_is_free(host: str, port: int) -> bool:
    """True when a server could bind `host:port` now.

    SO_REUSEADDR as the servers themselves set it: a port held only by TIME_WAIT
    connections counts as free, one with a listener or another bound socket does not.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def check_ports_free(wanted: Iterable[tuple[str, str, int]]) -> None:
    """Raise PortInUseError for the first (service, host, port) whose port is taken."""
    for service, host, port in wanted:
        if not port_is_free(host, port):
            raise PortInUseError(host, port, service)


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """`count` distinct ports the OS reports free now (all held open together, then released)."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()
