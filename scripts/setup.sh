#!/usr/bin/env bash
# Install everything fleetroll and its lab need on a fresh Debian 12 machine (run as root):
# Debian packages for the lab fleet (and haproxy, whose `haproxy -c` checks every proxy configuration
# the tests render; it is never started), and a virtual environment at .venv with fleetroll
# installed in editable mode with its test extras. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
PKGS=(docker.io docker-registry openssh-server openssh-client tini busybox-static iproute2 gcc libc6-dev iptables python3-venv python3-pip util-linux procps git buildah mmdebstrap ca-certificates haproxy)
missing=()
for p in "${PKGS[@]}"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p"); done
if [ "${#missing[@]}" -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # policy-rc.d keeps the packaged daemons from starting: the lab starts its own.
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
# Installed once per pyproject.toml: an editable install sees code changes by itself, and reinstalling rewrites
# .venv/bin's console scripts under whatever runs them (the test of the README's first command runs this script
# while other test workers run .venv/bin/fleetroll: one found it missing, exit 127).
stamp=.venv/.fleetroll-setup
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ] || [ ! -x .venv/bin/fab ] || [ ! -x .venv/bin/fleetroll ]; then
  .venv/bin/pip install -q --disable-pip-version-check -e '.[test]'
  echo "$want" > "$stamp"
fi
echo "setup done: .venv/bin/fab --list"
