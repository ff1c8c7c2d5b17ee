"""The running service's parts, opened and closed together (the app's lifespan)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections import Counter
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from devbox_service import data_dir as data_dir_modes
from devbox_service.auth.agent_tokens import AgentTokenService
from devbox_service.auth.service import ADMIN_KEY_FILE, IdentityService
from devbox_service.auth.store import IdentityStore
from devbox_service.auth.web_sessions import WebSessions
from devbox_service.backends.base import (
    InstanceState,
    VMBackend,
)
from devbox_service.data_dir import DataDirLock
from devbox_service.db import Database, open_database
from devbox_service.devbox_templates.events import RunEvents
from devbox_service.devbox_templates.runs import BuildRuns
from devbox_service.devbox_templates.service import TemplateService
from devbox_service.devbox_templates.store import TemplateStore
from devbox_service.devboxes.background import (
    GarbageCollector,
    StandbyPolicy,
    TtlReaper,
    VmWatch,
    recover,
)
from devbox_service.devboxes.checkpoints import CheckpointService
from devbox_service.devboxes.core import DevboxCore
from devbox_service.devboxes.disk_resizes import DiskResizes, DiskResizeStore
from devbox_service.devboxes.guests import GuestAccess
from devbox_service.devboxes.service import DevboxService
from devbox_service.devboxes.sizes import SizeLimits
from devbox_service.devboxes.snapshot_store import SnapshotStore
from devbox_service.devboxes.store import DevboxStore
from devbox_service.devboxes.uploads import UploadService
from devbox_service.devboxes.views import DevboxViews
from devbox_service.egress.proxy import EgressProxy, GuestApiRelay
from devbox_service.errors import ConfigError
from devbox_service.instances.service import InstanceService
from devbox_service.metrics import Gauges, RequestMetrics, exposition, vm_figures
from devbox_service.notifications.service import NotificationService
from devbox_service.notifications.store import NotificationStore
from devbox_service.previews.origins import origin_url
from devbox_service.previews.proxy import PreviewProxy
from devbox_service.previews.service import HttpServiceRegistry
from devbox_service.previews.store import HttpServiceStore
from devbox_service.secrets.box import SecretBox
from devbox_service.secrets.service import SecretService
from devbox_service.secrets.store import SecretStore
from devbox_service.settings import Settings
from devbox_service.sharing.service import SharingService
from devbox_service.sharing.store import AliasStore
from devbox_service.ssh.gateway import SSHGateway
from devbox_service.ssh.guest import GuestConnections
from devbox_service.tmux.remote import guest_opener
from devbox_service.tmux.service import TmuxService
from devbox_service.web.dashboard import Dashboard
from devbox_service.wiring import (
    admission,
    gateway_hosts,
    guest_api_socket,
    guest_proxy_socket,
    qemu_group,
)

log = logging.getLogger("devbox_service")


VM_HOST_CLAIM = "vm_host"
"""One process per store runs VMs (recovery and reapers act on every devbox of the store)."""


class Services:
    """Everything a request may need; built by `create_app`, started by its lifespan."""

    def __init__(
        self, settings: Settings, backend: VMBackend | None, *, owns_backend: bool
    ) -> None:
        self.settings = settings
        self.backend = backend
        self._owns_backend = owns_backend
        self._database: Database | None = None
        self._image_task: asyncio.Task[None] | None = None
        self.image_ready = asyncio.Event()
        self.gateway: SSHGateway | None = None
        self.requests = RequestMetrics()
        self.guest_api: GuestApiRelay | None = None
        self.guest_proxy: EgressProxy | None = None
        self._data_dir_lock: DataDirLock | None = None

    @property
    def database(self) -> Database:
        if self._database is None:
            raise RuntimeError("services are not started")
        return self._database

    async def _join_store(self, database: Database, data_dir: Path) -> SecretBox:
        """What this process must agree on with every other on the same store, before it
        serves: the key secrets are sealed with, and that only one of them runs VMs."""
        secret_box = SecretBox.open(data_dir)
        await SecretStore(database).bind_key(secret_box.fingerprint)
        if self.backend is not None and not await database.claim_sole(VM_HOST_CLAIM):
            raise ConfigError(
                "another process on this database already runs the VMs: start this one with "
                "DEVBOX_VM_BACKEND=none (a replica serving the API) or give it its own database"
            )
        return secret_box

    async def start(self) -> None:
        data_dir = Path(self.settings.data_dir)
        data_dir_modes.secure(data_dir)  # 0700 / 0600 whatever it was, and the umask
        self._data_dir_lock = DataDirLock.acquire(data_dir, "serve")
        settings = self.settings
        self._database = await open_database(settings.database_url, settings.database_path)
        try:
            self.secret_box = await self._join_store(self._database, data_dir)
        except BaseException:
            await self._database.close()
            self._database = None
            self._data_dir_lock.release()
            self._data_dir_lock = None
            raise
        self.identities = IdentityService(IdentityStore(self._database))
        self.web_sessions = WebSessions(self.identities, self.settings.web_session_hours * 3600)
        self.guest_connections = GuestConnections()
        database = self._database
        devbox_store, snapshot_store = DevboxStore(database), SnapshotStore(database)
        self.admission = admission(self.settings, devbox_store, snapshot_store, database)
        self.devbox_core = core = DevboxCore(
            devbox_store, snapshot_store, self.backend, self.secret_box, self.admission
        )
        self.guest_access = GuestAccess(
            core,
            self.guest_connections,
            self.identities.is_member,
            self.identities.authenticate,
        )
        self.previews = HttpServiceRegistry(
            HttpServiceStore(database),
            core,
            self.guest_access,
            self.identities,
            origin_url(self.settings.base_url, self.settings.preview_origin_domain),
        )
        self.devbox_views = DevboxViews(core, self.previews)
        self.checkpoints = CheckpointService(core, self.devbox_views)
        self.devboxes = DevboxService(core, self.devbox_views, self.checkpoints)
        sizes = SizeLimits(
            max_vcpus=self.settings.vm_max_vcpus,
            max_memory_mb=self.settings.vm_max_memory_mb,
            max_disk_mb=self.settings.vm_max_disk_mb,
        )
        self.disk_resizes = DiskResizes(core, DiskResizeStore(database), sizes)
        self.instances = InstanceService(
            self.devboxes,
            self.checkpoints,
            self.previews,
            self.guest_access,
            self.guest_connections,
            sizes,
            self.disk_resizes,
            image_disk_mb=self.settings.vm_disk_mb,
            exec_output_max_bytes=self.settings.exec_output_max_bytes,
        )
        self.uploads = UploadService(self.guest_access, self.settings.upload_max_bytes)
        self.standby = StandbyPolicy(core, self.settings.standby_after_seconds)
        self.vm_watch = VmWatch(core)
        self.garbage = GarbageCollector(core, self.settings.gc_interval_seconds)
        self.ttl_reaper = TtlReaper(core, self.devboxes.expire)
        self.snapshot_reaper = TtlReaper(core, self.checkpoints.expire_snapshots, interval=5.0)
        self.preview_proxy = PreviewProxy()
        self.agent_tokens = AgentTokenService(
            self.identities.agent_tokens,
            self.devboxes,
            self.guest_access,
            self.settings.guest_base_url,
        )
        self.secrets = SecretService(
            SecretStore(database), self.secret_box, self.identities.agent_tokens
        )
        self.notifications = NotificationService(NotificationStore(database), self.devboxes)
        self.tmux = TmuxService(
            self.guest_access, guest_opener(self.guest_connections, data_dir / "run" / "tmux")
        )
        template_store = TemplateStore(database)
        run_events = RunEvents(template_store)
        self.template_runs = BuildRuns(
            template_store,
            run_events,
            devboxes=self.devboxes,
            checkpoints=self.checkpoints,
            views=self.devbox_views,
            guests=self.guest_access,
            shell=self.guest_connections,
            secrets=self.secrets,
            previews=self.previews,
            secret_wait=self.settings.template_secret_wait_seconds,
        )
        self.templates = TemplateService(
            template_store,
            run_events,
            self.template_runs,
            devboxes=self.devboxes,
            checkpoints=self.checkpoints,
            guests=self.guest_access,
            secrets=self.secrets,
            previews=self.previews,
        )
        core.snapshot_keepers.append(self.templates.step_snapshots)
        self.admission.unlisted_snapshots.append(self.templates.step_snapshot_count)
        self.sharing = SharingService(AliasStore(database), self.templates, self.settings.base_url)
        self.dashboard = Dashboard(
            devboxes=self.devboxes,
            views=self.devbox_views,
            checkpoints=self.checkpoints,
            agent_tokens=self.agent_tokens,
            guests=self.guest_access,
            tmux=self.tmux,
            identities=self.identities,
            previews=self.previews,
        )
        issued = await self.identities.bootstrap(data_dir)
        if issued is not None:
            print(
                f"\nFirst start: created user 'admin' in org 'default'.\n"
                f"Admin API key (shown once, also in {data_dir / ADMIN_KEY_FILE}):\n\n"
                f"    {issued.key}\n",
                file=sys.stdout,
                flush=True,
            )
        if self.backend is not None:
            guest_of = self.backend.instance_of_guest
            shared_gid = qemu_group(self.settings)
            self.guest_api = GuestApiRelay(
                guest_api_socket(self.settings),
                self.settings.host,
                self.settings.port,
                guest_of=guest_of,
                shared_gid=shared_gid,
            )
            self.guest_proxy = EgressProxy(
                guest_proxy_socket(self.settings),
                ports=self.settings.egress_port_set,
                guest_of=guest_of,
                shared_gid=shared_gid,
            )
            await self.guest_api.start()
            await self.guest_proxy.start()
            if self._owns_backend:
                await self.backend.start()
            await recover(core)
            await self.disk_resizes.settle_unfinished()
            await self.template_runs.recover()
            self.gateway = SSHGateway(
                self.guest_access,
                hosts=gateway_hosts(self.settings.host),
                port=self.settings.ssh_port,
                host_key_dir=data_dir / "ssh",
            )
            await self.gateway.start()
            self.standby.start()
            self.vm_watch.start()
            self.garbage.start()
            self.ttl_reaper.start()
            self.snapshot_reaper.start()
            self._image_task = asyncio.create_task(self._ensure_image())

    async def _ensure_image(self) -> None:
        assert self.backend is not None
        try:
            image = await self.backend.ensure_image(lambda line: log.info(line))
        except Exception:
            log.exception("building the default image failed; devboxes cannot start")
            return
        log.info("image ready", extra={"image": image.id, "boot_snapshot": image.boot_snapshot_id})
        self.image_ready.set()

    async def metrics(self) -> str:
        """Prometheus text: the request histograms and the state of devboxes and VMs."""
        statuses = Counter(r.status.value for r in await self.devboxes.all_records())
        vms = await vm_figures(self.backend)
        gauges = Gauges(
            devboxes_by_status=statuses,
            vms_by_state=vms.by_state,
            vm_memory_mb=round(vms.memory_mb, 1),
            warm_pool_mb=round(vms.warm_pool_mb, 1),
            snapshots=await self.checkpoints.count_all(),
            snapshot_bytes=vms.snapshot_bytes,
            ssh_sessions=self.gateway.session_count if self.gateway else 0,
            tmux_guests=self.tmux.guest_count,
            builds_running=self.template_runs.active_count,
        )
        return exposition([self.requests.render(), *gauges.blocks])

    @property
    def ssh_port(self) -> int:
        """The SSH gateway's port (the one it bound when the setting asks for any)."""
        return self.gateway.port if self.gateway else self.settings.ssh_port

    async def readiness(self) -> dict[str, bool]:
        checks = {"store": self._database is not None and await self._database.ping()}
        if self.backend is not None:
            checks["backend"] = self.image_ready.is_set()
        return checks

    async def close(self) -> None:
        """Every part in turn, each with a deadline: a stop must end in bounded time (VMs keep
        running and are adopted at the next start; interrupted work is settled then)."""
        if self.gateway is not None:
            await _bounded("SSH gateway", self.gateway.close())
            self.gateway = None
        if self._database is not None:
            await _bounded("tmux", self.tmux.close())
            await _bounded("template builds", self.template_runs.close())
            await _bounded("standby policy", self.standby.close())
            await _bounded("VM watch", self.vm_watch.close())
            await _bounded("garbage collection", self.garbage.close())
            await _bounded("TTLs", self.ttl_reaper.close())
            await _bounded("snapshot TTLs", self.snapshot_reaper.close())
            await _bounded("devbox tasks", self.devbox_core.close())
            await _bounded("guest connections", self.guest_connections.close())
            await _bounded("preview proxy", self.preview_proxy.close())
            if self.backend is not None and self._owns_backend:
                await _bounded("the stop report", self._report_vms_kept())
        if self._image_task is not None:
            self._image_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._image_task
        if self.backend is not None and self._owns_backend:
            await self.backend.close()
        for egress in (self.guest_api, self.guest_proxy):
            if egress is not None:
                await egress.close()
        if self._database is not None:
            await self._database.close()
            self._database = None
        if self._data_dir_lock is not None:
            self._data_dir_lock.release()
            self._data_dir_lock = None

    async def _report_vms_kept(self) -> None:
        """Say on stdout which devboxes keep their VMs running past this stop (by design:
        the next start adopts them) and how to end them on purpose."""
        assert self.backend is not None
        live = (InstanceState.RUNNING, InstanceState.PAUSED)  # a process (standby has none)
        with_process = {i.id for i in await self.backend.list_instances() if i.state in live}
        kept = [r for r in await self.devboxes.all_records() if r.id in with_process]
        if not kept:
            print("devbox-service stopped; no devbox VM is left running.", flush=True)
            return
        lines = [f"    {r.id}  {r.status:<12} {r.name}" for r in kept]
        print(
            f"devbox-service stopped. {len(kept)} devbox VM(s) keep running, adopted at the "
            "next start:\n" + "\n".join(lines) + "\nTo end them too: `devbox-service "
            "stop-vms` (memory saved to disk; each wakes on resume, SSH or a preview), or "
            "delete the devboxes before stopping.",
            flush=True,
        )


CLOSE_STEP_TIMEOUT = 5.0


async def _bounded(part: str, closing: Coroutine[Any, Any, None]) -> None:
    try:
        await asyncio.wait_for(closing, CLOSE_STEP_TIMEOUT)
    except TimeoutError:
        log.warning("stopping %s took too long; going on", part)
    except Exception:
        log.exception("stopping %s failed; going on", part)
