#!/usr/bin/env bash
# System packages the test suite needs. Installs only what is missing, as root
# with apt-get; otherwise says what to install. Later issues add servers here.
set -euo pipefail
need=()
command -v git >/dev/null || need+=(git)
if [ ${#need[@]} -eq 0 ]; then exit 0; fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "installing system packages: ${need[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
else
  echo "missing system packages: ${need[*]} (apt-get install ${need[*]})" >&2
  exit 1
fi
