"""`flywheel serve SERVICE`: run one service in the foreground, as a container or a pod runs it.

The process becomes the service's own (`python -m <module>`, the command `flywheel up` supervises locally), so
signals reach it directly. Settings come from FLYWHEEL_* variables; each service's `/metrics` port is its
`FLYWHEEL_<SERVICE>_METRICS_PORT` (0: none).
"""

from __future__ import annotations

import os
import socket
import sys

import click

from deploy.services import SERVICE_MODULES


def hostname_index(hostname: str | None = None) -> int:
    """A StatefulSet pod's ordinal: `vllm-2` -> 2."""
    name = hostname or socket.gethostname()
    tail = name.rsplit("-", 1)[-1]
    if not tail.isdigit():
        raise click.UsageError(f"host name {name!r} does not end in -<number>")
    return int(tail)


def service_argv(service: str, index: int | None) -> list[str]:
    """The command line `flywheel serve` replaces itself with."""
    if (index is None) == (service == "worker"):
        raise click.UsageError("--index is for the worker, and the worker needs it")
    extra = ["--index", str(index)] if index is not None else []
    return [sys.executable, "-m", SERVICE_MODULES[service], *extra]


@click.command("serve")
@click.argument("service", type=click.Choice(sorted(SERVICE_MODULES)))
@click.option("--index", type=click.IntRange(min=0), default=None, help="vLLM worker index (port: base port + index)")
@click.option("--index-from-hostname", is_flag=True, help="the worker index is the host name's -N suffix (StatefulSet)")
def serve_command(service: str, index: int | None, index_from_hostname: bool) -> None:
    """Run SERVICE in the foreground: store, sink, worker, gateway, streams, retrain or controller."""
    if index_from_hostname:
        index = hostname_index()
    argv = service_argv(service, index)
    os.execv(argv[0], argv)
