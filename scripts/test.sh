#!/usr/bin/env bash
# Lint, architecture contract, then every test tier. Extra args go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
echo "== ruff" && ruff check .
echo "== pytest"
pytest "$@"
