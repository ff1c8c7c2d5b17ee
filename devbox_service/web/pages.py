"""Server-rendered pages (Jinja templates in the repository's top-level `templates/`)."""

from __future__ import annotations

from pathlib import Path

from litestar import get
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.response import Template
from litestar.template.config import TemplateConfig

from devbox_service.auth.guards import PUBLIC, allow
from devbox_service.services import AppServices

TEMPLATE_DIR = Path(__file__).resolve().parents[2] / "templates"


def template_config() -> TemplateConfig[JinjaTemplateEngine]:
    return TemplateConfig(directory=TEMPLATE_DIR, engine=JinjaTemplateEngine)


@get("/", guards=[allow(PUBLIC)], include_in_schema=False)
async def index(services: AppServices) -> Template:
    """Where a browser pointed at the service lands: how to reach it, and whether it is ready."""
    settings = services.settings
    checks = await services.readiness()
    return Template(
        template_name="index.html",
        context={
            "ready": all(checks.values()),
            "base_url": settings.base_url,
            "ssh_host": settings.ssh_host,
            "ssh_port": services.gateway.port if services.gateway else settings.ssh_port,
        },
    )
