"""supervisord as the local stack's process supervisor: start it as a daemon, talk to it over its socket.

Reads/writes the files of `deploy.conf.Layout` (config, pidfile, control socket, logs).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
import xmlrpc.client
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from supervisor.xmlrpc import SupervisorTransport

from deploy.conf import Layout
from deploy.errors import StackError

log = logging.getLogger(__name__)

RPC_TIMEOUT = 10.0


@dataclass(frozen=True)
class ProcessInfo:
    name: str
    state: str  # supervisor's statename: STARTING, RUNNING, BACKOFF, FATAL, EXITED, STOPPED, ...
    pid: int  # 0 when not running
    description: str

    @classmethod
    def from_rpc(cls, info: dict) -> ProcessInfo:
        detail = info.get("spawnerr") or info.get("description", "")
        return cls(info["name"], info["statename"], int(info.get("pid") or 0), detail)


class Supervisor:
    """The supervisord daemon of one data dir."""

    def __init__(self, layout: Layout):
        self.layout = layout

    def _rpc(self):
        transport = SupervisorTransport(None, None, serverurl=f"unix://{self.layout.socket_path}")
        # ServerProxy needs an http URL; the transport sends it over the unix socket.
        return xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport).supervisor

    def alive(self) -> bool:
        if not self.layout.socket_path.exists():
            return False
        try:
            return self._rpc().getState()["statename"] == "RUNNING"
        except (OSError, xmlrpc.client.Error):
            return False

    def start(self, timeout: float = 15.0) -> None:
        """Launch supervisord with the layout's config; return once its socket answers."""
        out = self.layout.logs_dir / "supervisord.out"
        with out.open("wb") as sink:
            code = subprocess.call(
                [sys.executable, "-m", "supervisor.supervisord", "-c", str(self.layout.conf_path)],
                stdin=subprocess.DEVNULL,
                stdout=sink,
                stderr=subprocess.STDOUT,
            )
        if code != 0:
            raise StackError(f"supervisord failed to start (exit {code}): {out.read_text().strip()}")
        deadline = time.monotonic() + timeout
        while not self.alive():
            if time.monotonic() > deadline:
                raise StackError(
                    f"supervisord did not answer on {self.layout.socket_path} within {timeout:.0f}s; "
                    f"see {self.layout.supervisord_log}"
                )
            time.sleep(0.1)

    def pid(self) -> int:
        return int(self._rpc().getPID())

    def processes(self) -> dict[str, ProcessInfo]:
        return {i["name"]: ProcessInfo.from_rpc(i) for i in self._rpc().getAllProcessInfo()}

    def start_process(self, name: str) -> None:
        self._rpc().startProcess(name, False)

    def stop_process(self, name: str) -> None:
        """Stop one program and wait for it (SIGTERM, SIGKILL after its stopwaitsecs)."""
        self._rpc().stopProcess(name, True)

    def stop_all(self) -> None:
        """Stop every program (reverse priority; SIGTERM, SIGKILL after each one's stopwaitsecs)."""
        self._rpc().stopAllProcesses(True)

    def shutdown(self) -> None:
        self._rpc().shutdown()


def pidfile_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def pid_alive(pid: int) -> bool:
    """True while `pid` runs; a zombie (exited, not yet reaped by its parent) counts as gone."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc: trust kill(0)
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def wait_gone(pids: Iterable[int], timeout: float) -> list[int]:
    """Wait until none of `pids` runs; return those still running at the timeout."""
    remaining = [p for p in pids if p > 0]
    deadline = time.monotonic() + timeout
    while True:
        remaining = [p for p in remaining if pid_alive(p)]
        if not remaining or time.monotonic() > deadline:
            return remaining
        time.sleep(0.1)


def kill(pids: Iterable[int], sig: signal.Signals = signal.SIGKILL) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
            log.warning("signalled a leftover process", extra={"signal": sig.name, "pid": pid})
        except ProcessLookupError:
            pass
