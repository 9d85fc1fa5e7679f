"""Where the local stack keeps its files, and the supervisord.conf that runs it (pure rendering).

Layout under <data_dir>: supervisord.conf, supervisord.pid, logs/<service>.log,
logs/supervisord.log, and the control socket supervisor.sock, unless the data dir's
path is too long for an AF_UNIX socket (108 bytes, and supervisord binds "<path>.<pid>"
first): then /tmp/flywheel-<hash of the data dir>.sock, derived from the data dir alone
so that `status` and `down` find the same socket.
"""

from __future__ import annotations

import hashlib
import shlex
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from deploy.services import Service

SOCKET_PATH_MAX = 90  # 108-byte sun_path, less the ".<pid>" suffix supervisord binds first, less margin
LOG_MAX_BYTES = "10MB"
LOG_BACKUPS = 2


@dataclass(frozen=True)
class Layout:
    data_dir: Path  # absolute

    @property
    def logs_dir(self) -> Path:
        return self.data_dir / "logs"

    @property
    def conf_path(self) -> Path:
        return self.data_dir / "supervisord.conf"

    @property
    def pidfile(self) -> Path:
        return self.data_dir / "supervisord.pid"

    @property
    def supervisord_log(self) -> Path:
        return self.logs_dir / "supervisord.log"

    @property
    def socket_path(self) -> Path:
        return socket_path_for(self.data_dir)

    def log_path(self, service: str) -> Path:
        return self.logs_dir / f"{service}.log"


def socket_path_for(data_dir: Path) -> Path:
    preferred = data_dir / "supervisor.sock"
    if len(str(preferred).encode()) <= SOCKET_PATH_MAX:
        return preferred
    digest = hashlib.sha1(str(data_dir).encode()).hexdigest()[:12]
    return Path("/tmp") / f"flywheel-{digest}.sock"


def _value(text: str) -> str:
    """A value safe in supervisord's ini: it expands %(name)s, so % is doubled."""
    return text.replace("%", "%%")


def _environment(env: dict[str, str]) -> str:
    items = []
    for key, value in env.items():
        quoted = value.replace("\\", "\\\\").replace('"', '\\"')
        items.append(f'{key}="{_value(quoted)}"')
    return ",".join(items)


def render_program(layout: Layout, service: Service) -> str:
    assert service.command is not None, f"{service.name} is external"
    lines = [
        f"[program:{service.name}]",
        f"command={_value(shlex.join(service.command))}",
        f"directory={_value(str(layout.data_dir))}",
        f"priority={service.priority}",
        f"autostart={'false' if service.after_infra else 'true'}",
        # Restart on a crash, not after a clean exit; three quick failures make it FATAL, which `up` reports.
        "autorestart=unexpected",
        "exitcodes=0",
        "startsecs=1",
        "startretries=3",
        "stopsignal=TERM",
        f"stopwaitsecs={service.stopwaitsecs}",
        # Signal the whole process group so helpers a program forks do not outlive it.
        "stopasgroup=true",
        "killasgroup=true",
        "redirect_stderr=true",
        f"stdout_logfile={_value(str(layout.log_path(service.name)))}",
        f"stdout_logfile_maxbytes={LOG_MAX_BYTES}",
        f"stdout_logfile_backups={LOG_BACKUPS}",
    ]
    if service.env:
        lines.append(f"environment={_environment(dict(service.env))}")
    return "\n".join(lines) + "\n"


def render_conf(layout: Layout, services: Iterable[Service]) -> str:
    """supervisord.conf for the managed services; supervisord runs as a daemon owned by nobody else."""
    socket = _value(str(layout.socket_path))
    head = f"""; Written by `flywheel up`; rewritten on every start. Do not edit.
[unix_http_server]
file={socket}
chmod=0700

[supervisord]
logfile={_value(str(layout.supervisord_log))}
logfile_maxbytes={LOG_MAX_BYTES}
logfile_backups={LOG_BACKUPS}
loglevel=info
pidfile={_value(str(layout.pidfile))}
childlogdir={_value(str(layout.logs_dir))}
directory={_value(str(layout.data_dir))}
identifier=flywheel
nodaemon=false
minfds=1024

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

[supervisorctl]
serverurl=unix://{socket}
"""
    programs = [render_program(layout, s) for s in services if s.managed]
    return "\n".join([head, *programs])
