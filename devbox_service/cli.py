"""`devbox-service`: serve, and manage users, organizations and API keys offline."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

from devbox_service.auth.models import Org, Role, User
from devbox_service.auth.service import ADMIN_KEY_FILE, IdentityService
from devbox_service.auth.store import IdentityStore
from devbox_service.backup import backup, restore
from devbox_service.data_dir import held
from devbox_service.db import open_database
from devbox_service.devboxes.quotas import LimitStore
from devbox_service.errors import (
    ConfigError,
    DevboxServiceError,
    InvalidInput,
    NotFound,
    Unavailable,
)
from devbox_service.settings import Settings, load_settings


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="devbox-service", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("serve", help="run the HTTP API and the SSH gateway")
    image = commands.add_parser("image", help="guest images").add_subparsers(
        dest="action", required=True
    )
    image.add_parser("build", help="build the default image and its boot snapshot (cached)")
    commands.add_parser(
        "gc", help="remove VM files nothing references (asks the running service to do it)"
    )
    commands.add_parser(
        "stop-vms",
        help="end every devbox VM left running after a stop (memory saved to disk; each "
        "wakes on resume, SSH or a preview at the next serve); the service must be stopped",
    )
    save = commands.add_parser(
        "backup", help="write the service's state (database and keys) to FILE, while serving"
    )
    save.add_argument("file", type=Path)
    load = commands.add_parser(
        "restore", help="restore a backup into DEVBOX_DATA_DIR (which must hold no database)"
    )
    load.add_argument("file", type=Path)

    keys = commands.add_parser("keys", help="API keys").add_subparsers(dest="action", required=True)
    create = keys.add_parser("create", help="issue a key (printed once)")
    create.add_argument("--user", required=True)
    create.add_argument("--org", help="org the key acts in (default: the user's first)")
    create.add_argument("--name", default="", help="a label for `keys list`")
    keys.add_parser("list", help="list keys (never their secret)")
    revoke = keys.add_parser("revoke", help="revoke a key by id")
    revoke.add_argument("key_id")

    users = commands.add_parser("users", help="users").add_subparsers(dest="action", required=True)
    add_user = users.add_parser("create", help="create a user (and their own org unless --org)")
    add_user.add_argument("name")
    add_user.add_argument("--org", help="join this existing org instead of creating one")
    add_user.add_argument("--role", choices=[r.value for r in Role], default=Role.MEMBER.value)
    add_user.add_argument("--admin", action="store_true", help="service administrator")
    users.add_parser("list")

    orgs = commands.add_parser("orgs", help="organizations").add_subparsers(
        dest="action", required=True
    )
    add_org = orgs.add_parser("create")
    add_org.add_argument("name")
    add_org.add_argument("--owner", required=True)
    orgs.add_parser("list", help="organizations and their members")
    limits = commands.add_parser("limits", help="per-user and per-org limits").add_subparsers(
        dest="action", required=True
    )
    for action, text in (("show", "the limits in force"), ("set", "override some limits")):
        limit = limits.add_parser(action, help=text)
        who = limit.add_mutually_exclusive_group(required=True)
        who.add_argument("--user", help="a user's name")
        who.add_argument("--org", help="an organization's name")
        if action == "set":
            for name in ("devboxes", "snapshots", "disk-mb"):
                limit.add_argument(f"--{name}", type=int, help=f"at most this many {name}")
    leave = orgs.add_parser("remove-member", help="remove a member (their credentials stop)")
    leave.add_argument("org")
    leave.add_argument("user")
    member = orgs.add_parser("add-member", help="add or change a member's role")
    member.add_argument("org")
    member.add_argument("user")
    member.add_argument("--role", choices=[r.value for r in Role], default=Role.MEMBER.value)
    return parser


async def _with_identities(
    settings: Settings, action: Callable[[IdentityService], Awaitable[None]]
) -> None:
    database = await open_database(settings.database_url, settings.database_path)
    try:
        await action(IdentityService(IdentityStore(database)))
    finally:
        await database.close()


async def _limits(settings: Settings, args: argparse.Namespace) -> None:
    from devbox_service.devboxes.quotas import LimitOverride, Scope
    from devbox_service.wiring import offline_admission

    database = await open_database(settings.database_url, settings.database_path)
    try:
        store = IdentityStore(database)
        found: User | Org | None
        if args.user:
            scope, found = Scope.USER, await store.user_by_name(args.user)
        else:
            scope, found = Scope.ORG, await store.org_by_name(args.org)
        if found is None:
            raise NotFound.of(scope.value, args.user or args.org)
        checks = offline_admission(settings, database)
        if args.action == "set":
            current = await checks.limits_for(scope, found.id)
            await LimitStore(database).set(
                LimitOverride(
                    scope=scope,
                    subject_id=found.id,
                    devboxes=_given(args.devboxes, current.devboxes),
                    snapshots=_given(args.snapshots, current.snapshots),
                    disk_mb=_given(args.disk_mb, current.disk_mb),
                )
            )
        limits = await checks.limits_for(scope, found.id)
        print(
            f"{scope.value} {found.name}: devboxes {limits.devboxes}, "
            f"snapshots {limits.snapshots}, disk {limits.disk_mb} MB"
        )
    finally:
        await database.close()


def _given(value: int | None, current: int) -> int:
    if value is not None and value < 0:
        raise InvalidInput(f"a limit cannot be negative ({value})")
    return current if value is None else value


async def _manage(settings: Settings, args: argparse.Namespace) -> None:
    async def run(identities: IdentityService) -> None:
        match (args.command, args.action):
            case ("keys", "create"):
                issued = await identities.issue_key(args.user, org=args.org, name=args.name)
                print(f"{issued.record.id}\t{issued.record.user_name}@{issued.record.org_name}")
                print(issued.key)
            case ("keys", "list"):
                for key in await identities.keys():
                    state = "revoked" if key.revoked_at else "active"
                    print(
                        f"{key.id}\t{key.prefix}…\t{key.user_name}@{key.org_name}\t{state}\t{key.name}"
                    )
            case ("keys", "revoke"):
                await identities.revoke_key(args.key_id)
                print(f"revoked {args.key_id}")
            case ("users", "create"):
                user = await identities.create_user(
                    args.name, org=args.org, role=Role(args.role), is_admin=args.admin
                )
                print(f"{user.id}\t{user.name}")
            case ("users", "list"):
                for user in await identities.store.users():
                    print("\t".join([user.id, user.name, "admin" if user.is_admin else ""]))
            case ("orgs", "create"):
                org = await identities.create_org(args.name, owner=args.owner)
                print(f"{org.id}\t{org.name}")
            case ("orgs", "list"):
                for m in await identities.store.memberships():
                    print(f"{m.org_name}\t{m.user_name}\t{m.role}")
            case ("orgs", "remove-member"):
                await identities.remove_member(args.org, args.user)
                print(f"removed {args.user} from {args.org}")
            case ("orgs", "add-member"):
                m = await identities.add_member(args.org, args.user, Role(args.role))
                print(f"{m.org_name}\t{m.user_name}\t{m.role}")

    await _with_identities(settings, run)


async def _build_image(settings: Settings) -> None:
    from devbox_service.wiring import build_backend

    backend = build_backend(settings)
    if backend is None:
        print("DEVBOX_VM_BACKEND=none: no image to build")
        return
    await backend.start()
    try:
        image = await backend.ensure_image(lambda line: print(line, flush=True))
        print(f"image {image.id} ready (boot snapshot {image.boot_snapshot_id})")
    finally:
        await backend.close()


SHUTDOWN_GRACE_SECONDS = 10
"""On SIGTERM: requests in flight get this long; endless ones (event streams) then end."""


def _serve(settings: Settings) -> None:
    import uvicorn

    from devbox_service.app import create_app
    from devbox_service.logs import configure_logging

    configure_logging(settings.log_level)
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=SHUTDOWN_GRACE_SECONDS,  # open streams must not hold a stop
    )


def _collect_garbage(settings: Settings) -> None:
    """The service owns the VM files while it runs, so it does the collecting; this asks it
    with the administrator's key and prints what it removed."""
    key_file = Path(settings.data_dir) / ADMIN_KEY_FILE
    if not key_file.exists():
        raise ConfigError(f"gc needs the administrator's key in {key_file}")
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host
    url = f"http://{host}:{settings.port}/api/admin/gc"
    request = urllib.request.Request(
        url, method="POST", headers={"Authorization": f"Bearer {key_file.read_text().strip()}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=600) as answer:
            report = json.load(answer)
    except urllib.error.URLError as exc:
        raise Unavailable(
            f"the service does not answer at {url} ({exc.reason}): garbage collection runs "
            "inside it; start it with `devbox-service serve`"
        ) from None
    for removed in report["removed"]:
        print(f"{removed['bytes'] / 2**20:10.1f} MB  {removed['path']}  ({removed['why']})")
    print(f"freed {report['freed_bytes'] / 2**20:.1f} MB in {len(report['removed'])} files")


async def _stop_vms(settings: Settings) -> int:
    """Every VM process of this data dir ends: devboxes go to standby (paused, memory on
    disk), anything that cannot be saved is stopped (disk kept). 1 if any was stopped."""
    from devbox_service.backends.base import InstanceState
    from devbox_service.devboxes.background import standby_all
    from devbox_service.wiring import build_backend, offline_core

    data_dir = Path(settings.data_dir)
    backend = build_backend(settings)
    if backend is None or (not settings.database_url and not settings.database_path.exists()):
        print("no VMs: nothing to stop")
        return 0
    with held(data_dir, "stop-vms"):
        database = await open_database(settings.database_url, settings.database_path)
        try:
            await backend.start()  # adopts the VMs an earlier serve left running
            for record in await standby_all(offline_core(settings, database, backend)):
                print(f"{record.id}  standby (paused, memory on disk)  {record.name}")
            lost = 0
            for instance in await backend.list_instances():
                if instance.state in (InstanceState.RUNNING, InstanceState.PAUSED):
                    await backend.stop(instance.id)
                    lost += 1
                    print(f"{instance.id}  stopped (could not be saved: its memory is lost)")
        finally:
            await backend.close()
            await database.close()
    print("no devbox VM is running now" + (f"; {lost} lost their memory" if lost else ""))
    return 1 if lost else 0


async def _restore(settings: Settings, source: Path) -> None:
    data_dir = Path(settings.data_dir)
    with held(data_dir, "restore"):
        summary = restore(source, data_dir)
        # migrations, as at any start
        database = await open_database(settings.database_url, settings.database_path)
        version = await database.schema_version()
        await database.close()
    print(f"restored {summary.describe()} into {data_dir} (schema now {version})")
    print("VM files are not in a backup: devboxes without theirs show `error` at the next start")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = load_settings()
        if args.command == "serve":
            _serve(settings)
        elif args.command == "image":
            asyncio.run(_build_image(settings))
        elif args.command == "gc":
            _collect_garbage(settings)
        elif args.command == "stop-vms":
            return asyncio.run(_stop_vms(settings))
        elif args.command in ("backup", "restore") and settings.database_url:
            print(
                f"devbox-service: {args.command} is for the embedded SQLite store; with "
                "DEVBOX_DATABASE_URL set, use PostgreSQL's pg_dump and pg_restore (and copy "
                "secret-box.key from the data dir)",
                file=sys.stderr,
            )
            return 2
        elif args.command == "backup":
            summary = backup(Path(settings.data_dir), args.file)
            print(f"backed up {summary.describe()} to {args.file}")
            print("it holds the key to every secret: keep it as safe as the data dir")
        elif args.command == "restore":
            asyncio.run(_restore(settings, args.file))
        elif args.command == "limits":
            asyncio.run(_limits(settings, args))
        else:
            asyncio.run(_manage(settings, args))
    except ConfigError as exc:
        print(f"devbox-service: configuration error: {exc}", file=sys.stderr)
        return 2
    except DevboxServiceError as exc:
        print(f"devbox-service: {exc.message}", file=sys.stderr)
        return 1
    return 0
