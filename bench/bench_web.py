"""Dashboard figures: the terminal view's latency in a real headless Chromium, and the
devbox list's render time with 50 devboxes.

Run: `.venv/bin/python -m bench.bench_web`. Merges `web.terminal_latency.p50/p95` (seconds
from a send-keys request leaving the client to its text being on screen in the page) and
`web.list_render.p50/p95` (seconds to answer `GET /devboxes` for 50 devboxes, measured in
process, so server time only) into bench/results/latest.json.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import tempfile
import time
from pathlib import Path

from litestar.testing import AsyncTestClient
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from bench.common import Served, merge_results, percentile, print_table, served
from devbox_service.app import create_app
from devbox_service.backends.base import MachineSpec
from devbox_service.settings import load_settings

TARGETS = {"web.terminal_latency.p95": 0.5, "web.list_render.p50": 0.2}
LIST_SIZE = 50

WAIT_FOR_TEXT = """
const [token, done] = arguments;
const rows = () => document.querySelector('.terminal .xterm-rows');
const shown = () => rows() && rows().textContent.includes(token);
const look = () => shown() ? done(true) : setTimeout(look, 5);
look();
"""


def chromium() -> WebDriver:
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(argument)
    options.add_argument("--window-size=1280,1100")  # xterm.js draws only what is in view
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)


def terminal_latency(service: Served, base_url: str, runs: int) -> list[float]:
    devbox_id = service.start_devbox("web-bench")
    service.http.post(
        f"/api/devboxes/{devbox_id}/tmux/sessions", json={"name": "bench"}, headers=service.auth
    ).raise_for_status()
    driver = chromium()
    try:
        driver.set_script_timeout(30)
        driver.get(f"{base_url}/sign-in?next=/devboxes/{devbox_id}")
        driver.find_element(By.ID, "api_key").send_keys(service.auth["Authorization"][7:])
        driver.find_element(By.CSS_SELECTOR, "form[action='/sign-in'] button").click()
        while not driver.find_elements(By.CSS_SELECTOR, ".terminal .xterm-rows"):
            time.sleep(0.1)
        time.sleep(1)  # the stream is connected
        samples = []
        for run in range(runs + 2):
            token = f"mark{run}x{time.monotonic_ns() % 100000}"
            started = time.perf_counter()
            service.http.post(
                f"/api/devboxes/{devbox_id}/tmux/send-keys",
                json={"target": {"session": "bench"}, "keys": f"# {token}"},
                headers=service.auth,
            ).raise_for_status()
            driver.execute_async_script(WAIT_FOR_TEXT, token)
            if run >= 2:  # the first two warm the stream and the page up
                samples.append(time.perf_counter() - started)
            service.http.post(
                f"/api/devboxes/{devbox_id}/tmux/send-keys",
                json={"target": {"session": "bench"}, "sequence": ["C-u"]},
                headers=service.auth,
            )
            time.sleep(0.2)
        return samples
    finally:
        driver.quit()


async def list_render(runs: int) -> list[float]:
    data_dir = Path(tempfile.mkdtemp(prefix="devbox-bench-web-"))
    settings = load_settings(environ={}, data_dir=str(data_dir), vm_backend="none")
    async with AsyncTestClient(create_app(settings)) as client:
        services = client.app.state.services
        key = (data_dir / "admin.key").read_text().strip()
        principal = await services.identities.authenticate(key)
        spec = MachineSpec(vcpus=1, memory_mb=256, disk_mb=2048)
        for n in range(LIST_SIZE):
            await services.devbox_core.insert(
                principal,
                snapshot_id="snapshot_bench",
                image_id=None,
                spec=spec,
                name=f"devbox-{n}",
                metadata={},
                parent_id=None,
                created_detail={"name": "created"},
            )
        form = await client.get("/sign-in")
        token = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
        assert token is not None
        signed = await client.post(
            "/sign-in",
            data={"csrf_token": token.group(1), "api_key": key, "next": "/devboxes"},
            follow_redirects=False,
        )
        assert signed.status_code == 303, signed.text
        samples = []
        for _ in range(runs + 3):
            started = time.perf_counter()
            page = await client.get("/devboxes")
            samples.append(time.perf_counter() - started)
            assert page.status_code == 200 and page.text.count('id="devbox-') == LIST_SIZE
        return samples[3:]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    renders = asyncio.run(list_render(args.runs * 2))
    with served() as service:
        base_url = str(service.http.base_url).rstrip("/")
        latencies = terminal_latency(service, base_url, args.runs)
    figures = {
        "web.list_render.p50": percentile(renders, 0.5),
        "web.list_render.p95": percentile(renders, 0.95),
        "web.terminal_latency.p50": percentile(latencies, 0.5),
        "web.terminal_latency.p95": percentile(latencies, 0.95),
    }
    merge_results(figures)
    print_table(figures, TARGETS)


if __name__ == "__main__":
    main()
