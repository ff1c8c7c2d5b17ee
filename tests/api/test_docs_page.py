"""The API docs page loads its scripts from the service itself (no CDN: nothing another
origin serves runs beside the API)."""

from __future__ import annotations

import re

from support import Api


async def test_the_docs_page_loads_only_the_services_own_scripts(fake_api: Api) -> None:
    page = await fake_api.client.get("/docs")
    assert page.status_code == 200, page.text
    sources = re.findall(r'<(?:script|link)[^>]+(?:src|href)="([^"]+)"', page.text)
    assert sources, page.text
    assert all(s.startswith("/static/vendor/swagger-ui/") for s in sources), sources
    for source in sources:
        served = await fake_api.client.get(source)
        assert served.status_code == 200 and len(served.content) > 1000, source
