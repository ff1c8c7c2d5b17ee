"""The wheel is the product: built from the repository, installed from the lock into a
throwaway virtualenv, started with no source tree on its path, it serves the dashboard (its
Jinja pages and static files are package data, not files beside a checkout)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from support import free_port

REPO = Path(__file__).resolve().parents[2]
UV = Path(sys.executable).parent / "uv"


def run(*args: str | Path, cwd: Path = REPO) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env["UV_PYTHON_DOWNLOADS"] = "never"
    done = subprocess.run(
        [str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, f"{args}: {done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A virtualenv holding the wheel and exactly the lock's runtime packages."""
    place = tmp_path_factory.mktemp("wheel")
    run(UV, "build", "--out-dir", place / "dist")  # the sdist, then the wheel from it
    (wheel,) = (place / "dist").glob("devbox_service-*.whl")
    requirements = place / "requirements.txt"
    run(UV, "export", "--frozen", "--no-emit-project", "--no-dev", "-o", requirements)
    run(UV, "venv", "--python", sys.executable, place / "venv")
    python = place / "venv" / "bin" / "python"
    run(UV, "pip", "install", "--python", python, "--require-hashes", "-r", requirements)
    run(UV, "pip", "install", "--python", python, "--no-deps", wheel)
    return place


@pytest.fixture(scope="module")
def served(installed: Path) -> Iterator[str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DEVBOX_", "PYTHON"))}
    env |= {
        "DEVBOX_DATA_DIR": str(installed / "data"),
        "DEVBOX_VM_BACKEND": "none",
        "DEVBOX_PORT": str(port),
        "DEVBOX_SSH_PORT": str(free_port()),
    }
    log = (installed / "serve.log").open("w")
    process = subprocess.Popen(
        [installed / "venv" / "bin" / "devbox-service", "serve"],
        cwd=installed,  # not the checkout: nothing of the source tree is importable
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, (installed / "serve.log").read_text()
            try:
                if httpx.get(f"{base}/health/ready").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the installed service never got ready"
            time.sleep(0.2)
        yield base
    finally:
        process.terminate()
        process.wait(30)
        log.close()


def test_the_installed_package_comes_from_the_wheel_not_the_checkout(installed: Path) -> None:
    where = run(
        installed / "venv" / "bin" / "python",
        "-I",
        "-c",
        "import devbox_service.web.render as r; print(r.__file__); print(r.TEMPLATE_DIR)",
        cwd=installed,
    ).split()
    assert all(str(installed / "venv") in line for line in where), where
    assert not Path(where[1]).is_symlink(), "the pages are files in the wheel, not a link"


def test_the_wheel_serves_the_sign_in_page_and_static_files(served: str) -> None:
    page = httpx.get(f"{served}/sign-in")
    assert page.status_code == 200 and 'name="api_key"' in page.text
    style = httpx.get(f"{served}/static/app.css")
    assert style.status_code == 200
    assert style.content == (REPO / "devbox_service" / "web" / "static" / "app.css").read_bytes()
    vendored = httpx.get(f"{served}/static/vendor/xterm/xterm.js")
    assert vendored.status_code == 200 and len(vendored.content) > 100_000


def test_the_check_refuses_a_pyproject_the_lock_does_not_match(tmp_path: Path) -> None:
    """What `just check` runs: a dependency added without `just lock` is caught, by name."""
    for name in ("pyproject.toml", "uv.lock"):
        (tmp_path / name).write_bytes((REPO / name).read_bytes())
    run(UV, "lock", "--check", "--offline", "--python", sys.executable, cwd=tmp_path)
    project = tmp_path / "pyproject.toml"
    project.write_text(project.read_text().replace('"PyYAML>=6",', '"PyYAML>=6",\n    "six",'))
    env = {**os.environ, "UV_PYTHON_DOWNLOADS": "never"}
    stale = subprocess.run(
        [UV, "lock", "--check", "--python", sys.executable],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert stale.returncode != 0 and "six" in stale.stderr, stale.stderr
