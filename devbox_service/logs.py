"""Structured logs: one JSON object per line, and one line per HTTP request.

Only method, path (never the query string, which may carry tokens), status, duration and the
principal's credential id are logged for requests; no header or body ever is.
"""

from __future__ import annotations

import logging
import secrets
import sys
import time
from typing import Any

import msgspec
from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from devbox_service.auth.guards import principal_of_scope

request_log = logging.getLogger("devbox_service.requests")

_STANDARD_ATTRS = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "color_message"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update({k: v for k, v in record.__dict__.items() if k not in _STANDARD_ATTRS})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return msgspec.json.encode(entry, enc_hook=str).decode()


def configure_logging(level: str) -> None:
    # Facts the JSON lines never show, which logging would gather for every record (the
    # "Optimization" section of the logging docs): thread, process and the caller's frame.
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    logging._srcfile = None
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("uvicorn.access", "asyncssh"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def request_log_middleware(app: ASGIApp) -> ASGIApp:
    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await app(scope, receive, send)
            return
        method = scope["method"]
        started = time.perf_counter()
        status = 500
        request_id = _request_id(scope)

        async def record_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", request_id.encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await app(scope, receive, record_status)
        finally:
            principal = principal_of_scope(scope)
            seconds = time.perf_counter() - started
            request_log.info(
                "request",
                extra={
                    "request_id": request_id,
                    "method": method,
                    "path": scope["path"],
                    "status": status,
                    "duration_ms": round(seconds * 1000, 2),
                    "principal": principal.log_id if principal else None,
                },
            )
            services = getattr(getattr(scope.get("app"), "state", None), "services", None)
            if services is not None:
                route = scope.get("path_template") or "(unrouted)"
                services.requests.observe(method, str(route), status, seconds)

    return middleware


def _request_id(scope: Scope) -> str:
    """The caller's X-Request-Id when it is a sane token, else a new one."""
    for name, value in scope.get("headers", []):
        if name == b"x-request-id":
            given = value.decode("latin-1")
            if 0 < len(given) <= 64 and given.replace("-", "").replace("_", "").isalnum():
                return given
    return secrets.token_hex(8)
