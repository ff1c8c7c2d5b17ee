"""Share links: who may name a template with an alias, who sees it, and finding one.

An alias belongs to the organization whose template it first named, not to the user who made
it: only members of that organization touch it, and of those only its creator and the org's
owners and admins move it to another template (of that organization) or delete it. A member
who leaves the organization leaves its aliases behind."""

from __future__ import annotations

import datetime
import time

import msgspec

from devbox_service.auth.models import Principal
from devbox_service.auth.policy import Act, authorize, permits
from devbox_service.devbox_templates.instant import SecretConsent
from devbox_service.devbox_templates.schemas import InstantDevboxRequest, TemplateDetail
from devbox_service.devbox_templates.service import TemplateService
from devbox_service.devboxes.schemas import DevboxResponse
from devbox_service.errors import Conflict, NotFound, PermissionDenied
from devbox_service.sharing.models import (
    AliasRecord,
    AliasResponse,
    AliasSearchItem,
    Match,
    StepPreview,
    TemplateShareRequest,
    TemplateShareResponse,
    Visibility,
)
from devbox_service.sharing.store import AliasStore

SHARE_PREFIX = "/s"


class SharePage(msgspec.Struct, frozen=True, kw_only=True):
    """What a share link's page shows: the template, and how to reach the service."""

    alias: str
    description: str
    template: TemplateDetail
    base_url: str
    consent: SecretConsent | None  # what to ask before the visitor's secrets go in; None: theirs


def _iso(epoch: float) -> str:
    return datetime.datetime.fromtimestamp(epoch, datetime.UTC).isoformat()


