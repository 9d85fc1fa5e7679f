"""Bring the local stack up, report on it, take it down: the logic behind `flywheel up/status/down`.

Reads:  settings (ports, URLs, data dir) and the files of `deploy.conf.Layout`.
Writes: <data_dir>/supervisord.conf, logs under <data_dir>/logs/, the supervisord pidfile and
        socket; creates every Kafka topic of `schemas.topics` once the broker answers.
Starts: supervisord as a daemon, which runs the managed services of `deploy.services`.
"""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from deploy.conf import Layout, render_conf
from deploy.errors import ServiceUnhealthyError, StackError
from deploy.ports import check_ports_free
from deploy.services import BIND_HOST, Service, services
from deploy.supervision import Supervisor, kill, pid_alive, pidfile_pid, wait_gone
from schemas.settings import CommonSettings
from schemas.topics import create_topics
from schemas.topology import SINK_GROUP

log = logging.getLogger(__name__)

FAILED_STATES = frozenset({"FATAL", "EXITED", "STOPPED", "UNKNOWN"})
LOG_TAIL_LINES = 20


@dataclass(frozen=True)
class ServiceStatus:
    name: str
    pid: int | None
    state: str
    address: str
    healthy: bool
    detail: str


@dataclass
class UpResult:
    statuses: list[ServiceStatus]
    topics_created: list[str] = field(default_factory=list)
    already_running: bool = False


@dataclass(frozen=True)
class DownResult:
    was_running: bool
    stopped_pids: list[int]
    killed_pids: list[int]
    unread: dict[str, int] = field(default_factory=dict)  # consumer group -> events left unread (-1: unknown)


Progress = Callable[[list[ServiceStatus]], None]


def layout_for(settings: CommonSettings) -> Layout:
    return Layout(settings.data_dir.resolve())


