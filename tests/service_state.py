"""A service's state as users made it, through the HTTP API only, and the check that a
service serves the same state: for backup/restore and for data dirs of earlier releases.

Only routes of the public contract are used, so that this also runs against an earlier
release's code: `python tests/service_state.py DIR` (from a checkout of that release, with
this file copied in) writes such a data dir to DIR and its facts to DIR/facts.json. That is
how `fixtures/data-dirs/` were made (their README says at which commit).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
from pathlib import Path
from typing import Any

from litestar.testing import AsyncTestClient

SECRET_VALUE = "sk-restore-me-0123456789"
TEMPLATE_YAML = "name: kept\nsteps:\n  - title: make a file\n    run: touch /tmp/x\n"
Facts = dict[str, Any]


async def populate(client: AsyncTestClient[Any], admin_key: str) -> Facts:
    """Make one of everything a restore must keep; the facts to check it by."""
    admin = {"Authorization": f"Bearer {admin_key}"}
    images = (await client.get("/api/images", headers=admin)).json()["data"]
    image = next(i for i in images if i["default"])["id"]
    put = await client.put(
        "/api/user-secrets/RESTORED", json={"value": SECRET_VALUE}, headers=admin
    )
    assert put.status_code == 200, put.text
    created = await client.post(
        "/api/templates",
        json={"name": "kept", "yaml": TEMPLATE_YAML, "baseSnapshotOption": image},
        headers=admin,
    )
    assert created.status_code in (200, 201), created.text
    template_id = created.json()["id"]
    shared = await client.post(
        f"/api/templates/{template_id}/share", json={"alias": "kept-alias"}, headers=admin
    )
    assert shared.status_code == 200, shared.text
    booted = await client.post(
        "/api/devboxes", params={"snapshot_id": image}, json={"name": "kept-box"}, headers=admin
    )
    assert booted.status_code == 200, booted.text
    devbox_id = booted.json()["id"]
    for _ in range(2000):
        status = (await client.get(f"/api/devboxes/{devbox_id}", headers=admin)).json()["status"]
        if status == "ready":
            break
        assert status == "provisioning", status
        await asyncio.sleep(0.05)
    saved = await client.post(
        f"/api/devboxes/{devbox_id}/save", json={"name": "kept-save"}, headers=admin
    )
    assert saved.status_code == 200, saved.text
    return {
        "admin_key": admin_key,
        "devbox_id": devbox_id,
        "snapshot_id": saved.json()["id"],
        "template_id": template_id,
        "alias": "kept-alias",
    }


async def check_served(client: AsyncTestClient[Any], facts: Facts, *, vms_kept: bool) -> None:
    """The service answers with the state `populate` made: keys, devboxes, templates,
    aliases and the secret's value (sealed with the installation's key). With the VM files
    kept, the devbox runs and its saved snapshot is there; without them the devbox says its
    VM is lost (and the snapshot, whose files are gone, is no longer offered)."""
    admin = {"Authorization": f"Bearer {facts['admin_key']}"}
    listed = await client.get("/api/devboxes", headers=admin)
    assert listed.status_code == 200, listed.text  # the key still authenticates
    devboxes = {d["id"]: d for d in listed.json()["data"]}
    devbox = devboxes[facts["devbox_id"]]
    snapshots = [
        s["id"] for s in (await client.get("/api/snapshots", headers=admin)).json()["data"]
    ]
    if vms_kept:
        assert devbox["status"] == "ready", devbox
        assert facts["snapshot_id"] in snapshots
    else:
        assert devbox["status"] == "error", devbox
    template = await client.get(f"/api/templates/{facts['template_id']}", headers=admin)
    assert template.status_code == 200 and template.json()["yaml"] == TEMPLATE_YAML
    alias = await client.get(f"/api/aliases/{facts['alias']}", headers=admin)
    assert alias.status_code == 200 and alias.json()["template_id"] == facts["template_id"]
    secret = await client.get("/api/user-secrets/RESTORED", headers=admin)
    assert secret.status_code == 200 and secret.json()["value"] == SECRET_VALUE


async def _write(target: Path) -> None:
    from devbox_service.app import create_app
    from devbox_service.settings import load_settings

    try:
        from devbox_service.backends.memory import MemoryBackend
    except ImportError:  # a release from before the fake moved from tests/ into the package
        sys.path.insert(0, str(Path(__file__).parent))
        from memory_backend import MemoryBackend  # type: ignore[no-redef]

    backend = MemoryBackend()
    await backend.start()
    await backend.ensure_image()
    settings = load_settings(environ={}, data_dir=str(target), vm_backend="qemu", ssh_port=0)
    async with AsyncTestClient(create_app(settings, backend=backend)) as client:
        while (await client.get("/health/ready")).status_code != 200:
            await asyncio.sleep(0.05)
        facts = populate(client, (target / "admin.key").read_text().strip())
        (target / "facts.json").write_text(json.dumps(await facts, indent=2) + "\n")
    shutil.rmtree(target / "run", ignore_errors=True)  # sockets: a running service's


if __name__ == "__main__":
    asyncio.run(_write(Path(sys.argv[1]).resolve()))
