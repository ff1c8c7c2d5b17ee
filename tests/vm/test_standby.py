"""A devbox paused long enough goes to standby (no VM process, memory on disk) and comes
back with its processes when resumed or saved."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from support import Api, create_devbox, guest, vm_service, vm_settings
from vm_fixtures import qemu_pid

from devbox_service.backends.base import InstanceState

pytestmark = pytest.mark.vm


async def wait_standby(api: Api, devbox_id: str) -> None:
    deadline = time.monotonic() + 120
    while (await api.services.devbox_core.backend.get_instance(devbox_id)).state is not (
        InstanceState.STANDBY
    ):
        assert time.monotonic() < deadline, "the paused devbox never went to standby"
        await asyncio.sleep(0.2)


async def test_paused_devbox_goes_to_standby_and_comes_back_whole(tmp_path: Path) -> None:
    settings = vm_settings(tmp_path / "data", standby_after_seconds=1.0)
    async with vm_service(settings) as api:
        client, auth = api.client, api.auth(api.admin_key)
        image = next(i for i in (await client.get("/api/images", headers=auth)).json()["data"])
        devbox_id = (await create_devbox(api, image["id"]))["id"]
        await guest(
            api,
            devbox_id,
            "echo kept > /root/standby-marker && "
            "tmux new-session -d -s keep 'sh -c \"while :; do sleep 1; done\"'",
        )
        try:
            data_dir = Path(api.services.settings.data_dir)
            pid = qemu_pid(data_dir, devbox_id)
            assert pid is not None
            await client.post(f"/api/devboxes/{devbox_id}/pause", headers=auth)
            await wait_standby(api, devbox_id)
            assert qemu_pid(data_dir, devbox_id) is None
            assert not Path(f"/proc/{pid}").exists(), "the VM process still runs in standby"
            record = (await client.get(f"/api/devboxes/{devbox_id}", headers=auth)).json()
            assert record["status"] == "paused"

            resumed = await client.post(f"/api/devboxes/{devbox_id}/resume", headers=auth)
            assert resumed.status_code == 200 and resumed.json()["status"] == "ready"
            assert await guest(api, devbox_id, "cat /root/standby-marker") == "kept\n"
            assert "keep" in await guest(api, devbox_id, "tmux list-sessions -F '#S'")

            await client.post(f"/api/devboxes/{devbox_id}/pause", headers=auth)
            await wait_standby(api, devbox_id)
            saved = await client.post(
                f"/api/devboxes/{devbox_id}/save", json={"name": "cold"}, headers=auth
            )
            assert saved.status_code == 200 and saved.json()["status"] == "ready"
            after = (await client.get(f"/api/devboxes/{devbox_id}", headers=auth)).json()
            assert after["status"] == "paused"
        finally:
            await client.delete(f"/api/devboxes/{devbox_id}", headers=auth)
