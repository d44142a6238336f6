#!/usr/bin/env bash
# Install the worker into .venv and run the demo: a local engine, the demo
# tenant, the seed's sample questions, and the replies customers would get.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[all]'
exec .venv/bin/worker demo
