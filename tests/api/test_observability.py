"""Metrics for operators (admins only) and request ids in every answer."""

from __future__ import annotations

from support import Api, create_devbox


async def test_metrics_show_devboxes_vms_and_request_latency(fake_api: Api) -> None:
    images = (
        await fake_api.client.get("/api/images", headers=fake_api.auth(fake_api.admin_key))
    ).json()
    await create_devbox(fake_api, images["data"][0]["id"])
    scraped = await fake_api.client.get("/metrics", headers=fake_api.auth(fake_api.admin_key))
    assert scraped.status_code == 200 and scraped.headers["content-type"].startswith("text/plain")
    text = scraped.text
    assert 'devbox_devboxes{status="ready"} 1' in text
    assert 'devbox_vm_processes{state="running"} 1' in text
    assert 'route="/api/devboxes/{devbox_id}"' in text
    assert "devbox_http_request_duration_seconds_bucket" in text
    member = await fake_api.new_user("metrics-member", org="default")
    refused = await fake_api.client.get("/metrics", headers=fake_api.auth(member))
    assert refused.status_code == 403


async def test_every_answer_carries_a_request_id(fake_api: Api) -> None:
    answer = await fake_api.client.get("/health")
    generated = answer.headers["x-request-id"]
    assert len(generated) == 16
    given = await fake_api.client.get("/health", headers={"X-Request-Id": "trace-42"})
    assert given.headers["x-request-id"] == "trace-42"
    odd = await fake_api.client.get("/health", headers={"X-Request-Id": "bad id; drop table"})
    assert odd.headers["x-request-id"] != "bad id; drop table"
