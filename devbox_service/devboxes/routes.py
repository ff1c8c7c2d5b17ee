"""`/api/devboxes`, `/api/images`, `/api/snapshots`: each handler makes one service call."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated, Any

from litestar import Controller, Router, delete, get, patch, post
from litestar.datastructures import UploadFile
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery, JSONBody, MultipartBody, QueryParameter

from devbox_service.auth.guards import (
    USER,
    CurrentPrincipal,
    allow,
    on_devbox,
    on_snapshot,
)
from devbox_service.auth.models import Principal
from devbox_service.auth.policy import Act
from devbox_service.devboxes.checkpoints import CheckpointService
from devbox_service.devboxes.guests import GuestAccess
from devbox_service.devboxes.schemas import (
    BranchRequest,
    BranchResponse,
    CreateDevboxFromSnapshotRequest,
    DeleteResponse,
    DevboxDetailListResponse,
    DevboxListResponse,
    DevboxResponse,
    DevboxSSHCredentialsResponse,
    DevboxSummaryResponse,
    DisplayNameUpdateRequest,
    ImageListResponse,
    SaveRequest,
    SnapshotListResponse,
    SnapshotResponse,
    SuccessResponse,
    UploadResponse,
)
from devbox_service.devboxes.service import DevboxService
from devbox_service.devboxes.uploads import UploadService
from devbox_service.devboxes.views import DevboxViews


class DevboxController(Controller):
    path = "/api/devboxes"
    tags = ["devboxes"]

    @get("/", guards=[allow(USER)], summary="List Devboxes")
    async def list_devboxes(
        self, devbox_views: NamedDependency[DevboxViews], principal: CurrentPrincipal
    ) -> DevboxListResponse:
        return DevboxListResponse(data=await devbox_views.list_summaries(principal))

    @get("/detailed", guards=[allow(USER)], summary="List Devboxes Detailed")
    async def list_detailed(
        self, devbox_views: NamedDependency[DevboxViews], principal: CurrentPrincipal
    ) -> DevboxDetailListResponse:
        return DevboxDetailListResponse(data=await devbox_views.list_detailed(principal))

    @post("/", guards=[allow(USER)], status_code=200, summary="Create Devbox From Snapshot")
    async def create(
        self,
        devboxes: NamedDependency[DevboxService],
        principal: CurrentPrincipal,
        snapshot_id: Annotated[str, QueryParameter(min_length=1)],
        data: JSONBody[CreateDevboxFromSnapshotRequest | None] = None,
    ) -> DevboxResponse:
        request = data or CreateDevboxFromSnapshotRequest()
        return await devboxes.create(
            principal, snapshot_id, name=request.name, metadata=request.metadata
        )

    @get("/{devbox_id:str}", guards=[allow(on_devbox(Act.VIEW))], summary="Get Devbox")
    async def get_devbox(
        self,
        devbox_views: NamedDependency[DevboxViews],
        principal: CurrentPrincipal,
        devbox_id: FromPath[str],
    ) -> DevboxResponse:
        return await devbox_views.get(principal, devbox_id)

    @get(
        "/{devbox_id:str}/summary",
        guards=[allow(on_devbox(Act.VIEW))],
        summary="Get Devbox Summary",
    )
    async def get_summary(
        self,
        devbox_views: NamedDependency[DevboxViews],
        principal: CurrentPrincipal,
        devbox_id: FromPath[str],
    ) -> DevboxSummaryResponse:
        return await devbox_views.summary(principal, devbox_id)

    @delete(
        "/{devbox_id:str}",
        guards=[allow(on_devbox(Act.DELETE))],
        status_code=200,
        summary="Delete Devbox",
    )
    async def delete_devbox(
        self,
        devboxes: NamedDependency[DevboxService],
        principal: CurrentPrincipal,
        devbox_id: FromPath[str],
    ) -> DeleteResponse:
        await devboxes.delete(principal, devbox_id)
        return DeleteResponse(id=devbox_id)

    @post(
        "/{devbox_id:str}/metadata",
        guards=[allow(on_devbox(Act.CONFIGURE))],
        status_code=200,
        summary="Update Devbox Metadata",
    )
    async def update_metadata(
        self,
        devboxes: NamedDependency[DevboxService],
        principal: CurrentPrincipal,
        devbox_id: FromPath[str],
        data: JSONBody[dict[str, Any]],
    ) -> SuccessResponse:
        await devboxes.update_metadata(principal, devbox_id, data)
        return SuccessResponse(id=devbox_id, message="metadata updated")

    @patch(
        "/{devbox_id:str}/display_name",
        guards=[allow(on_devbox(Act.CONFIGURE))],
        summary="Update Devbox Display Name",
    )
    async def set_display_name(
        self,
        devboxes: NamedDependency[DevboxService],
        principal: CurrentPrincipal,
        devbox_id: FromPath[str],
        data: JSONBody[DisplayNameUpdateRequest],
    ) -> SuccessResponse:
        await devboxes.set_display_name(principal, devbox_id, data.display_name)
        return SuccessResponse(id=devbox_id, message="display name updated")

    @post(
        "/{devbox_id:str}/save",
        guards=[allow(on_devbox(Act.SAVE))],
        status_code=200,
        summary="Save Devbox",
    )
    async def save(
        self,
        checkpoints: NamedDependency[CheckpointService],
        principal: CurrentPrincipal,
        devbox_id: FromPath[str],
        data: JSONBody[SaveRequest | None] = None,
    ) -> SnapshotResponse:
        return await checkpoints.save(principal, devbox_id, (data or SaveRequest()).name)

    @post(
        "/{devbox_id:str}/branch",
        guards=[allow(on_devbox(Act.BRANCH))],
        status_code=200,
        summary="Branch Devbox",
    )
    async def branch(
        self,
        checkpoints: NamedDependency[CheckpointService],
        principal: CurrentPrincipal,
        devbox_id: FromPath[str],
        data: JSONBody[BranchRequest | None] = None,
    ) -> BranchResponse:
        request = data or BranchRequest()
        instances = await checkpoints.branch(
            principal, devbox_id, name=request.name, count=request.count
        )
        return BranchResponse(instances=instances)

    @post(
        "/{devbox_id:str}/pause",
        guards=[allow(on_devbox(Act.OPERATE))],
        status_code=200,
        summary="Pause Devbox",
    )
    async def pause(
        self,
        devboxes: NamedDependency[DevboxService],
        principal: CurrentPrincipal,
        devbox_id: FromPath[str],
    ) -> DevboxResponse:
        return await devboxes.pause(principal, devbox_id)

    @post(
        "/{devbox_id:str}/resume",
        guards=[allow(on_devbox(Act.OPERATE))],
        status_code=200,
        summary="Resume Devbox",
    )
    async def resume(
        self,
        devboxes: NamedDependency[DevboxService],
        principal: CurrentPrincipal,
        devbox_id: FromPath[str],
    ) -> DevboxResponse:
        return await devboxes.resume(principal, devbox_id)

    @post(
        "/{devbox_id:str}/reboot",
        guards=[allow(on_devbox(Act.OPERATE))],
        status_code=200,
        summary="Reboot Devbox",
    )
    async def reboot(
        self,
        devboxes: NamedDependency[DevboxService],
        principal: CurrentPrincipal,
        devbox_id: FromPath[str],
    ) -> DevboxResponse:
        return await devboxes.reboot(principal, devbox_id)


@dataclass
class UploadForm:
    file: UploadFile
    path: str | None = None


UploadBody = MultipartBody[UploadForm]


class UploadController(Controller):
    """Mounted by `create_app` under a router whose body limit is the upload limit."""

    path = "/api/devboxes/{devbox_id:str}/uploads"
    tags = ["devboxes"]

    @post(
        "/", guards=[allow(on_devbox(Act.UPLOAD))], status_code=200, summary="Upload File to Devbox"
    )
    async def upload_file(
        self,
        uploads: NamedDependency[UploadService],
        principal: CurrentPrincipal,
        devbox_id: FromPath[str],
        data: UploadBody,
        dest_dir: FromQuery[str | None] = None,
    ) -> UploadResponse:
        return await _upload(uploads, principal, devbox_id, data, dest_dir, image_only=False)

    @post(
        "/image",
        guards=[allow(on_devbox(Act.UPLOAD))],
        status_code=200,
        summary="Upload Image to Devbox",
    )
    async def upload_image(
        self,
        uploads: NamedDependency[UploadService],
        principal: CurrentPrincipal,
        devbox_id: FromPath[str],
        data: UploadBody,
        dest_dir: FromQuery[str | None] = None,
    ) -> UploadResponse:
        return await _upload(uploads, principal, devbox_id, data, dest_dir, image_only=True)


async def _upload(
    uploads: UploadService,
    principal: Principal,
    devbox_id: FromPath[str],
    form: UploadForm,
    dest_dir: str | None,
    *,
    image_only: bool,
) -> UploadResponse:
    size = form.file.file.seek(0, os.SEEK_END)  # the parsed upload is spooled (disk past 1 MiB)
    form.file.file.seek(0)

    async def chunks() -> AsyncIterator[bytes]:
        while chunk := await form.file.read(UPLOAD_CHUNK):
            yield chunk

    return await uploads.upload(
        principal,
        devbox_id,
        filename=form.file.filename,
        size=size,
        chunks=chunks(),
        content_type=form.file.content_type,
        directory=form.path or dest_dir,
        image_only=image_only,
    )


UPLOAD_CHUNK = 1024 * 1024


def upload_router(max_bytes: int) -> Router:
    return Router(
        path="/", route_handlers=[UploadController], request_max_body_size=max_bytes + 64 * 1024
    )


class ImageController(Controller):
    path = "/api/images"
    tags = ["images"]

    @get("/", guards=[allow(USER)], summary="List Images")
    async def list_images(
        self, checkpoints: NamedDependency[CheckpointService]
    ) -> ImageListResponse:
        return ImageListResponse(data=await checkpoints.images())


class SnapshotController(Controller):
    path = "/api/snapshots"
    tags = ["snapshots"]

    @get("/", guards=[allow(USER)], summary="List Snapshots")
    async def list_snapshots(
        self, checkpoints: NamedDependency[CheckpointService], principal: CurrentPrincipal
    ) -> SnapshotListResponse:
        return SnapshotListResponse(data=await checkpoints.snapshots(principal))

    @get(
        "/{snapshot_id:str}", guards=[allow(on_snapshot(Act.SNAPSHOT_VIEW))], summary="Get Snapshot"
    )
    async def get_snapshot(
        self,
        checkpoints: NamedDependency[CheckpointService],
        principal: CurrentPrincipal,
        snapshot_id: FromPath[str],
    ) -> SnapshotResponse:
        return await checkpoints.snapshot(principal, snapshot_id)

    @delete(
        "/{snapshot_id:str}",
        guards=[allow(on_snapshot(Act.SNAPSHOT_DELETE))],
        status_code=200,
        summary="Delete Snapshot",
    )
    async def delete_snapshot(
        self,
        checkpoints: NamedDependency[CheckpointService],
        principal: CurrentPrincipal,
        snapshot_id: FromPath[str],
    ) -> DeleteResponse:
        await checkpoints.delete_snapshot(principal, snapshot_id)
        return DeleteResponse(id=snapshot_id, object="snapshot")


class SSHCredentialsController(Controller):
    path = "/api/admin/devboxes"
    tags = ["devboxes"]

    @get(
        "/{devbox_id:str}/ssh-credentials",
        guards=[allow(on_devbox(Act.SSH))],
        summary="Get SSH Credentials for Devbox",
    )
    async def ssh_credentials(
        self,
        guest_access: NamedDependency[GuestAccess],
        principal: CurrentPrincipal,
        devbox_id: FromPath[str],
    ) -> DevboxSSHCredentialsResponse:
        return await guest_access.ssh_credentials(principal, devbox_id)
