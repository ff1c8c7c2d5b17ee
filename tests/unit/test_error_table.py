"""One exception tree, one table to HTTP: backend errors answer like the domain's own."""

from __future__ import annotations

import pytest
from cryptography.fernet import Fernet

from devbox_service import errors
from devbox_service.backends import base as backend
from devbox_service.http_errors import status_for
from devbox_service.secrets.box import SealedValueUnreadable, SecretBox
from devbox_service.ssh.guest import GuestCommandFailed


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (errors.NotAuthenticated("x"), 401),
        (errors.PermissionDenied("x"), 403),
        (errors.NotFound("x"), 404),
        (errors.InvalidInput("x"), 400),
        (errors.Conflict("x"), 409),
        (errors.PayloadTooLarge("x"), 413),
        (errors.Timeout("x"), 408),
        (errors.Unavailable("x"), 503),
        (errors.Unreachable("x"), 502),
        (errors.Failed("x"), 500),
        (backend.NotFound("no such instance"), 404),
        (backend.AlreadyExists("instance exists"), 409),
        (backend.InvalidState("paused", state="paused"), 409),
        (backend.SnapshotInUse("in use"), 409),
        (backend.GuestUnreachable("no ssh", console_tail=""), 502),
        (backend.BackendTimeout("slow"), 500),
        (backend.CommandFailed("qemu-img", command=["qemu-img"], exit_code=1, output=""), 500),
        (backend.BackendError("broken"), 500),
        (RuntimeError("a bug"), 500),
    ],
)
def test_each_error_maps_to_its_status(error: Exception, status: int) -> None:
    assert status_for(error) == status


def test_every_backend_error_is_a_domain_error() -> None:
    for cls in (
        backend.BackendError,
        backend.NotFound,
        backend.AlreadyExists,
        backend.InvalidState,
        backend.GuestUnreachable,
    ):
        assert issubclass(cls, errors.DevboxServiceError)
    conflict = backend.InvalidState("cannot pause", state="stopped")
    assert isinstance(conflict, errors.Conflict) and conflict.state == "stopped"


def test_adapter_errors_are_in_the_tree() -> None:
    """Guest commands and sealed values fail as `Failed` (500), never as foreign errors."""
    failed = GuestCommandFailed("false", 1, "boom\n")
    assert isinstance(failed, errors.Failed) and status_for(failed) == 500
    assert failed.message == "guest command 'false' exited 1: boom"
    assert issubclass(SealedValueUnreadable, errors.Failed)


def test_a_value_sealed_under_another_key_is_a_domain_error() -> None:
    sealed = SecretBox(Fernet.generate_key()).seal("v")
    with pytest.raises(SealedValueUnreadable, match="this installation's key"):
        SecretBox(Fernet.generate_key()).open_sealed(sealed)
