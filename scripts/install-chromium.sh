#!/usr/bin/env bash
# Install headless Chromium (Debian package `chromium`) for the report test, if it is missing.
# Exits 0 when /usr/bin/chromium is usable afterwards, non-zero otherwise (the test then skips).
set -euo pipefail
if [ -x /usr/bin/chromium ]; then
  exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then
    SUDO="sudo -n"
  else
    echo "install-chromium: not root and no sudo; install the Debian package 'chromium' by hand" >&2
    exit 1
  fi
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
test -x /usr/bin/chromium
