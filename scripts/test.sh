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

# Servers: the spine's tests need none beyond what runs on every machine
# (PostgreSQL, MariaDB and Redis are started before each session and CI run).
# Connector issues add their own start-up here.

.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
.venv/bin/python -m pytest "$@"
