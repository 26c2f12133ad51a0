#!/usr/bin/env bash
# Install what the test suite needs from the system when it is missing: the Postgres and
# Redis servers that tests/servers.py starts, nginx for the local stack, Prometheus (and promtool)
# for the observability suite, and uv. Prints nothing when all are present.
set -euo pipefail

log() { echo "ensure-test-deps: $*" >&2; }

packages=()
if ! compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null; then
    packages+=(postgresql)
fi
if ! command -v redis-server >/dev/null 2>&1; then
    packages+=(redis-server)
fi
if ! command -v nginx >/dev/null 2>&1 && [[ ! -x /usr/sbin/nginx ]]; then
    packages+=(nginx-light)
fi
# Prometheus and promtool: the observability suite scrapes the services and tests the rules.
if ! command -v prometheus >/dev/null 2>&1 || ! command -v promtool >/dev/null 2>&1; then
    packages+=(prometheus)
fi
need_uv=false
if ! command -v uv >/dev/null 2>&1; then
    need_uv=true
    if ! python3 -m pip --version >/dev/null 2>&1; then
        packages+=(python3-pip)
    fi
fi

if ((${#packages[@]} > 0)); then
    install_cmd="apt-get install -y --no-install-recommends ${packages[*]}"
    if ((EUID != 0)); then
        log "missing ${packages[*]}; install them as root with:"
        log "  apt-get update && ${install_cmd}"
        exit 1
    fi
    log "installing ${packages[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # Only the missing packages: naming an installed one would upgrade it.
    apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
fi

if [[ ${need_uv} == true ]]; then
    log "installing uv"
    # uv is a self-contained binary with no dependencies, so installing it into a
    # distribution-managed Python (PEP 668) cannot break the system's packages.
    PIP_BREAK_SYSTEM_PACKAGES=1 python3 -m pip install --quiet --disable-pip-version-check uv
    hash -r
    if ! command -v uv >/dev/null 2>&1; then
        user_base=$(python3 -m site --user-base)
        log "uv was installed but is not on PATH; add ${user_base}/bin to it"
        exit 1
    fi
fi
