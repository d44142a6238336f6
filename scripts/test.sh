#!/usr/bin/env bash
# Install what the tests need (a .venv with the project and its test extras),
# start the servers they use, then lint, type-check and run the whole suite.
# Extra arguments go to pytest:  ./scripts/test.sh tests/unit -x
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[test]'

# Servers. PostgreSQL, MariaDB and Redis run on every machine (started before
# each session and CI run); services.sh starts any of them that a previous run
# stopped. The tests switch TLS on in PostgreSQL themselves. The SSH-tunnel
# tests start their own OpenSSH server, the PgBouncer tests their own
# PgBouncer, the status page's test a headless Chromium: install them if missing.
# The MongoDB tests start nx-27017, a wire-protocol server from the test extra.
./scripts/services.sh
install_missing() {  # install_missing BINARY PACKAGE
    if [ ! -x "$1" ] && command -v apt-get >/dev/null; then
        export DEBIAN_FRONTEND=noninteractive
        apt-get install -y -q "$2" >/dev/null 2>&1 \
            || { apt-get update -q >/dev/null && apt-get install -y -q "$2" >/dev/null; }
    fi
}
install_missing /usr/sbin/sshd openssh-server
install_missing /usr/sbin/pgbouncer pgbouncer
install_missing /usr/bin/chromium chromium  # the status page's browser test

.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
.venv/bin/python -m pytest "$@"
