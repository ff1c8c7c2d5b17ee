# devbox-service: `just run` sets everything up and serves; `just test` runs the suite.

set shell := ["bash", "-euo", "pipefail", "-c"]

venv := ".venv"
bin := venv + "/bin"
uv := "UV_PYTHON_DOWNLOADS=never UV_PYTHON=" + bin + "/python " + bin + "/uv"
# prints uv's pinned requirement (version and hashes) from uv.lock, to bootstrap uv with pip
locked_uv := "python3 -c 'import tomllib; p = next(p for p in tomllib.load(open(\"uv.lock\", \"rb\"))[\"package\"] if p[\"name\"] == \"uv\"); print(\"uv==\" + p[\"version\"], *(\"--hash=\" + w[\"hash\"] for w in p[\"wheels\"]))'"
system_packages := "postgresql qemu-system-x86 qemu-utils debootstrap busybox-static linux-image-cloud-amd64 openssh-client openssh-server openssh-sftp-server tmux libnss-myhostname e2fsprogs cpio socat iproute2 chromium chromium-driver wrk"

# list the recipes
default:
    @just --list

# set up (packages, virtualenv, guest image), print the first API key, serve
run: setup
    {{bin}}/devbox-service image build
    exec {{bin}}/devbox-service serve

# set up, then run the whole test suite (real VMs under TCG where KVM does not work)
test: setup
    {{bin}}/pytest
    @echo "the API tier again, every service on PostgreSQL instead of SQLite:"
    PYTEST_DEVBOX_STORE=postgres {{bin}}/pytest tests/api -m "not vm" -q

# lint, type-check (the package, the tests and the benchmarks) and check the layer rules
check: venv
    {{uv}} lock --check
    {{bin}}/ruff check devbox_service tests bench
    {{bin}}/mypy
    {{bin}}/lint-imports

# measure VM, API, SSH and tmux figures; writes bench/results/latest.json
bench: setup
    {{bin}}/python -m bench

# system packages, QEMU's user and the virtualenv, all idempotent
setup: system-packages qemu-user venv

# as root, create the unprivileged system user QEMU drops to (not root: QEMU runs as you)
qemu-user:
    #!/usr/bin/env bash
    set -euo pipefail
    [ "$(id -u)" = 0 ] || exit 0
    getent passwd devbox-qemu >/dev/null && exit 0
    echo "creating system user devbox-qemu (QEMU runs as it)"
    useradd --system --user-group --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin devbox-qemu

# install the Debian packages the service needs (only those missing)
system-packages:
    #!/usr/bin/env bash
    set -euo pipefail
    missing=()
    for pkg in {{system_packages}}; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        echo "installing: ${missing[*]}"
        sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
        $sudo apt-get update -q
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
    fi

# the virtualenv, exactly as uv.lock says (uv itself comes from the lock, checked by its hashes)
venv:
    #!/usr/bin/env bash
    set -euo pipefail
    [ -x {{bin}}/python ] || python3 -m venv {{venv}}
    if [ "$({{bin}}/uv --version 2>/dev/null | cut -d' ' -f2)" != "$({{locked_uv}} | cut -d= -f3 | cut -d' ' -f1)" ]; then
        {{locked_uv}} > {{venv}}/uv-requirement.txt
        {{bin}}/python -m pip install -q --disable-pip-version-check --no-deps --only-binary :all: \
            --require-hashes -r {{venv}}/uv-requirement.txt
    fi
    {{uv}} sync --locked --extra dev --quiet

# update uv.lock: `just lock --upgrade` moves everything, `just lock --upgrade-package NAME` one
lock *args: venv
    {{uv}} lock {{args}}
