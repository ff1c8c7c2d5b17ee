"""Snapshots as the Morph contract shows them (`/api/snapshots` is the devbox view): digests,
string metadata, pages and TTLs over the checkpoint service's records."""

from __future__ import annotations

from devbox_service.auth.models import Principal
from devbox_service.devboxes.checkpoints import CheckpointService
from devbox_service.devboxes.models import SnapshotRecord
from devbox_service.instances.schemas import (
    MorphSnapshot,
    MorphSnapshotList,
    SnapshotPage,
)
from devbox_service.instances.views import paginate, snapshot_view


class MorphSnapshots:
    def __init__(self, checkpoints: CheckpointService) -> None:
        self._checkpoints = checkpoints

    async def _view(self, record: SnapshotRecord) -> MorphSnapshot:
        return snapshot_view(record, await self._checkpoints.image_of(record.id))

    async def _matching(
        self, principal: Principal, digest: str | None, metadata: dict[str, str]
    ) -> list[MorphSnapshot]:
        records = [
            r
            for r in await self._checkpoints.records(principal)
            if (digest is None or r.digest == digest)
            and all(r.metadata.get(k) == v for k, v in metadata.items())
        ]
        return [await self._view(r) for r in records]

    async def listed(
        self, principal: Principal, digest: str | None, metadata: dict[str, str]
    ) -> MorphSnapshotList:
        return MorphSnapshotList(data=await self._matching(principal, digest, metadata))

    async def page(
        self,
        principal: Principal,
        digest: str | None,
        metadata: dict[str, str],
        page: int,
        size: int,
    ) -> SnapshotPage:
        found = await self._matching(principal, digest, metadata)
        items, counts = paginate(found, page, size)
        return SnapshotPage(snapshots=items, **counts)

    async def get(self, principal: Principal, snapshot_id: str) -> MorphSnapshot:
        return await self._view(await self._checkpoints.record(principal, snapshot_id))

    async def by_digest(self, principal: Principal, digest: str | None) -> MorphSnapshot | None:
        """The organization's snapshot with this digest (how SDK users cache setup steps)."""
        if digest is None:
            return None
        known = await self._checkpoints.by_digest(principal, digest)
        return await self._view(known) if known else None

    async def set_metadata(
        self, principal: Principal, snapshot_id: str, metadata: dict[str, str]
    ) -> MorphSnapshot:
        """Replaces the whole of it (the contract's rule for snapshots)."""
        record = await self._checkpoints.record(principal, snapshot_id)
        labelled = await self._checkpoints.label(
            principal, snapshot_id, digest=record.digest, metadata=metadata
        )
        return await self._view(labelled)

    async def set_ttl(
        self, principal: Principal, snapshot_id: str, seconds: int | None
    ) -> MorphSnapshot:
        await self._checkpoints.set_ttl(principal, snapshot_id, seconds)
        return await self.get(principal, snapshot_id)

    async def delete(self, principal: Principal, snapshot_id: str) -> None:
        await self._checkpoints.delete_snapshot(principal, snapshot_id)

    async def labelled(
        self,
        principal: Principal,
        snapshot_id: str,
        *,
        digest: str | None,
        metadata: dict[str, str] | None,
        ttl_seconds: int | None,
    ) -> MorphSnapshot:
        """A snapshot just saved, given its digest, metadata and TTL."""
        await self._checkpoints.label(
            principal, snapshot_id, digest=digest, metadata=dict(metadata or {})
        )
        if ttl_seconds is not None:
            await self._checkpoints.set_ttl(principal, snapshot_id, ttl_seconds)
        return await self.get(principal, snapshot_id)
