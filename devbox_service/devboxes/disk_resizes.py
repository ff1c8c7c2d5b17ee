"""Growing a devbox's disk while it runs: one recorded operation per Idempotency-Key.

The operation is written before the backend is asked and settled after, so a retried request
gets the same answer and a restart settles an operation it cut short (`settle_unfinished`).
"""

from __future__ import annotations

import time

from devbox_service.auth.models import Principal
from devbox_service.auth.policy import Act
from devbox_service.backends import base as backend_api
from devbox_service.db import Database
from devbox_service.db.records import Table
from devbox_service.devboxes.core import DevboxCore
from devbox_service.devboxes.models import (
    DevboxRecord,
    DevboxStatus,
    DiskResizeRecord,
    DiskResizeStatus,
    EventType,
)
from devbox_service.devboxes.records import new_event
from devbox_service.devboxes.sizes import SizeLimits, require_growth
from devbox_service.errors import Conflict, InvalidSpec, NotFound
from devbox_service.ids import new_id

DISK_RESIZES = Table("disk_resizes", DiskResizeRecord)


class DiskResizeStore:
    def __init__(self, database: Database) -> None:
        self.database = database

    async def insert(self, operation: DiskResizeRecord) -> None:
        async with self.database.transaction() as tx:
            await DISK_RESIZES.insert(tx, operation)

    async def get(self, devbox_id: str, operation_id: str) -> DiskResizeRecord | None:
        row = await self.database.fetch_one(
            "SELECT * FROM disk_resizes WHERE id = ? AND devbox_id = ?", (operation_id, devbox_id)
        )
        return DISK_RESIZES.decode(row) if row else None

    async def by_key(self, devbox_id: str, key: str) -> DiskResizeRecord | None:
        row = await self.database.fetch_one(
            "SELECT * FROM disk_resizes WHERE devbox_id = ? AND idempotency_key = ?",
            (devbox_id, key),
        )
        return DISK_RESIZES.decode(row) if row else None

    async def running(self) -> list[DiskResizeRecord]:
        rows = await self.database.fetch_all("SELECT * FROM disk_resizes WHERE status = 'running'")
        return DISK_RESIZES.decode_all(rows)

    async def generation(self, devbox_id: str) -> int:
        """How many times the devbox's disk grew."""
        row = await self.database.fetch_one(
            "SELECT COUNT(*) AS n FROM disk_resizes WHERE devbox_id = ? AND status = 'succeeded'"
            " AND requested_mb > previous_mb",
            (devbox_id,),
        )
        return int(row["n"]) if row else 0

    async def finish(
        self, operation: DiskResizeRecord, status: DiskResizeStatus, error: str | None = None
    ) -> DiskResizeRecord:
        now = time.time()
        grew = (
            status is DiskResizeStatus.SUCCEEDED and operation.requested_mb > operation.previous_mb
        )
        generation = operation.capacity_generation + (1 if grew else 0)
        await self.database.execute(
            "UPDATE disk_resizes SET status = ?, error = ?, capacity_generation = ?, "
            "updated_at = ?, completed_at = ? WHERE id = ?",
            (status.value, error, generation, now, now, operation.id),
        )
        found = await self.get(operation.devbox_id, operation.id)
        assert found is not None
        return found


