#!/usr/bin/env bash
# The README demo: sample-repo/ becomes a real Git repository in .demo/, and
# certgit validates it and plans against a fresh state directory (SQLite,
# local CA, files targets under .demo/state/targets). Apply arrives with issue 9.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
demo=$PWD/.demo
rm -rf "$demo" && mkdir -p "$demo"
cp -r sample-repo "$demo/repo"
git_() { git -C "$demo/repo" -c user.name="certgit demo" -c user.email=demo@example.invalid "$@"; }
git_ init -q -b main
git_ add -A && git_ commit -q -m "desired state: sample"
export CERTGIT_REPO="$demo/repo" CERTGIT_STATE_DIR="$demo/state"

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
step "certgit validate $demo/repo"
certgit validate "$demo/repo"

step "certgit plan   (exit 2 = changes pending)"
rc=0; certgit plan || rc=$?
[ "$rc" = 2 ] || { echo "unexpected exit $rc from certgit plan" >&2; exit 1; }

step "certgit plan again: same commit, same plan hash"
certgit plan --json | python3 -c 'import json,sys; p=json.load(sys.stdin); print("hash", p["hash"], "-", p["summary"])' || true

step "certgit status"
certgit status

step "bad input: a misspelled field and a dangling issuerRef are rejected with file:line:col"
cp -r "$demo/repo" "$demo/broken" && rm -rf "$demo/broken/.git"
sed -i 's/^  dnsNames:/  dnsName:/' "$demo/broken/certificates/www.yaml"
sed -i 's/name: internal-ca$/name: internal-caa/' "$demo/broken/certificates/api.yaml"
rc=0; certgit validate "$demo/broken" || rc=$?
[ "$rc" = 1 ] || { echo "expected exit 1 for the broken copy, got $rc" >&2; exit 1; }

step "certgit audit verify"
certgit audit verify
printf '\nDemo state is in %s (state.db, master.key, git mirror).\n' "$demo/state"
