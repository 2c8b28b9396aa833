#!/usr/bin/env bash
# Create .venv and install Sentio with exact versions: torch==2.13.0 first (pip takes the local
# CPU wheel where PIP_FIND_LINKS provides one), then every other package from requirements.lock
# with uv, then the project itself (editable, no dependency resolution). Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
export PIP_DISABLE_PIP_VERSION_CHECK=1
.venv/bin/python -m pip install -q uv==0.9.5
.venv/bin/python -m pip install -q torch==2.13.0

find_links=()
[ -n "${PIP_FIND_LINKS:-}" ] && find_links=(--find-links "$PIP_FIND_LINKS")
.venv/bin/uv pip install -q --python .venv/bin/python "${find_links[@]}" --compile-bytecode -r requirements.lock
.venv/bin/uv pip install -q --python .venv/bin/python --no-deps --compile-bytecode -e .
