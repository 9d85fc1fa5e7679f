"""A throwaway Tansu broker for the benchmarks: free port, memory storage, waited for until it listens."""

from __future__ import annotations

import socket
import subprocess
import time

from deploy.ports import free_ports
from deploy.services import tansu_command


def start_tansu(timeout: float = 20.0) -> tuple[subprocess.Popen, str]:
    """Start a Tansu broker; return the process and its bootstrap address."""
    (port,) = free_ports(1)
    proc = subprocess.Popen(tansu_command("127.0.0.1", port), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"tansu exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, f"127.0.0.1:{port}"
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"tansu did not start listening within {timeout:g} s")
