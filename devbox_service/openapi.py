"""The OpenAPI document says what the routes really answer: every error is the contract's
`{"detail": ...}` body (a string, or for 422 a list of `{loc, msg, type}`), with the statuses
the error table (`http_errors`) can produce. Litestar documents its own 400 shape otherwise."""

from __future__ import annotations

from collections.abc import Mapping

import msgspec
from litestar import Litestar
from litestar.openapi.spec import (
    OpenAPIMediaType,
    OpenAPIResponse,
    OpenAPIType,
    Reference,
    Schema,
)

ERROR_SCHEMA = "ErrorResponse"
ERRORS = {
    400: "the request cannot be carried out as given",
    401: "no API key, or an unknown or revoked one",
    403: "the caller may not do this",
    404: "no such resource, or not visible to the caller",
    408: "a wait the caller asked for was not met",
    409: "the resource is in the wrong state, or the name is taken",
    413: "a body or field over its limit",
    422: "the body or a parameter does not validate",
    429: "a limit is reached (the X-Devbox-Limit header names it)",
    500: "an operation failed on the service's side",
    501: "a part of the contract this service does not do (the detail says which)",
    502: "a guest or upstream did not answer",
    503: "a part of the service is not usable right now",
}
PUBLIC_ERRORS = (400, 404, 422, 500, 503)
METHODS = ("get", "put", "post", "delete", "patch")


def error_schema() -> Schema:
    item = Schema(
        type=OpenAPIType.OBJECT,
        required=["loc", "msg", "type"],
        properties={
            "loc": Schema(
                type=OpenAPIType.ARRAY,
                items=Schema(
                    one_of=[Schema(type=OpenAPIType.STRING), Schema(type=OpenAPIType.INTEGER)]
                ),
            ),
            "msg": Schema(type=OpenAPIType.STRING),
            "type": Schema(type=OpenAPIType.STRING),
        },
    )
    return Schema(
        type=OpenAPIType.OBJECT,
        required=["detail"],
        properties={
            "detail": Schema(
                one_of=[Schema(type=OpenAPIType.STRING), Schema(type=OpenAPIType.ARRAY, items=item)]
            )
        },
    )


def _structs() -> dict[str, type[msgspec.Struct]]:
    found: dict[str, type[msgspec.Struct]] = {}
    pending = list(msgspec.Struct.__subclasses__())
    while pending:
        cls = pending.pop()
        found.setdefault(cls.__name__, cls)
        pending.extend(cls.__subclasses__())
    return found


def close_strict_bodies(schemas: Mapping[str, Schema | Reference]) -> None:
    """Request Structs that refuse unknown fields say so (`additionalProperties: false`)."""
    structs = _structs()
    for name, schema in schemas.items():
        cls = structs.get(name.rsplit("_", 1)[-1]) or structs.get(name)
        strict = cls is not None and cls.__struct_config__.forbid_unknown_fields
        if strict and isinstance(schema, Schema):
            schema.additional_properties = False


def declare_errors(app: Litestar) -> None:
    """Rewrite the generated document's error responses (once, at start-up)."""
    document = app.openapi_schema
    if document.components.schemas is None:
        document.components.schemas = {}
    close_strict_bodies(document.components.schemas)
    document.components.schemas[ERROR_SCHEMA] = error_schema()
    body = {
        "application/json": OpenAPIMediaType(
            schema=Reference(ref=f"#/components/schemas/{ERROR_SCHEMA}")
        )
    }
    for path, item in (document.paths or {}).items():
        statuses = ERRORS if path.startswith(("/api/", "/preview/")) else PUBLIC_ERRORS
        for method in METHODS:
            operation = getattr(item, method, None)
            if operation is None:
                continue
            responses = operation.responses if operation.responses is not None else {}
            for status in statuses:
                responses[str(status)] = OpenAPIResponse(description=ERRORS[status], content=body)
            operation.responses = responses
