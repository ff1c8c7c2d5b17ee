"""The service's one exception tree. No web imports: `http_errors` maps it to HTTP in one place.

Every error a public method raises is a `DevboxServiceError`; adapters (the VM backend, the tmux
control client, guest SSH, the preview proxy) translate foreign errors into this tree at their
edge, so a caller never sees an asyncssh or libtmux exception.

DevboxServiceError
 +-- ConfigError            a bad setting; the service refuses to start
 +-- NotAuthenticated       no credentials, or unknown/revoked ones          (401)
 +-- PermissionDenied       known caller, not allowed                        (403)
 +-- NotFound               no such resource, or not visible to the caller   (404)
 +-- InvalidInput           a request that cannot be carried out as given    (400)
 |    +-- InvalidSpec        a field that fails a check made past parsing: a template's
 |                           YAML, a tmux wait pattern that takes too long   (422)
 +-- Conflict               wrong state for the action, or a name taken      (409)
 +-- PayloadTooLarge        a body or field over its limit                   (413)
 +-- Timeout                a wait the caller asked for was not met          (408)
 +-- LimitReached           a quota or the host's capacity; names the limit  (429)
 +-- Unavailable            a part of the service is not usable right now    (503)
 +-- Unreachable            a guest or upstream did not answer               (502)
 +-- Failed                 an operation broke on the server's side          (500)
 |    +-- GuestCommandFailed     (ssh.guest) a command the service ran in a guest exited
 |    |                          non-zero
 |    +-- SealedValueUnreadable  (secrets.box) a stored value this installation's key
 |                               does not open
 +-- NotSupported           a part of the contract this service does not do  (501)

The backend's tree (`backends.base`) hangs below these: its `NotFound` is a `NotFound`, its
`InvalidState` a `Conflict`, its `GuestUnreachable` an `Unreachable`, and so on.
"""

from __future__ import annotations


class DevboxServiceError(Exception):
    """Base of every domain error; `details` are extra facts for logs, never for users."""

    def __init__(self, message: str, **details: object) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class ConfigError(DevboxServiceError):
    pass


class NotAuthenticated(DevboxServiceError):
    pass


class PermissionDenied(DevboxServiceError):
    pass


class NotFound(DevboxServiceError):
    @classmethod
    def of(cls, kind: str, identifier: str) -> NotFound:
        return cls(f"{kind} {identifier!r} not found")


class InvalidInput(DevboxServiceError):
    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class InvalidSpec(InvalidInput):
    """Answered in the contract's 422 shape; `loc` is where in the request the problem is."""

    def __init__(self, message: str, *, loc: list[str | int]) -> None:
        super().__init__(message, field=".".join(str(part) for part in loc))
        self.loc = loc


class Conflict(DevboxServiceError):
    def __init__(self, message: str, *, state: str | None = None, **details: object) -> None:
        super().__init__(message, **details)
        self.state = state


class AlreadyExists(Conflict):
    """A write lost a race for a unique name or key (both stores raise it, as 409)."""


class PayloadTooLarge(DevboxServiceError):
    pass


class Timeout(DevboxServiceError):
    pass


class LimitReached(DevboxServiceError):
    def __init__(self, message: str, *, limit: str) -> None:
        super().__init__(message, limit=limit)
        self.limit = limit


class Unavailable(DevboxServiceError):
    pass


class Unreachable(DevboxServiceError):
    pass


class Failed(DevboxServiceError):
    pass


class NotSupported(DevboxServiceError):
    """A request the contract allows that this service cannot carry out; says what is missing."""
