from __future__ import annotations

from collections.abc import Callable

from litestar.testing import AsyncTestClient
from support import Api, insert_devbox

from devbox_service.app import create_app
from devbox_service.settings import Settings


async def test_upload_over_the_limit_is_413_and_json_body_limit_is_separate(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(upload_max_bytes=4096, max_body_bytes=2048)
    async with AsyncTestClient(create_app(settings)) as client:
        api = Api(client, settings)
        admin = await api.services.identities.authenticate(api.admin_key)
        devbox_id = await insert_devbox(api, admin.user_id, admin.org_id)
        auth = api.auth(api.admin_key)
        too_big = await client.post(
            f"/api/devboxes/{devbox_id}/uploads",
            files={"file": ("big.bin", b"x" * 200_000, "application/octet-stream")},
            headers=auth,
        )
        assert too_big.status_code == 413
        just_over = await client.post(
            f"/api/devboxes/{devbox_id}/uploads",
            files={"file": ("over.bin", b"x" * 5000, "application/octet-stream")},
            headers=auth,
        )
        assert just_over.status_code == 413 and "4096" in just_over.json()["detail"]
        outsider = api.auth(await api.new_user("upload-outsider"))
        hidden = await client.post(
            f"/api/devboxes/{devbox_id}/uploads",
            files={"file": ("big.bin", b"x" * 200_000, "application/octet-stream")},
            headers=outsider,
        )
        assert hidden.status_code == 404, "who may write is checked before the body is read"
        json_too_big = await client.post(
            f"/api/devboxes/{devbox_id}/metadata", json={"blob": "x" * 4000}, headers=auth
        )
        assert json_too_big.status_code == 413
