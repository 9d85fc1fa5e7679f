"""Errors of the local stack launcher; the CLI prints their message and exits non-zero."""

from __future__ import annotations


class StackError(RuntimeError):
    """The local stack could not be brought up, inspected or taken down."""


class PortInUseError(StackError):
    def __init__(self, host: str, port: int, service: str):
        super().__init__(f"port {port} ({service}) is already in use on {host}")
        self.host = host
        self.port = port
        self.service = service


class ServiceUnhealthyError(StackError):
    def __init__(self, service: str, reason: str, log_tail: str = ""):
        message = f"{service} is not healthy: {reason}"
        if log_tail:
            message += f"\n--- last lines of the {service} log ---\n{log_tail}"
        super().__init__(message)
        self.service = service
        self.reason = reason
        self.log_tail = log_tail
