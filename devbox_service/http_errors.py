"""The one table from domain errors to HTTP responses: `{"detail": "..."}` bodies."""

from __future__ import annotations

import logging
from typing import Any

from litestar import MediaType, Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.status_codes import (
    HTTP_400_BAD_REQUEST,
    HTTP_401_UNAUTHORIZED,
    HTTP_403_FORBIDDEN,
    HTTP_404_NOT_FOUND,
    HTTP_408_REQUEST_TIMEOUT,
    HTTP_409_CONFLICT,
    HTTP_413_REQUEST_ENTITY_TOO_LARGE,
    HTTP_422_UNPROCESSABLE_ENTITY,
    HTTP_429_TOO_MANY_REQUESTS,
    HTTP_500_INTERNAL_SERVER_ERROR,
    HTTP_501_NOT_IMPLEMENTED,
    HTTP_502_BAD_GATEWAY,
    HTTP_503_SERVICE_UNAVAILABLE,
)

from devbox_service import errors

log = logging.getLogger("devbox_service.errors")

STATUS_BY_ERROR: dict[type[Exception], int] = {
    errors.NotAuthenticated: HTTP_401_UNAUTHORIZED,
    errors.PermissionDenied: HTTP_403_FORBIDDEN,
    errors.NotFound: HTTP_404_NOT_FOUND,
    errors.InvalidInput: HTTP_400_BAD_REQUEST,
    errors.InvalidSpec: HTTP_422_UNPROCESSABLE_ENTITY,
    errors.Conflict: HTTP_409_CONFLICT,
    errors.PayloadTooLarge: HTTP_413_REQUEST_ENTITY_TOO_LARGE,
    errors.Timeout: HTTP_408_REQUEST_TIMEOUT,
    errors.LimitReached: HTTP_429_TOO_MANY_REQUESTS,
    errors.Unavailable: HTTP_503_SERVICE_UNAVAILABLE,
    errors.Unreachable: HTTP_502_BAD_GATEWAY,
    errors.Failed: HTTP_500_INTERNAL_SERVER_ERROR,
    errors.NotSupported: HTTP_501_NOT_IMPLEMENTED,
}
"""The first class of an error's MRO found here decides: backend errors list their domain
category before `BackendError`, so a backend `NotFound` is a 404."""


def status_for(exc: Exception) -> int:
    for cls in type(exc).__mro__:
        if cls in STATUS_BY_ERROR:
            return STATUS_BY_ERROR[cls]
    return HTTP_500_INTERNAL_SERVER_ERROR


def _json(status: int, detail: Any, headers: dict[str, str] | None = None) -> Response[Any]:
    return Response(
        {"detail": detail}, status_code=status, media_type=MediaType.JSON, headers=headers
    )


def domain_error(_: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    status = status_for(exc)
    message = getattr(exc, "message", str(exc))
    if status >= 500:
        log.warning(
            "request failed: %s: %s",
            type(exc).__name__,
            message,
            extra={"details": getattr(exc, "details", None)},
        )
    headers = {"WWW-Authenticate": "Bearer"} if status == HTTP_401_UNAUTHORIZED else None
    if isinstance(exc, errors.LimitReached):
        headers = {"X-Devbox-Limit": exc.limit}
    if isinstance(exc, errors.InvalidSpec):
        return _json(status, [{"loc": exc.loc, "msg": message, "type": "value_error"}])
    return _json(status, message, headers)


def validation_error(_: Request[Any, Any, Any], exc: ValidationException) -> Response[Any]:
    """422 in the contract's shape: `{"detail": [{loc, msg, type}]}`."""
    items: list[dict[str, Any]] = []
    extra = exc.extra if isinstance(exc.extra, list) else []
    for entry in extra:
        if not isinstance(entry, dict):
            continue
        source = entry.get("source") or "body"
        key = entry.get("key")
        loc: list[str | int] = [source] if not key else [source, *str(key).split(".")]
        items.append(
            {"loc": loc, "msg": str(entry.get("message", exc.detail)), "type": "value_error"}
        )
    if not items:
        items.append({"loc": ["body"], "msg": exc.detail, "type": "value_error"})
    return _json(HTTP_422_UNPROCESSABLE_ENTITY, items)


def http_error(_: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
    return _json(exc.status_code, exc.detail, exc.headers)


def unexpected_error(_: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    if status_for(exc) != HTTP_500_INTERNAL_SERVER_ERROR:
        return domain_error(_, exc)
    log.exception("unhandled error", exc_info=exc)
    return _json(HTTP_500_INTERNAL_SERVER_ERROR, "internal error; see the service log")


EXCEPTION_HANDLERS: dict[type[Exception] | int, Any] = {
    errors.DevboxServiceError: domain_error,
    ValidationException: validation_error,
    HTTPException: http_error,
    Exception: unexpected_error,
}
