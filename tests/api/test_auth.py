from __future__ import annotations

import logging

import pytest
from support import Api

from devbox_service.logs import JsonFormatter


async def test_no_token_is_401_with_a_detail(api: Api) -> None:
    response = await api.client.get("/api/devboxes")
    assert response.status_code == 401
    assert "Bearer" in response.json()["detail"]


async def test_unknown_token_is_401(api: Api) -> None:
    response = await api.client.get("/api/devboxes", headers=api.auth("dbx_not-a-real-key"))
    assert response.status_code == 401
    assert response.json() == {"detail": "invalid or revoked API key"}


async def test_malformed_authorization_header_is_401(api: Api) -> None:
    response = await api.client.get("/api/devboxes", headers={"Authorization": api.admin_key})
    assert response.status_code == 401


async def test_valid_key_lists_devboxes(api: Api) -> None:
    response = await api.client.get("/api/devboxes", headers=api.auth(api.admin_key))
    assert response.status_code == 200
    assert response.json() == {"object": "list", "data": []}


async def test_revoked_key_is_401(api: Api) -> None:
    key = await api.new_user("alice")
    assert (await api.client.get("/api/devboxes", headers=api.auth(key))).status_code == 200
    record = next(k for k in await api.services.identities.keys() if k.user_name == "alice")
    await api.services.identities.revoke_key(record.id)
    response = await api.client.get("/api/devboxes", headers=api.auth(key))
    assert response.status_code == 401


async def test_health_is_public_and_ready_reports_store(api: Api) -> None:
    assert (await api.client.get("/health")).json()["status"] == "ok"
    ready = await api.client.get("/health/ready")
    assert ready.status_code == 200
    assert ready.json()["checks"]["store"] is True


async def test_openapi_document_is_served(api: Api) -> None:
    document = (await api.client.get("/openapi.json")).json()
    assert "/api/devboxes" in document["paths"]


async def test_request_log_names_the_principal_never_the_key(
    api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="devbox_service.requests")
    await api.client.get(
        "/api/devboxes", params={"token": "dbx_in_query"}, headers=api.auth(api.admin_key)
    )
    (record,) = [r for r in caplog.records if r.name == "devbox_service.requests"]
    assert (record.method, record.path, record.status) == ("GET", "/api/devboxes", 200)  # type: ignore[attr-defined]
    assert record.principal.startswith("user:key_")  # type: ignore[attr-defined]
    assert record.duration_ms >= 0  # type: ignore[attr-defined]
    line = JsonFormatter().format(record)
    assert api.admin_key not in line and "dbx_in_query" not in line and "/api/devboxes" in line


async def test_landing_page_tells_a_browser_how_to_connect(api: Api) -> None:
    page = await api.client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert f"MORPH_DEVBOX_BASE_URL={api.settings.base_url}" in page.text
    assert f"MORPH_SSH_PORT={api.settings.ssh_port}" in page.text
