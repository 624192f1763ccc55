#!/usr/bin/env bash
# System packages the test suite needs. Installs only what is missing, as root
# with apt-get; otherwise says what to install.
#
# The integration tests start their own nginx/apache2/haproxy/caddy/postfix/
# dovecot instances on 127.0.0.1 with configs in a temp dir, so the packaged
# services must NOT stay running after install (they would bind public ports
# and hold the default pid files).
set -euo pipefail
need=()
command -v git >/dev/null || need+=(git)
command -v openssl >/dev/null || need+=(openssl)
[ -x /usr/bin/kill ] || need+=(procps)  # tests signal server masters with /usr/bin/kill
[ -x /usr/sbin/nginx ] || need+=(nginx)
[ -x /usr/sbin/apache2 ] || need+=(apache2)
[ -x /usr/sbin/haproxy ] || need+=(haproxy)
[ -x /usr/bin/caddy ] || need+=(caddy)
[ -x /usr/sbin/postfix ] || need+=(postfix)
[ -x /usr/bin/doveconf ] || need+=(dovecot-core)
command -v age-keygen >/dev/null || need+=(age)  # test age keys for SOPS files
if [ ${#need[@]} -eq 0 ]; then exit 0; fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "installing system packages: ${need[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  # postfix asks what kind of mail system this is; answer "none" so it installs unattended.
  if command -v debconf-set-selections >/dev/null; then
    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
    echo "postfix postfix/mailname string localhost" | debconf-set-selections
  fi
  # Keep package scripts from starting the services at all (Debian's policy-rc.d
  # protocol: exit 101 = action forbidden); removed again below.
  policy=/usr/sbin/policy-rc.d
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod 755 "$policy"
    trap 'rm -f "$policy"' EXIT
  fi
  # apt's chatter (e.g. "debconf: delaying package configuration") only on failure
  log=$(mktemp)
  if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${need[@]}"; } >"$log" 2>&1; then
    cat "$log" >&2; rm -f "$log"; exit 1
  fi
  rm -f "$log"
  # Stop whatever the packages started; tests run their own instances on loopback.
  for svc in nginx apache2 haproxy caddy postfix dovecot; do
    service "$svc" stop >/dev/null 2>&1 || true
  done
else
  echo "missing system packages: ${need[*]} (apt-get install ${need[*]})" >&2
  exit 1
fi
