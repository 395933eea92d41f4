#!/bin/bash
# ensure-postfix.sh - make sure the MTA tools the tests need are installed (Debian/Ubuntu).
#
#   postfix          (Debian package postfix)    private instances for tests/e2e
#   miltertest       (Debian package miltertest) independent milter client for tests/conformance
#   groff            (Debian package groff-base) renders the man pages (tests/unit/test_manpages.py)
#   systemd-analyze  (Debian package systemd)    verifies contrib/milter-agent.service
#                                                (tests/unit/test_contrib.py)
#
# Quiet and quick when everything is there. Otherwise, as root, installs the missing
# packages non-interactively (scripts/apt-lib.sh: `apt-get update` only if a package is not
# known to apt yet or the install fails). The system Postfix stays unconfigured ("No
# configuration") and stopped: tests only ever run private instances (tests/support/postfix.py).
#
# Usage: scripts/ensure-postfix.sh [--check]    (--check: only report, exit 1 if missing)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=scripts/apt-lib.sh
. "$here/apt-lib.sh"

# package=a file it installs
packages=(
  postfix=/usr/sbin/postfix
  miltertest=/usr/bin/miltertest
  groff-base=/usr/bin/groff
  systemd=/usr/bin/systemd-analyze
)

case "${1:-}" in
  --check)
    missing=()
    for item in "${packages[@]}"; do [ -e "${item#*=}" ] || missing+=("${item%%=*}"); done
    [ ${#missing[@]} -eq 0 ] || { echo "ensure-postfix: missing: ${missing[*]}" >&2; exit 1; }
    exit 0 ;;
  "") ;;
  *) echo "usage: $0 [--check]" >&2; exit 2 ;;
esac

had_postfix=0
[ -e /usr/sbin/postfix ] && had_postfix=1
# "No configuration": no /etc/postfix/main.cf, so the system instance is never set up.
if [ "$had_postfix" -eq 0 ] && [ "$(id -u)" -eq 0 ]; then
  echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
fi
ensure_debs ensure-postfix "${packages[@]}"

# If we just installed Postfix and it started the system instance anyway (policy-rc.d not
# honoured), stop it. Never touch a system Postfix that was there before.
if [ "$had_postfix" -eq 0 ] && [ -f /etc/postfix/main.cf ] \
   && /usr/sbin/postfix status >/dev/null 2>&1; then
  echo "ensure-postfix: stopping the system Postfix (tests use private instances)" >&2
  /usr/sbin/postfix stop >/dev/null 2>&1 || true
fi
