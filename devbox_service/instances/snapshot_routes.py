"""`/api/snapshot`: Morph's snapshots of instances (the same snapshots as `/api/snapshots`)."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Controller, Request, delete, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery, JSONBody, QueryParameter

from devbox_service.auth.guards import USER, CurrentPrincipal, allow, on_snapshot
from devbox_service.auth.policy import Act
from devbox_service.instances.routes import metadata_query
from devbox_service.instances.schemas import (
    BootSnapshotRequest,
    CreateSnapshotRequest,
    Instance,
    MorphSnapshot,
    MorphSnapshotList,
    SnapshotPage,
    SnapshotTtlRequest,
)
from devbox_service.instances.service import InstanceService
from devbox_service.instances.snapshots import MorphSnapshots
from devbox_service.request_bodies import optional_body


class SnapshotCatalogController(Controller):
    """Snapshots as the VM primitives API shows them (`/api/snapshots` is the devbox view)."""

    path = "/api/snapshot"
    tags = ["instances"]

    @get("/", guards=[allow(USER)], summary="List Snapshots")
    async def list_snapshots(
        self,
        instance_snapshots: NamedDependency[MorphSnapshots],
        principal: CurrentPrincipal,
        request: Request[Any, Any, Any],
        digest: FromQuery[str | None] = None,
    ) -> MorphSnapshotList:
        return await instance_snapshots.listed(principal, digest, metadata_query(request))

    @get("/list", guards=[allow(USER)], summary="List Snapshots Paginated")
    async def page(
        self,
        instance_snapshots: NamedDependency[MorphSnapshots],
        principal: CurrentPrincipal,
        request: Request[Any, Any, Any],
        page: Annotated[int, QueryParameter(ge=1)] = 1,
        limit: Annotated[int, QueryParameter(ge=1, le=1000)] = 50,
        digest: FromQuery[str | None] = None,
    ) -> SnapshotPage:
        return await instance_snapshots.page(
            principal, digest, metadata_query(request), page, limit
        )

    @post("/", guards=[allow(USER)], status_code=200, summary="Create Snapshot")
    async def create(
        self,
        instances: NamedDependency[InstanceService],
        principal: CurrentPrincipal,
        request: Request[Any, Any, Any],
    ) -> MorphSnapshot:
        body = await optional_body(request, CreateSnapshotRequest)
        return await instances.create_snapshot(principal, body)

    @get(
        "/{snapshot_id:str}", guards=[allow(on_snapshot(Act.SNAPSHOT_VIEW))], summary="Get Snapshot"
    )
    async def get_snapshot(
        self,
        instance_snapshots: NamedDependency[MorphSnapshots],
        principal: CurrentPrincipal,
        snapshot_id: FromPath[str],
    ) -> MorphSnapshot:
        return await instance_snapshots.get(principal, snapshot_id)

    @delete(
        "/{snapshot_id:str}",
        guards=[allow(on_snapshot(Act.SNAPSHOT_DELETE))],
        summary="Delete Snapshot",
    )
    async def delete_snapshot(
        self,
        instance_snapshots: NamedDependency[MorphSnapshots],
        principal: CurrentPrincipal,
        snapshot_id: FromPath[str],
    ) -> None:
        await instance_snapshots.delete(principal, snapshot_id)

    @post(
        "/{snapshot_id:str}/metadata",
        guards=[allow(on_snapshot(Act.SNAPSHOT_EDIT))],
        status_code=200,
        summary="Metadata",
    )
    async def set_metadata(
        self,
        instance_snapshots: NamedDependency[MorphSnapshots],
        principal: CurrentPrincipal,
        snapshot_id: FromPath[str],
        data: JSONBody[dict[str, str]],
    ) -> MorphSnapshot:
        return await instance_snapshots.set_metadata(principal, snapshot_id, data)

    @post(
        "/{snapshot_id:str}/boot",
        guards=[allow(on_snapshot(Act.SNAPSHOT_BOOT))],
        status_code=200,
        summary="Boot",
    )
    async def boot(
        self,
        instances: NamedDependency[InstanceService],
        principal: CurrentPrincipal,
        snapshot_id: FromPath[str],
        request: Request[Any, Any, Any],
    ) -> Instance:
        body = await optional_body(request, BootSnapshotRequest)
        return await instances.boot(principal, snapshot_id, body)

    @post(
        "/{snapshot_id:str}/ttl",
        guards=[allow(on_snapshot(Act.SNAPSHOT_EDIT))],
        status_code=200,
        summary="Snapshot TTL",
    )
    async def set_ttl(
        self,
        instance_snapshots: NamedDependency[MorphSnapshots],
        principal: CurrentPrincipal,
        snapshot_id: FromPath[str],
        data: JSONBody[SnapshotTtlRequest],
    ) -> MorphSnapshot:
        return await instance_snapshots.set_ttl(principal, snapshot_id, data.ttl_seconds)
