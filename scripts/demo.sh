#!/usr/bin/env bash
# The README demo: sample-repo/ becomes a real Git repository in .demo/, and
# certgit initialises a fresh state directory (SQLite, master key; the local CA
# follows on the first apply), then validates, plans and applies it. The three `files` targets write real PEM files under
# .demo/state/targets/. Production targets are gated: the demo approves them
# with a reason. Then a commit adds a SAN (second plan + apply), a rollback
# pins the old version on web-1, and a release lets Git win again. It all runs
# under the shipped example site policy (reconciler/examples/site.toml): a
# commit that asks beyond it (a shell as reload command, a write to /etc) is
# refused with file:line:col and the last good commit stays in force.
# Never reads stdin; exits non-zero on any unexpected result.
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
export CERTGIT_SITE_POLICY="$PWD/reconciler/examples/site.toml"
unset CERTGIT_CONFIG CERTGIT_REF CERTGIT_PATH
exec </dev/null

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
expect() { # expect CODE COMMAND...: run it, fail the demo unless it exits CODE
  local want=$1 rc=0; shift
  "$@" || rc=$?
  [ "$rc" = "$want" ] || { echo "unexpected exit $rc (wanted $want) from: $*" >&2; exit 1; }
}
plan_hash() { certgit plan --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["hash"])'; }

step "certgit site show   (the operator's site policy: $CERTGIT_SITE_POLICY)"
certgit site show

step "certgit validate $demo/repo"
certgit validate "$demo/repo"

step "certgit init   (state directory, master key, store; read-only commands never create one)"
certgit init

step "certgit plan --detailed-exitcode   (exit 2 = changes pending)"
expect 2 certgit plan --detailed-exitcode

step "certgit apply --dry-run   (preflight and grant checks; nothing written)"
expect 2 certgit apply --dry-run

step "certgit apply   (issues, deploys staging; production waits for approval: exit 2)"
expect 2 certgit apply --as demo

step "certgit approve <plan hash> --reason ...   (binds to that exact plan)"
certgit approve "$(plan_hash)" --reason "demo: first production rollout" --as alice

step "certgit apply   (production deploys now run: exit 0)"
expect 0 certgit apply --as demo
ls -l "$demo/state/targets/web-1"

step "certgit apply again: nothing to do, no file touched, no reload"
expect 0 certgit apply --as demo

step "a commit adds a SAN to www: the second plan re-issues and redeploys"
sed -i 's/^    - example.com$/    - example.com\n    - shop.example.com/' "$demo/repo/certificates/www.yaml"
git_ commit -q -am "www: add shop.example.com"
expect 2 certgit plan --detailed-exitcode
expect 2 certgit apply --as demo
certgit approve "$(plan_hash)" --reason "demo: new SAN for the shop" --as alice
expect 0 certgit apply --as demo

step "certgit rollback web-1 --certificate www   (v1 back on web-1, held)"
certgit rollback web-1 --certificate www --reason "demo: shop SAN broke a client" --as bob
expect 0 certgit apply --as demo   # the hold keeps apply off web-1/www

step "certgit history web-1"
certgit history web-1

step "certgit release web-1   (Git wins again: the v2 deploy is gated, approve it)"
certgit release web-1 --reason "demo: client fixed" --as bob
expect 2 certgit apply --as demo
certgit approve "$(plan_hash)" --reason "demo: back to v2" --as alice
expect 0 certgit apply --as demo

step "certgit status"
certgit status

step "bad input: a misspelled field and a dangling issuerRef are rejected with file:line:col"
cp -r "$demo/repo" "$demo/broken" && rm -rf "$demo/broken/.git"
sed -i 's/^  dnsNames:/  dnsName:/' "$demo/broken/certificates/www.yaml"
sed -i 's/name: internal-ca$/name: internal-caa/' "$demo/broken/certificates/api.yaml"
expect 1 certgit validate "$demo/broken"

step "a commit asks beyond the site policy: a shell as reload command, files in /etc"
cat >> "$demo/repo/targets/web.yaml" <<'YAML'
---
apiVersion: certgit.dev/v1
kind: Target
metadata:
  name: sneaky
spec:
  type: files
  settings:
    directory: /etc
    reloadCommand: [sh, -c, "id > /tmp/certgit-demo-pwned"]
YAML
git_ commit -q -am "sneaky target"
expect 1 certgit validate
expect 1 certgit apply --as demo   # HEAD refused; the last good commit stays in force
[ ! -e /tmp/certgit-demo-pwned ] || { echo "the sneaky reload ran" >&2; exit 1; }
git_ revert --no-edit HEAD >/dev/null

step "certgit audit verify"
certgit audit verify
printf '\nDemo state is in %s (state.db, master.key, git mirror, targets/).\n' "$demo/state"
