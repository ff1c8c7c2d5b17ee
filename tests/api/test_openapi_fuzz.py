"""The API against its own OpenAPI document, fuzzed (schemathesis): no 5xx, no status the
document does not declare, no body that contradicts it. Bounded: a few cases per operation,
derandomized, against the service on the in-memory VM backend served over real HTTP."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
import schemathesis.checks as checks
import uvicorn
from hypothesis import HealthCheck, given, settings
from support import free_port

from devbox_service.app import create_app
from devbox_service.backends.memory import MemoryBackend
from devbox_service.settings import load_settings

CASES_PER_OPERATION = 12
CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_schema_conformance,
    checks.response_headers_conformance,
]
"""What the document promises: no 5xx, only declared statuses and bodies. Rules beyond the
schema (an upload directory must be under /tmp, say) rightly reject some schema-valid input,
so "valid data is accepted" is not among them."""


class Served:
    def __init__(self, base_url: str, key: str) -> None:
        self.base_url = base_url
        self.key = key


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    data_dir = tmp_path_factory.mktemp("fuzz")
    port = free_port()
    config = load_settings(
        environ={}, data_dir=str(data_dir), vm_backend="qemu", ssh_port=0, port=port
    )
    backend = MemoryBackend()
    asyncio.run(backend.start())
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(config, backend=backend),
            host="127.0.0.1",
            port=port,
            log_config=None,
            access_log=False,
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base_url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(f"{base_url}/health/ready").status_code == 200:
                break
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "the service did not start"
        time.sleep(0.05)
    try:
        yield Served(base_url, (Path(data_dir) / "admin.key").read_text().strip())
    finally:
        server.should_exit = True
        thread.join(30)


def test_every_operation_answers_as_its_document_says(served: Served) -> None:
    api = schemathesis.openapi.from_url(f"{served.base_url}/openapi.json")
    headers = {"Authorization": f"Bearer {served.key}"}
    checked = 0
    for result in api.get_all_operations():
        operation = result.ok()  # type: ignore[union-attr]  # a broken document raises here

        @given(case=operation.as_strategy())
        @settings(
            max_examples=CASES_PER_OPERATION,
            deadline=None,
            derandomize=True,
            suppress_health_check=list(HealthCheck),
            database=None,
        )
        def check(case: schemathesis.Case[Any]) -> None:
            case.call_and_validate(
                base_url=served.base_url,
                headers=headers,
                timeout=30,
                checks=CHECKS,
            )

        check()
        checked += 1
    assert checked >= 40, "every operation of the document is exercised"
