"""Files users upload into a devbox: where they may land (under /tmp only) and what counts
as an image."""

from __future__ import annotations

import posixpath
from collections.abc import AsyncIterator

from devbox_service.auth.models import Principal
from devbox_service.auth.policy import Act
from devbox_service.devboxes.guests import GuestAccess
from devbox_service.devboxes.schemas import UploadResponse
from devbox_service.errors import InvalidInput, PayloadTooLarge

UPLOAD_ROOT = "/tmp"
"""A path in the guest, not on the host. Uploads are written as root, so they are kept to
scratch space: an upload cannot replace the guest's system or profile files."""
DEFAULT_UPLOAD_DIR = posixpath.join(UPLOAD_ROOT, "codex-uploads")
"""Where a file lands when the request names no directory. Part of the API: it is answered
as the upload's `path` (clients read the file from there), so it is fixed, not a setting."""
IMAGE_SIGNATURES = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a", b"RIFF")


class UploadService:
    def __init__(self, guests: GuestAccess, max_bytes: int) -> None:
        self._guests = guests
        self._max_bytes = max_bytes

    async def upload(
        self,
        principal: Principal,
        devbox_id: str,
        *,
        filename: str,
        size: int,
        chunks: AsyncIterator[bytes],
        content_type: str,
        directory: str | None,
        image_only: bool = False,
    ) -> UploadResponse:
        """The file streams into the guest as it is read. Raises NotFound, Conflict (devbox
        not ready), then InvalidInput (name, directory, not an image), PayloadTooLarge."""
        await self._guests.usable(
            principal, devbox_id, Act.UPLOAD
        )  # who may write, before what is written
        if size > self._max_bytes:
            raise PayloadTooLarge(f"the file is {size} bytes; the limit is {self._max_bytes}")
        name = safe_filename(filename)
        path = posixpath.join(safe_upload_dir(directory), name)
        first = await anext(chunks, b"")
        if image_only and not is_image(content_type, first):
            raise InvalidInput("not an image: send a PNG, JPEG, GIF or WebP file", field="file")
        written = 0

        async def counted() -> AsyncIterator[bytes]:
            nonlocal written
            written = len(first)
            yield first
            async for chunk in chunks:
                written += len(chunk)
                if written > self._max_bytes:
                    raise PayloadTooLarge(f"the file is over the limit of {self._max_bytes} bytes")
                yield chunk

        await self._guests.write_file(principal, devbox_id, path, counted())
        return UploadResponse(
            path=path,
            filename=name,
            size=written,
            content_type=content_type or "application/octet-stream",
        )


def is_image(content_type: str, data: bytes) -> bool:
    """Both the declared type and the file's first bytes must say image."""
    return content_type.startswith("image/") and data.startswith(IMAGE_SIGNATURES)


def safe_filename(filename: str) -> str:
    name = filename.strip()
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\x00" in name:
        raise InvalidInput(
            f"invalid file name {filename!r}: give a plain name without '/'", field="file"
        )
    return name


def safe_upload_dir(directory: str | None) -> str:
    """An absolute directory under /tmp, with no `..` anywhere (rejected, not normalised)."""
    target = directory or DEFAULT_UPLOAD_DIR
    parts = target.split("/")
    if not target.startswith("/") or ".." in parts or "\x00" in target:
        raise InvalidInput(
            f"invalid upload directory {target!r}: use an absolute path under "
            f"{UPLOAD_ROOT} without '..'",
            field="dest_dir",
        )
    normal = posixpath.normpath(target)
    if normal != UPLOAD_ROOT and not normal.startswith(UPLOAD_ROOT + "/"):
        raise InvalidInput(
            f"upload directory {target!r} must be under {UPLOAD_ROOT}", field="dest_dir"
        )
    return normal
