"""SQL for templates, their runs, the runs' events and the per-step snapshot cache."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from typing import Any

from devbox_service.db import Database, Transaction
from devbox_service.db.records import Table
from devbox_service.devbox_templates.models import RunRecord, RunStatus, TemplateRecord

RUN_EVENTS = "run_events"
"""The topic a stored build event announces (its key: the run id)."""


TEMPLATES = Table("templates", TemplateRecord)
RUNS = Table("template_runs", RunRecord)


class TemplateStore:
    def __init__(self, database: Database) -> None:
        self.database = database

    # templates

    async def insert(self, template: TemplateRecord) -> None:
        async with self.database.transaction() as tx:
            await TEMPLATES.insert(tx, template)

    async def get(self, template_id: str) -> TemplateRecord | None:
        row = await self.database.fetch_one("SELECT * FROM templates WHERE id = ?", (template_id,))
        return TEMPLATES.decode(row) if row else None

    async def by_hash(self, org_id: str, content_hash: str) -> TemplateRecord | None:
        row = await self.database.fetch_one(
            "SELECT * FROM templates WHERE org_id = ? AND content_hash = ? "
            "ORDER BY updated_at DESC LIMIT 1",
            (org_id, content_hash),
        )
        return TEMPLATES.decode(row) if row else None

    async def for_org(self, org_id: str) -> list[TemplateRecord]:
        rows = await self.database.fetch_all(
            "SELECT * FROM templates WHERE org_id = ? ORDER BY created_at", (org_id,)
        )
        return TEMPLATES.decode_all(rows)

    async def update(self, template_id: str, **fields: object) -> None:
        values = TEMPLATES.encode_partial({**fields, "updated_at": time.time()})
        assignments = ", ".join(f"{name} = ?" for name in values)
        await self.database.execute(
            f"UPDATE templates SET {assignments} WHERE id = ?", (*values.values(), template_id)
        )

    async def set_spec(self, template_id: str, yaml: str, spec_json: str) -> None:
        """Keep the parsed spec of a row written before specs were stored (only while its
        YAML is still the one parsed; `updated_at` unchanged: nothing the user sees changed)."""
        await self.database.execute(
            "UPDATE templates SET spec_json = ? WHERE id = ? AND yaml = ? AND spec_json IS NULL",
            (spec_json, template_id, yaml),
        )

    async def delete(self, template_id: str) -> None:
        await self.database.execute("DELETE FROM templates WHERE id = ?", (template_id,))

    # runs

    async def insert_run(self, run: RunRecord) -> None:
        async with self.database.transaction() as tx:
            await RUNS.insert(tx, run)
            await tx.execute(
                "UPDATE templates SET run_id = ?, status = 'caching', updated_at = ? WHERE id = ?",
                (run.id, run.created_at, run.template_id),
            )

    async def run(self, run_id: str) -> RunRecord | None:
        row = await self.database.fetch_one("SELECT * FROM template_runs WHERE id = ?", (run_id,))
        return RUNS.decode(row) if row else None

    async def active_runs(self) -> list[RunRecord]:
        rows = await self.database.fetch_all(
            "SELECT * FROM template_runs WHERE status IN (?, ?)",
            (RunStatus.RUNNING.value, RunStatus.AWAITING_INPUT.value),
        )
        return RUNS.decode_all(rows)

    async def update_run(self, run_id: str, **fields: object) -> None:
        async with self.database.transaction() as tx:
            await _set_run(tx, run_id, fields)

    # events

    async def append_event(
        self, run_id: str, seq: int, payload: dict[str, Any], **run_fields: object
    ) -> None:
        """Store one build event, and `run_fields` of its run in the same transaction (a
        run's end and its last event are one fact: a follower never sees one alone); its
        followers in every process hear `RUN_EVENTS`."""
        async with self.database.transaction() as tx:
            await tx.execute(
                "INSERT INTO template_run_events (run_id, seq, payload, created_at) "
                "VALUES (?, ?, ?, ?)",
                (run_id, seq, json.dumps(payload), time.time()),
            )
            if run_fields:
                await _set_run(tx, run_id, run_fields)
            tx.announce(RUN_EVENTS, run_id)

    async def events(self, run_id: str, after: int = 0) -> list[tuple[int, dict[str, Any]]]:
        rows = await self.database.fetch_all(
            "SELECT seq, payload FROM template_run_events WHERE run_id = ? AND seq > ? "
            "ORDER BY seq",
            (run_id, after),
        )
        return [(row["seq"], json.loads(row["payload"])) for row in rows]

    # the step cache

    async def cached(self, org_id: str, fingerprints: Iterable[str]) -> dict[str, str]:
        """fingerprint -> snapshot id, for those of `fingerprints` that are cached."""
        wanted = list(dict.fromkeys(fingerprints))
        if not wanted:
            return {}
        marks = ",".join("?" * len(wanted))
        rows = await self.database.fetch_all(
            f"SELECT fingerprint, snapshot_id FROM template_step_cache "
            f"WHERE org_id = ? AND fingerprint IN ({marks})",
            (org_id, *wanted),
        )
        return {row["fingerprint"]: row["snapshot_id"] for row in rows}

    async def cache_step(self, org_id: str, fingerprint: str, snapshot_id: str) -> None:
        await self.database.execute(
            "INSERT INTO template_step_cache (org_id, fingerprint, snapshot_id, created_at) "
            "VALUES (?, ?, ?, ?) ON CONFLICT (org_id, fingerprint) DO UPDATE SET "
            "snapshot_id = excluded.snapshot_id, created_at = excluded.created_at",
            (org_id, fingerprint, snapshot_id, time.time()),
        )

    async def cache_entries(self, org_id: str | None = None) -> list[tuple[str, str, str]]:
        """(org id, fingerprint, snapshot id) of every cached step (of one org)."""
        rows = await self.database.fetch_all(
            "SELECT org_id, fingerprint, snapshot_id FROM template_step_cache "
            "WHERE CAST(? AS TEXT) IS NULL OR org_id = ?",
            (org_id, org_id),
        )
        return [(r["org_id"], r["fingerprint"], r["snapshot_id"]) for r in rows]

    async def forget_steps(self, org_id: str, fingerprints: Iterable[str]) -> None:
        async with self.database.transaction() as tx:
            for fingerprint in fingerprints:
                await tx.execute(
                    "DELETE FROM template_step_cache WHERE org_id = ? AND fingerprint = ?",
                    (org_id, fingerprint),
                )


async def _set_run(tx: Transaction, run_id: str, fields: dict[str, object]) -> None:
    values = RUNS.encode_partial(fields)
    assignments = ", ".join(f"{name} = ?" for name in values)
    await tx.execute(
        f"UPDATE template_runs SET {assignments} WHERE id = ?", (*values.values(), run_id)
    )
