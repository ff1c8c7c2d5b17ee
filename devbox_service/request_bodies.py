"""Request bodies the `morphcloud` clients send in more than one form."""

from __future__ import annotations

from typing import Any, TypeVar

import msgspec
from litestar import Request
from litestar.exceptions import ClientException, ValidationException

T = TypeVar("T")


async def optional_body(request: Request[Any, Any, Any], kind: type[T]) -> T:
    """The CLI sends these POSTs with no body, or an empty one marked as JSON: both mean
    "no options"."""
    raw = await request.body()
    if not raw.strip():
        return kind()
    try:
        return msgspec.json.decode(raw, type=kind)
    except msgspec.ValidationError as exc:
        raise ValidationException(
            detail=str(exc), extra=[{"source": "body", "message": str(exc)}]
        ) from exc
    except msgspec.DecodeError as exc:
        raise ClientException("the request body is not valid JSON") from exc
