"""The domain's exception tree. No web imports: `http_errors` maps these to HTTP in one place.

DevboxServiceError
 +-- ConfigError            a bad setting; the service refuses to start
 +-- NotAuthenticated       no credentials, or unknown/revoked ones          (401)
 +-- PermissionDenied       known caller, not allowed                        (403)
 +-- NotFound               no such resource, or not visible to the caller   (404)
 +-- InvalidInput           a request that cannot be carried out as given    (400/422)
 +-- Conflict               wrong state for the action; carries the state    (409)
 +-- PayloadTooLarge        a body or field over its limit                   (413)
 +-- Timeout                a wait the caller asked for was not met          (408)
 +-- Unavailable            a dependency (VM backend, guest) is not usable   (503)
"""

from __future__ import annotations


class DevboxServiceError(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


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


class Conflict(DevboxServiceError):
    def __init__(self, message: str, *, state: str | None = None) -> None:
        super().__init__(message)
        self.state = state


class PayloadTooLarge(DevboxServiceError):
    pass


class Timeout(DevboxServiceError):
    pass


class Unavailable(DevboxServiceError):
    pass