class DiskResizes:
    """The rules: disks only grow, within the size limit and the disk quota, while running."""

    def __init__(self, core: DevboxCore, store: DiskResizeStore, sizes: SizeLimits) -> None:
        self._core = core
        self._store = store
        self._sizes = sizes

    async def request(
        self, principal: Principal, devbox_id: str, disk_mb: int, key: str
    ) -> DiskResizeRecord:
        """Grow to `disk_mb`; the same key again answers the first request's operation.
        Only the owner or an org admin (the owner's quota pays). Raises NotFound,
        PermissionDenied, InvalidSpec (smaller, too large), Conflict (not running, key
        reused for another size), LimitReached (disk quota)."""
        async with self._core.locked(principal, devbox_id, Act.RESIZE) as record:
            known = await self._store.by_key(devbox_id, key)
            if known is not None:
                if known.requested_mb != disk_mb:
                    raise Conflict(
                        f"Idempotency-Key {key!r} was used for disk_size {known.requested_mb}; "
                        "use a new key for another size",
                        operation_id=known.id,
                    )
                return known
            self._check_size(record, disk_mb)
            grows = disk_mb > record.disk_mb
            if grows and record.status is not DevboxStatus.READY:
                raise Conflict(
                    f"cannot grow the disk of {devbox_id}: it is {record.status.value} "
                    "(resume it first)",
                    state=record.status.value,
                )
            admission = self._core.admission
            async with admission.guard():
                if grows:
                    await admission.check_disk_growth(
                        record.user_id, record.org_id, disk_mb - record.disk_mb
                    )
                operation = await self._begin(record, disk_mb, key)
            if not grows:  # already this large: nothing to do, answered as done
                return await self._store.finish(operation, DiskResizeStatus.SUCCEEDED)
            return await self._grow(operation)

    async def get(
        self, principal: Principal, devbox_id: str, operation_id: str
    ) -> DiskResizeRecord:
        await self._core.visible(principal, devbox_id, Act.VIEW)
        operation = await self._store.get(devbox_id, operation_id)
        if operation is None:
            raise NotFound.of("disk resize", operation_id)
        return operation

    async def settle_unfinished(self) -> None:
        """After a restart: an operation cut short succeeded if the disk is that large now,
        and failed otherwise (nothing changed; the caller may ask again)."""
        for operation in await self._store.running():
            try:
                instance = await self._core.backend.get_instance(operation.devbox_id)
            except backend_api.BackendError:
                await self._store.finish(
                    operation, DiskResizeStatus.FAILED, "the devbox's VM is gone"
                )
                continue
            if instance.spec.disk_mb >= operation.requested_mb:
                await self._succeeded(operation)
            else:
                await self._store.finish(
                    operation, DiskResizeStatus.FAILED, "interrupted by a restart; ask again"
                )

    def _check_size(self, record: DevboxRecord, disk_mb: int) -> None:
        require_growth(record.disk_mb, disk_mb)
        if disk_mb > self._sizes.max_disk_mb:
            raise InvalidSpec(
                f"disk_size must be at most {self._sizes.max_disk_mb} on this host",
                loc=["body", "disk_size"],
            )

    async def _begin(self, record: DevboxRecord, disk_mb: int, key: str) -> DiskResizeRecord:
        now = time.time()
        operation = DiskResizeRecord(
            id=new_id("diskresize"),
            devbox_id=record.id,
            idempotency_key=key,
            previous_mb=record.disk_mb,
            requested_mb=disk_mb,
            status=DiskResizeStatus.RUNNING,
            capacity_generation=await self._store.generation(record.id),
            created_at=now,
            updated_at=now,
        )
        await self._store.insert(operation)
        return operation

    async def _grow(self, operation: DiskResizeRecord) -> DiskResizeRecord:
        try:
            await self._core.backend.grow_disk(operation.devbox_id, operation.requested_mb)
        except backend_api.BackendError as exc:
            return await self._store.finish(operation, DiskResizeStatus.FAILED, str(exc))
        return await self._succeeded(operation)

    async def _succeeded(self, operation: DiskResizeRecord) -> DiskResizeRecord:
        await self._core.store.update(
            operation.devbox_id,
            disk_mb=operation.requested_mb,
            event=new_event(
                operation.devbox_id,
                EventType.DISK_RESIZE,
                detail={"previous_mb": operation.previous_mb, "disk_mb": operation.requested_mb},
            ),
        )
        return await self._store.finish(operation, DiskResizeStatus.SUCCEEDED)
