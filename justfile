# devbox-service: `just run` sets everything up and serves; `just test` runs the suite.

set shell := ["bash", "-euo", "pipefail", "-c"]

venv := ".venv"
bin := venv + "/bin"
system_packages := "qemu-system-x86 qemu-utils debootstrap busybox-static linux-image-cloud-amd64 openssh-client openssh-server openssh-sftp-server tmux libnss-myhostname e2fsprogs cpio socat iproute2 chromium chromium-driver wrk"

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

# lint, type-check (the package, the tests and the benchmarks) and check the layer rules
check: venv
    {{bin}}/ruff check devbox_service tests bench
    {{bin}}/mypy
    {{bin}}/lint-imports

# measure VM, API, SSH and tmux figures; writes bench/results/latest.json
bench: setup
    {{bin}}/python -m bench

# system packages and the virtualenv, both idempotent
setup: system-packages venv

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

# create the virtualenv and install the project (re-installs only when pyproject.toml changes)
venv:
    #!/usr/bin/env bash
    set -euo pipefail
    [ -x {{bin}}/python ] || python3 -m venv {{venv}}
    stamp="$(sha256sum pyproject.toml | cut -c1-16)"
    if [ "$(cat {{venv}}/.setup-stamp 2>/dev/null)" != "$stamp" ]; then
        {{bin}}/pip install -q --upgrade pip
        {{bin}}/pip install -q -e '.[dev]'
        echo "$stamp" > {{venv}}/.setup-stamp
    fi
