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
# packages non-interactively; `apt-get update` runs only if the package is not known to apt
# yet or the install fails (stale lists). The system Postfix stays unconfigured ("No
# configuration") and stopped: tests only ever run private instances (tests/support/postfix.py).
#
# Usage: scripts/ensure-postfix.sh [--check]    (--check: only report, exit 1 if missing)
set -euo pipefail

check_only=0
case "${1:-}" in
  --check) check_only=1 ;;
  "") ;;
  *) echo "usage: $0 [--check]" >&2; exit 2 ;;
esac

# package -> a file it installs (not `command -v`: /usr/sbin is often not on a user's PATH)
declare -A probe=(
  [postfix]=/usr/sbin/postfix
  [miltertest]=/usr/bin/miltertest
  [groff-base]=/usr/bin/groff
  [systemd]=/usr/bin/systemd-analyze
)
missing=()
for pkg in postfix miltertest groff-base systemd; do
  [ -x "${probe[$pkg]}" ] || missing+=("$pkg")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$check_only" -eq 1 ]; then
  echo "ensure-postfix: missing: ${missing[*]}" >&2
  exit 1
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "ensure-postfix: missing: ${missing[*]}; run this script as root" \
       "(or: sudo apt-get install --no-install-recommends ${missing[*]})" >&2
  exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "ensure-postfix: missing: ${missing[*]}, and apt-get is not available" >&2
  exit 1
fi

echo "ensure-postfix: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
# "No configuration": no /etc/postfix/main.cf, so the system instance is never set up.
echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections

# Keep maintainer scripts from starting services while we install (restored on exit).
policy=/usr/sbin/policy-rc.d
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' > "$policy"
  chmod 755 "$policy"
  trap 'rm -f "$policy"' EXIT
fi

known() {  # every missing package has an install candidate in the current lists
  local pkg out
  for pkg in "${missing[@]}"; do
    # no `| grep -q`: with pipefail, grep's early exit SIGPIPEs apt-cache into "failure"
    out=$(apt-cache policy "$pkg" 2>/dev/null) || return 1
    [[ $out == *"Candidate: "* && $out != *"Candidate: (none)"* ]] || return 1
  done
}
install() {
  apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
}
if known && install; then
  :
else
  apt-get update -q >/dev/null
  install
fi

for pkg in "${missing[@]}"; do
  if [ ! -x "${probe[$pkg]}" ]; then
    echo "ensure-postfix: $pkg installed but ${probe[$pkg]} is missing" >&2
    exit 1
  fi
done

# If we just installed Postfix and it started the system instance anyway (policy-rc.d not
# honoured), stop it. Never touch a system Postfix that was there before.
if [[ " ${missing[*]} " == *" postfix "* ]] && [ -f /etc/postfix/main.cf ] \
   && /usr/sbin/postfix status >/dev/null 2>&1; then
  echo "ensure-postfix: stopping the system Postfix (tests use private instances)" >&2
  /usr/sbin/postfix stop >/dev/null 2>&1 || true
fi
echo "ensure-postfix: done" >&2
