#!/usr/bin/env bash
# Lint (ruff), types (mypy), then every test tier. Extra args go to pytest.
#
# On CI (CI=true) or with CERTGIT_TEST_MIN=1, the whole suite runs once more
# in .venv-min, where every dependency sits at the floor pyproject.toml allows
# (constraints/minimum.txt, the `test` extra only). It adds about 4.5 minutes
# (25 s to build .venv-min, then the suite: unit, e2e and integration).
# CERTGIT_TEST_MIN=0 skips that second run, on CI too.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
echo "== ruff" && ruff check .

echo "== mypy"
# mypy cannot follow setuptools' editable-install import hook (the certgit.*
# package-dir mapping), so it reads the packages through a link tree that
# mirrors that mapping; [tool.mypy] in pyproject.toml says what it checks.
links=build/mypy-path/certgit
mkdir -p "$links"
for part in reconciler connectors schemas tui; do ln -sfn "../../../$part" "$links/$part"; done
mypy

echo "== pytest"
pytest "$@"

min=${CERTGIT_TEST_MIN:-}
if [ -z "$min" ] && [ "${CI:-}" = true ]; then min=1; fi
[ "$min" = 1 ] || exit 0

echo "== pytest at the minimum dependency versions (.venv-min, constraints/minimum.txt)"
started=$SECONDS
venv=.venv-min
stamp=$venv/.installed
if [ ! -x "$venv/bin/python" ]; then
  "${PYTHON:-python3}" -m venv "$venv"
fi
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ constraints/minimum.txt -nt "$stamp" ]; then
  log=$(mktemp)
  # --only-binary: a floor must install as a wheel, as it does for users on Python 3.11
  if ! "$venv/bin/python" -m pip install -q --only-binary=:all: -c constraints/minimum.txt \
      -e '.[test]' >"$log" 2>&1; then
    cat "$log" >&2; rm -f "$log"; exit 1
  fi
  rm -f "$log"
  touch "$stamp"
fi
# Say which versions ran, and refuse to call it a minimum run when one is not pinned.
"$venv/bin/python" - constraints/minimum.txt <<'PY'
import sys
from importlib.metadata import version

pins = {}
for line in open(sys.argv[1]):
    line = line.split("#", 1)[0].strip()
    if line:
        name, _, pinned = line.partition("==")
        pins[name.strip()] = pinned.strip()
found = {name: version(name) for name in pins}
print("versions: " + ", ".join(f"{name}=={found[name]}" for name in pins))
wrong = [f"{name} {found[name]} (pinned {pin})" for name, pin in pins.items() if found[name] != pin]
if wrong:
    sys.exit(f"{sys.argv[1]} not honoured in .venv-min: {', '.join(wrong)}")
PY
echo ".venv-min ready in $((SECONDS - started)) s"
PATH="$PWD/$venv/bin:$PATH" exec "$venv/bin/python" -m pytest -q -p no:cacheprovider
