"""`/api/instance` and `/api/image`: Morph's VM primitives over the same devboxes (snapshots
are in `snapshot_routes.py`). Who may call each is the policy's act on the route."""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator
from typing import Annotated, Any

from litestar import Controller, Request, delete, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery, JSONBody, QueryParameter
from litestar.response import ServerSentEventMessage
from litestar.types import ASGIApp

from devbox_service.auth.guards import USER, CurrentPrincipal, allow, on_devbox
from devbox_service.auth.policy import Act
from devbox_service.event_streams import event_stream
from devbox_service.instances.schemas import (
    BootSnapshotRequest,
    DiskResizeOperation,
    DiskResizeRequest,
    ExecRequest,
    ExecResponse,
    ExposeRequest,
    Instance,
    InstanceBranchResponse,
    InstanceList,
    InstancePage,
    InstanceSnapshotRequest,
    InstanceSshKey,
    MorphImageList,
    MorphSnapshot,
    StartInstanceRequest,
    TtlRequest,
    WakeOnRequest,
)
from devbox_service.instances.service import InstanceService
from devbox_service.instances.views import metadata_filter
from devbox_service.request_bodies import optional_body


def metadata_query(request: Request[Any, Any, Any]) -> dict[str, str]:
    """`?metadata[key]=value` filters of a list route."""
    return metadata_filter(dict(request.query_params))


class ImageCatalogController(Controller):
    path = "/api/image"
    tags = ["instances"]

    @get("/", guards=[allow(USER)], summary="List Images")
    async def list_images(self, instances: NamedDependency[InstanceService]) -> MorphImageList:
        return await instances.images()