class SharingService:
    def __init__(self, store: AliasStore, templates: TemplateService, base_url: str) -> None:
        self._store = store
        self._templates = templates
        self._base_url = base_url.rstrip("/")

    def url(self, alias: str) -> str:
        return f"{self._base_url}{SHARE_PREFIX}/{alias}"

    async def share(
        self, principal: Principal, template_id: str, request: TemplateShareRequest
    ) -> TemplateShareResponse:
        """Name a template of the caller's org; sharing again moves the alias (to another
        template of the alias's org, by its creator or an org owner/admin). Raises NotFound
        (template), Conflict (another organization's alias), PermissionDenied (a member who
        may not move it)."""
        template = await self._templates.visible(principal, template_id)
        existing = await self._store.get(request.alias)
        if existing is not None:
            self._may_change(principal, existing)
        now = time.time()
        await self._store.upsert(
            AliasRecord(
                alias=request.alias,
                template_id=template.id,
                org_id=template.org_id,  # == the existing alias's org (`_may_change`)
                user_id=existing.user_id if existing is not None else principal.user_id,
                description=request.description,
                visibility=request.visibility,
                created_at=now,
                updated_at=now,
            )
        )
        return TemplateShareResponse(url=self.url(request.alias))

    async def unshare(self, principal: Principal, alias: str) -> None:
        """Delete an alias (its template stays). Raises NotFound (not an alias the caller
        sees), PermissionDenied (another organization's, or a member who may not)."""
        record = await self.visible(principal, alias)
        if record.org_id != principal.org_id:
            raise PermissionDenied(f"alias {alias!r} is another organization's")
        self._may_change(principal, record)
        await self._store.delete(record.alias, record.org_id)

    @staticmethod
    def _may_change(principal: Principal, record: AliasRecord) -> None:
        """Moving or deleting an alias: the policy's ALIAS_CHANGE (its creator, or an owner
        or admin of its organization). Another organization's alias is 409 (taken): a public
        one is seen by all, so its existence is no secret. Membership is read as of now (a
        removed member's credentials for the org are refused before this)."""
        if record.org_id != principal.org_id:
            raise Conflict(
                f"alias {record.alias!r} is taken by another organization: choose another"
            )
        authorize(
            principal,
            Act.ALIAS_CHANGE,
            user_id=record.user_id,
            org_id=record.org_id,
            devbox_id=None,
            resource=("alias", record.alias),
        )

    async def visible(self, principal: Principal | None, alias: str) -> AliasRecord:
        """An alias of the caller's org, or a public one (anyone, signed in or not, sees a
        public one). Raises NotFound otherwise."""
        record = await self._store.get(alias)
        if record is None or not (
            record.visibility is Visibility.PUBLIC
            or (principal is not None and permits(principal, Act.ALIAS_VIEW, record))
        ):
            raise NotFound(
                f"alias {alias!r} not found among your organization's aliases and the public "
                "ones: an alias shared with an organization is seen only by its members (ask "
                'its owner to add you, or to share it with "visibility": "public")'
            )
        return record

    async def page(self, principal: Principal | None, alias: str) -> SharePage:
        """A share link's page for a visitor who may see the alias. Raises NotFound."""
        record = await self.visible(principal, alias)
        template = await self._templates.detail_by_id(record.template_id)
        return SharePage(
            alias=record.alias,
            description=record.description or template.description or "",
            template=template,
            base_url=self._base_url,
            consent=await self._templates.consent(principal, record.template_id),
        )

    async def alias(self, principal: Principal, alias: str) -> AliasResponse:
        return await self._response(await self.visible(principal, alias))

    async def aliases(self, principal: Principal) -> list[AliasResponse]:
        return [await self._response(r) for r in await self._store.visible_to(principal.org_id)]

    async def _response(self, record: AliasRecord) -> AliasResponse:
        template = await self._templates.detail_by_id(record.template_id)
        return AliasResponse(
            alias=record.alias,
            base_snapshot_id=template.base_snapshot_id,
            template=template.yaml,
            template_id=template.id,
            description=record.description
            if record.description is not None
            else template.description,
            created_at=_iso(record.created_at),
            updated_at=_iso(record.updated_at),
            content_hash=template.content_hash,
            visibility=record.visibility,
        )

    async def start(
        self, principal: Principal, alias: str, request: InstantDevboxRequest
    ) -> DevboxResponse:
        """A devbox of the caller's own from the template an alias they may see names (a
        public one included), with only the secrets the request names unless the caller
        wrote the template. Raises NotFound, Conflict (not ready), LimitReached,
        InvalidInput (a secret the template does not export)."""
        record = await self.visible(principal, alias)
        return await self._templates.instant_devbox_shared(principal, record.template_id, request)

    async def shared_template(self, principal: Principal, template_id: str) -> TemplateDetail:
        """A template of the caller's org, or one a public alias names. Raises NotFound."""
        try:
            return await self._templates.get(principal, template_id)
        except NotFound:
            if not await self._store.public_for_template(template_id):
                raise
        return await self._templates.detail_by_id(template_id)

    async def search(
        self,
        principal: Principal,
        query: str,
        *,
        limit: int,
        match: Match,
        include_steps: bool,
        steps_limit: int,
    ) -> list[AliasSearchItem]:
        """Aliases whose name, template name, description or step titles contain the query's
        words (any or all of them), most matches first."""
        words = [w for w in query.lower().split() if w]
        found: list[tuple[int, AliasSearchItem]] = []
        for record in await self._store.visible_to(principal.org_id):
            template = await self._templates.detail_by_id(record.template_id)
            titles = [s.title or "" for s in template.steps]
            fields = [
                record.alias,
                template.name,
                record.description or "",
                template.description or "",
                *titles,
            ]
            haystack = " ".join(fields).lower()
            matches = sum(1 for w in words if w in haystack)
            if words and (matches == 0 or (match == "all" and matches < len(words))):
                continue
            preview = (
                [
                    StepPreview(title=s.title or "", type=s.type)
                    for s in template.steps[:steps_limit]
                ]
                if include_steps
                else None
            )
            item = AliasSearchItem(
                alias=record.alias,
                template_id=template.id,
                description=record.description or template.description,
                step_count=template.step_count,
                match_count=matches,
                tags=sorted({s.type for s in template.steps}),
                steps_preview=preview,
            )
            found.append((matches, item))
        found.sort(key=lambda pair: (-pair[0], pair[1].alias))
        return [item for _, item in found[:limit]]