def log_tail(path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"(no log at {path})"


def up(
    settings: CommonSettings,
    infra_only: bool = False,
    timeout: float = 60.0,
    progress: Progress | None = None,
) -> UpResult:
    """Start what is not running, wait until every service is healthy, create the topics.

    Idempotent: with the stack already up it only waits for health and ensures the topics.
    On a failure it takes down what it started and raises with the unhealthy service's log tail.
    """
    layout = layout_for(settings)
    wanted = [s for s in services(settings) if not (infra_only and s.after_infra)]
    supervisor = Supervisor(layout)
    already_running = supervisor.alive()
    if not already_running:
        check_ports_free((s.name, BIND_HOST, s.port) for s in wanted if s.managed and s.port)
        # The data dir holds the dev API key, prompts in the store and the spool, logs: its owner's alone.
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        settings.data_dir.chmod(0o700)
        for directory in (layout.logs_dir, *(d for s in wanted for d in s.dirs)):
            directory.mkdir(parents=True, exist_ok=True)
        layout.conf_path.write_text(render_conf(layout, wanted))
        log.info("starting supervisord", extra={"conf": str(layout.conf_path)})
        supervisor.start()
    try:
        infra = [s for s in wanted if not s.after_infra]
        _wait_healthy(supervisor, layout, infra, timeout, progress)
        created = create_topics(settings.kafka_bootstrap)
        processes = supervisor.processes()
        for app in (s for s in wanted if s.after_infra and s.managed):
            if app.name in processes and processes[app.name].state not in ("RUNNING", "STARTING"):
                supervisor.start_process(app.name)
        statuses = _wait_healthy(supervisor, layout, wanted, timeout, progress)
    except Exception:
        if not already_running:
            down(settings)
        raise
    return UpResult(statuses, created, already_running)


def _wait_healthy(
    supervisor: Supervisor, layout: Layout, wanted: list[Service], timeout: float, progress: Progress | None
) -> list[ServiceStatus]:
    deadline = time.monotonic() + timeout
    healthy: dict[str, ServiceStatus] = {}
    while True:
        processes = supervisor.processes()
        statuses = []
        for service in wanted:
            if service.name in healthy:
                statuses.append(healthy[service.name])
                continue
            info = processes.get(service.name) if service.managed else None
            if service.managed and info is None:
                raise StackError(f"{service.name} is not in the running supervisord config; run `flywheel down` first")
            if info is not None and info.state in FAILED_STATES:
                raise ServiceUnhealthyError(
                    service.name,
                    f"process {info.state} ({info.description})",
                    log_tail(layout.log_path(service.name)),
                )
            status = _status_of(service, info, check=info is None or info.state == "RUNNING")
            if status.healthy:
                healthy[service.name] = status
            statuses.append(status)
        if progress:
            progress(statuses)
        if len(healthy) == len(wanted):
            return statuses
        if time.monotonic() > deadline:
            sick = next(s for s in statuses if not s.healthy)
            tail = log_tail(layout.log_path(sick.name)) if sick.pid is not None else ""
            raise ServiceUnhealthyError(sick.name, f"not healthy after {timeout:.0f}s: {sick.detail}", tail)
        time.sleep(0.3)


def _status_of(service: Service, info, check: bool) -> ServiceStatus:
    pid = info.pid if info is not None else None
    state = info.state if info is not None else "EXTERNAL"
    if not check:
        return ServiceStatus(service.name, pid, state, service.address, False, info.description if info else "")
    health = service.check()
    return ServiceStatus(service.name, pid, state, service.address, health.ok, health.detail)


def status(settings: CommonSettings) -> list[ServiceStatus]:
    """One row per service; managed ones are checked only while supervisord runs them.

    While a stack runs, its programs are those supervisord was started with (an `up --infra-only`
    stack has no workers to report); with none running, every service shows as not running.
    """
    supervisor = Supervisor(layout_for(settings))
    alive = supervisor.alive()
    processes = supervisor.processes() if alive else {}
    rows = []
    for service in services(settings):
        if not service.managed:
            rows.append(_status_of(service, None, check=True))
            continue
        info = processes.get(service.name)
        if info is None and alive:
            continue  # not part of the running stack (e.g. `up --infra-only`)
        if info is None:
            rows.append(ServiceStatus(service.name, None, "NOT RUNNING", service.address, False, "not started"))
        else:
            rows.append(_status_of(service, info, check=info.state == "RUNNING"))
    return rows


# Stopped first: what brings new events in. Then the consumers read what is left (deploy/drain.py).
INTAKE = ("gateway", "controller", "retrain")
# The streams hold events in open metric windows (up to the largest window) and feedback waiting for its answer:
# they get this long, then stop; the sink, which stores every event, gets the rest of the drain timeout.
STREAMS_DRAIN_S = 15.0


def _drain(settings: CommonSettings, supervisor: Supervisor, timeout: float) -> dict[str, int]:
    """The embedded broker's log dies with it: stop the intake, let the sink and the streams catch up."""
    from deploy.drain import drain

    running = {name for name, p in supervisor.processes().items() if p.pid}
    if "kafka" not in running:  # an external broker keeps its log, or none is left to read from
        return {}
    for name in INTAKE:
        if name in running:
            supervisor.stop_process(name)
    deadline = time.monotonic() + timeout
    left = drain(settings.kafka_bootstrap, running & {"store", "streams"}, min(timeout, STREAMS_DRAIN_S))
    if "streams" in running:  # then its last windows and pairs reach the sink
        supervisor.stop_process("streams")
    left = {group: n for group, n in left.items() if group != SINK_GROUP}
    left.update(drain(settings.kafka_bootstrap, running & {"store"}, max(1.0, deadline - time.monotonic())))
    if left:
        log.info("events left unread at down", extra={"unread": left})
    return left


def down(settings: CommonSettings, timeout: float = 30.0, drain_timeout: float = 60.0) -> DownResult:
    """Stop every program and supervisord; wait for every pid to go, SIGKILL leftovers. Idempotent.

    With the embedded broker, its consumers first read what is left in its log (up to `drain_timeout` s; 0: no
    drain), since the log is in memory."""
    layout = layout_for(settings)
    supervisor = Supervisor(layout)
    pids: list[int] = []
    unread: dict[str, int] = {}
    was_running = supervisor.alive()
    if was_running:
        pids = [p.pid for p in supervisor.processes().values() if p.pid] + [supervisor.pid()]
        if drain_timeout > 0:
            try:
                unread = _drain(settings, supervisor, drain_timeout)
            except Exception as exc:  # stopping must go on; what the sink had stored is unknown
                log.warning("drain failed", extra={"error": repr(exc)})
                unread = {SINK_GROUP: -1}
        try:
            supervisor.stop_all()
            supervisor.shutdown()
        except Exception as exc:  # a dying supervisord may drop the connection mid-call
            log.warning("supervisord stop request failed", extra={"error": repr(exc)})
    else:
        stale = pidfile_pid(layout.pidfile)
        if stale and pid_alive(stale) and _is_supervisord(stale):
            was_running = True
            pids = [stale]
            kill(pids, signal.SIGTERM)  # supervisord stops its programs on SIGTERM
    killed = wait_gone(pids, timeout)
    if killed:
        kill(killed)
        survivors = wait_gone(killed, 5.0)
        if survivors:
            raise StackError(f"processes still running after SIGKILL: {survivors}")
    for path in (layout.socket_path, layout.pidfile):
        path.unlink(missing_ok=True)
    return DownResult(was_running, pids, killed, unread)


def _is_supervisord(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"supervisord" in f.read()
    except OSError:
        return False