class InstanceController(Controller):
    path = "/api/instance"
    tags = ["instances"]

    @get("/", guards=[allow(USER)], summary="List Instances")
    async def list_instances(
        self,
        instances: NamedDependency[InstanceService],
        principal: CurrentPrincipal,
        request: Request[Any, Any, Any],
    ) -> InstanceList:
        return await instances.instances(principal, metadata_query(request))

    @get("/list", guards=[allow(USER)], summary="List Instances Paginated")
    async def page(
        self,
        instances: NamedDependency[InstanceService],
        principal: CurrentPrincipal,
        request: Request[Any, Any, Any],
        page: Annotated[int, QueryParameter(ge=1)] = 1,
        limit: Annotated[int, QueryParameter(ge=1, le=1000)] = 50,
    ) -> InstancePage:
        return await instances.page(principal, metadata_query(request), page, limit)

    @post("/", guards=[allow(USER)], status_code=200, summary="Start Instance")
    async def start(
        self,
        instances: NamedDependency[InstanceService],
        principal: CurrentPrincipal,
        snapshot_id: FromQuery[str],
        request: Request[Any, Any, Any],
    ) -> Instance:
        body = await optional_body(request, StartInstanceRequest)
        return await instances.start(principal, snapshot_id, body)

    @get("/{devbox_id:str}", guards=[allow(on_devbox(Act.VIEW))], summary="Get Instance")
    async def get_instance(
        self,
        instances: NamedDependency[InstanceService],
        principal: CurrentPrincipal,
        devbox_id: FromPath[str],
    ) -> Instance:
        return await instances.get(principal, devbox_id)

    @delete("/{devbox_id:str}", guards=[allow(on_devbox(Act.DELETE))], summary="Stop Instance")
    async def stop(
        self,
        instances: NamedDependency[InstanceService],
        principal: CurrentPrincipal,
        devbox_id: FromPath[str],
    ) -> None:
        await instances.stop(principal, devbox_id)

    @post(
        "/{devbox_id:str}/pause",
        guards=[allow(on_devbox(Act.OPERATE))],
        status_code=200,
        summary="Pause",
    )
    async def pause(
        self,
        instances: NamedDependency[InstanceService],
        principal: CurrentPrincipal,
        devbox_id: FromPath[str],
    ) -> Instance:
        return await instances.pause(principal, devbox_id)

    @post(
        "/{devbox_id:str}/resume",
        guards=[allow(on_devbox(Act.OPERATE))],
        status_code=200,
        summary="Resume",
    )
    async def resume(
        self,
        instances: NamedDependency[InstanceService],
        principal: CurrentPrincipal,
        devbox_id: FromPath[str],
    ) -> Instance:
        return await instances.resume(principal, devbox_id)

    @post(
        "/{devbox_id:str}/reboot",
        guards=[allow(on_devbox(Act.OPERATE))],
        status_code=200,
        summary="Reboot",
    )
    async def reboot(
        self,
        instances: NamedDependency[InstanceService],
        principal: CurrentPrincipal,
        devbox_id: FromPath[str],
        request: Request[Any, Any, Any],
    ) -> Instance:
        body = await optional_body(request, BootSnapshotRequest)
        return await instances.reboot(principal, devbox_id, body)

    @post(
        "/{devbox_id:str}/metadata",
        guards=[allow(on_devbox(Act.CONFIGURE))],
        status_code=200,
        summary="Metadata",
    )
    async def set_metadata(
        self,
        instances: NamedDependency[InstanceService],
        principal: CurrentPrincipal,
        devbox_id: FromPath[str],
        data: JSONBody[dict[str, str]],
    ) -> Instance:
        return await instances.set_metadata(principal, devbox_id, data)

    @post(
        "/{devbox_id:str}/exec",
        guards=[allow(on_devbox(Act.EXEC))],
        status_code=200,
        summary="Exec",
    )
    async def exec(
        self,
        instances: NamedDependency[InstanceService],
        principal: CurrentPrincipal,
        devbox_id: FromPath[str],
        data: JSONBody[ExecRequest],
        request: Request[Any, Any, Any],
    ) -> ExecResponse:
        key = request.headers.get("idempotency-key")
        return await instances.exec(principal, devbox_id, data.command, key)

    @post(
        "/{devbox_id:str}/exec/sse",
        guards=[allow(on_devbox(Act.EXEC))],
        status_code=200,
        summary="Exec SSE",
    )
    async def exec_sse(
        self,
        instances: NamedDependency[InstanceService],
        principal: CurrentPrincipal,
        devbox_id: FromPath[str],
        data: JSONBody[ExecRequest],
        request: Request[Any, Any, Any],
    ) -> ASGIApp:
        output = await instances.exec_stream(principal, devbox_id, data.command)

        async def events() -> AsyncGenerator[ServerSentEventMessage, None]:
            async for kind, value in output:
                yield ServerSentEventMessage(data=json.dumps({"type": kind, "content": value}))
            yield ServerSentEventMessage(data="[DONE]")

        return event_stream(request, events())

    @post(
        "/{devbox_id:str}/snapshot",
        guards=[allow(on_devbox(Act.SAVE))],
        status_code=200,
        summary="Snapshot",
    )
    async def snapshot(
        self,
        instances: NamedDependency[InstanceService],
        principal: CurrentPrincipal,
        devbox_id: FromPath[str],
        request: Request[Any, Any, Any],
        digest: FromQuery[str | None] = None,
    ) -> MorphSnapshot:
        body = await optional_body(request, InstanceSnapshotRequest)
        return await instances.save(principal, devbox_id, digest, body)

    @post(
        "/{devbox_id:str}/branch",
        guards=[allow(on_devbox(Act.BRANCH))],
        status_code=200,
        summary="Branch",
    )
    async def branch(
        self,
        instances: NamedDependency[InstanceService],
        principal: CurrentPrincipal,
        devbox_id: FromPath[str],
        count: Annotated[int, QueryParameter(ge=1, le=16)] = 1,
    ) -> InstanceBranchResponse:
        return await instances.branch(principal, devbox_id, count)

    @post(
        "/{devbox_id:str}/http",
        guards=[allow(on_devbox(Act.EXPOSE))],
        status_code=200,
        summary="Expose HTTP",
    )
    async def expose(
        self,
        instances: NamedDependency[InstanceService],
        principal: CurrentPrincipal,
        devbox_id: FromPath[str],
        data: JSONBody[ExposeRequest],
    ) -> Instance:
        return await instances.expose(principal, devbox_id, data)

    @delete(
        "/{devbox_id:str}/http/{name:str}",
        guards=[allow(on_devbox(Act.EXPOSE))],
        status_code=200,
        summary="Hide HTTP",
    )
    async def hide(
        self,
        instances: NamedDependency[InstanceService],
        principal: CurrentPrincipal,
        devbox_id: FromPath[str],
        name: FromPath[str],
    ) -> Instance:
        return await instances.hide(principal, devbox_id, name)

    @post(
        "/{devbox_id:str}/disk-resize",
        guards=[allow(on_devbox(Act.RESIZE))],
        status_code=200,
        summary="Disk Resize",
    )
    async def disk_resize(
        self,
        instances: NamedDependency[InstanceService],
        principal: CurrentPrincipal,
        devbox_id: FromPath[str],
        data: JSONBody[DiskResizeRequest],
        request: Request[Any, Any, Any],
    ) -> DiskResizeOperation:
        key = request.headers.get("idempotency-key")
        return await instances.resize_disk(principal, devbox_id, data.disk_size, key)

    @get(
        "/{devbox_id:str}/disk-resize/{operation_id:str}",
        guards=[allow(on_devbox(Act.VIEW))],
        summary="Disk Resize Status",
    )
    async def disk_resize_status(
        self,
        instances: NamedDependency[InstanceService],
        principal: CurrentPrincipal,
        devbox_id: FromPath[str],
        operation_id: FromPath[str],
    ) -> DiskResizeOperation:
        return await instances.disk_resize(principal, devbox_id, operation_id)

    @post(
        "/{devbox_id:str}/ttl",
        guards=[allow(on_devbox(Act.SET_TTL))],
        status_code=200,
        summary="Set TTL",
    )
    async def set_ttl(
        self,
        instances: NamedDependency[InstanceService],
        principal: CurrentPrincipal,
        devbox_id: FromPath[str],
        data: JSONBody[TtlRequest],
    ) -> Instance:
        return await instances.set_ttl(principal, devbox_id, data)

    @post(
        "/{devbox_id:str}/wake-on",
        guards=[allow(on_devbox(Act.CONFIGURE))],
        status_code=200,
        summary="Wake On",
    )
    async def wake_on(
        self,
        instances: NamedDependency[InstanceService],
        principal: CurrentPrincipal,
        devbox_id: FromPath[str],
        data: JSONBody[WakeOnRequest],
    ) -> Instance:
        return await instances.set_wake_on(principal, devbox_id, data)

    @get("/{devbox_id:str}/ssh/key", guards=[allow(on_devbox(Act.SSH))], summary="Get SSH Key")
    async def ssh_key(
        self,
        instances: NamedDependency[InstanceService],
        principal: CurrentPrincipal,
        devbox_id: FromPath[str],
    ) -> InstanceSshKey:
        return await instances.ssh_key(principal, devbox_id)

    @post(
        "/{devbox_id:str}/ssh/key",
        guards=[allow(on_devbox(Act.SSH))],
        status_code=200,
        summary="Rotate SSH Key",
    )
    async def rotate_ssh_key(
        self,
        instances: NamedDependency[InstanceService],
        principal: CurrentPrincipal,
        devbox_id: FromPath[str],
    ) -> InstanceSshKey:
        return await instances.rotate_ssh_key(principal, devbox_id)
