"""Encryption at rest for values the service must be able to read back (SSH passwords, user
secrets): Fernet (AES-128-CBC + HMAC-SHA256) with one key kept in the data directory, 0600."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken

from devbox_service.errors import Failed

KEY_FILE = "secret-box.key"


class SealedValueUnreadable(Failed):
    """A stored value that this installation's key does not open (the key file was replaced
    or the value damaged): the server's state is broken, not the caller's request."""


class SecretBox:
    def __init__(self, key: bytes) -> None:
        self._fernet = Fernet(key)
        self.fingerprint = hashlib.sha256(b"devbox-service secret box\0" + key).hexdigest()[:32]
        """Names the key without revealing it: what every process on one store must share."""

    @classmethod
    def open(cls, data_dir: Path) -> SecretBox:
        """Load the installation's key, creating it (0600, exclusively) on first use."""
        path = data_dir / KEY_FILE
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            os.chmod(path, 0o600)  # an older or copied data dir may have left it wider
            return cls(path.read_bytes().strip())
        key = Fernet.generate_key()
        try:
            os.write(fd, key)
        finally:
            os.close(fd)
        return cls(key)

    def seal(self, plaintext: str) -> str:
        return self._fernet.encrypt(plaintext.encode()).decode()

    def open_sealed(self, token: str) -> str:
        try:
            return self._fernet.decrypt(token.encode()).decode()
        except InvalidToken as exc:
            raise SealedValueUnreadable(
                "sealed value does not match this installation's key", key_file=KEY_FILE
            ) from exc

    def __repr__(self) -> str:
        return "SecretBox(<hidden>)"
