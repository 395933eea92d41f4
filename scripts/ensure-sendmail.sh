#!/bin/bash
# ensure-sendmail.sh - an UNPACKED Sendmail 8.17 (Debian sendmail-bin, sendmail-cf, sendmail-base)
# for the end-to-end tests in tests/e2e_sendmail, without installing it.
#
# Why not `apt-get install sendmail-bin`: it Conflicts with mail-transport-agent and would remove
# Postfix. Instead the .debs are fetched with `apt-get download` into a cache directory and
# unpacked with `dpkg -x`; nothing is configured, registered with dpkg or started, and the
# system's mail setup (/etc/mail, /etc/postfix, the MTA alternatives) is never touched.
# Sendmail's runtime needs m4 (to build sendmail.cf) and libwrap0; they are installed when
# missing (`apt-get update` only when apt does not know them yet or the install fails).
#
# On success prints the root of the unpacked tree (the binary is ROOT/usr/libexec/sendmail/
# sendmail, the m4 files are under ROOT/usr/share/sendmail/cf) and nothing else. Quick and quiet
# when everything is there already (any user); doing the work needs root.
#
# Usage: scripts/ensure-sendmail.sh [--check]       (--check: only report, exit 1 if not ready)
# Env:   MILTER_AGENT_SENDMAIL_CACHE   cache directory (default /var/cache/milter-agent-test/sendmail)
set -euo pipefail

CACHE=${MILTER_AGENT_SENDMAIL_CACHE:-/var/cache/milter-agent-test/sendmail}
PACKAGES=(sendmail-bin sendmail-cf sendmail-base)
ROOT=$CACHE/root
DEBS=$CACHE/debs
STAMP=$ROOT/.complete                    # written last: the tree is whole
BIN=$ROOT/usr/libexec/sendmail/sendmail
CF=$ROOT/usr/share/sendmail/cf/m4/cf.m4

check_only=0
case "${1:-}" in
  --check) check_only=1 ;;
  "") ;;
  *) echo "usage: $0 [--check]" >&2; exit 2 ;;
esac

have_m4() { command -v m4 >/dev/null 2>&1; }
have_libwrap() {
  # no `ldconfig -p | grep -q`: with pipefail an early grep exit fails the pipeline
  local libs; libs=$(/sbin/ldconfig -p 2>/dev/null || true)
  [[ $libs == *"libwrap.so.0 "* ]]
}
# setgid (mail) would clear the tests' parent-death signal at exec; the private copy drops it
tree_ok() { [ -f "$STAMP" ] && [ -x "$BIN" ] && [ ! -g "$BIN" ] && [ -f "$CF" ]; }
ready() { tree_ok && have_m4 && have_libwrap; }

if ready; then
  echo "$ROOT"
  exit 0
fi
if [ "$check_only" -eq 1 ]; then
  tree_ok || echo "ensure-sendmail: no unpacked Sendmail in $ROOT" >&2
  have_m4 || echo "ensure-sendmail: m4 is missing" >&2
  have_libwrap || echo "ensure-sendmail: libwrap0 is missing" >&2
  exit 1
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "ensure-sendmail: the test Sendmail is not set up yet ($ROOT); run $0 as root" \
       "(it downloads ${PACKAGES[*]} into $CACHE and may install m4 and libwrap0)" >&2
  exit 1
fi
for tool in apt-get apt-cache dpkg flock; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "ensure-sendmail: $tool is not available (a Debian/Ubuntu system is needed)" >&2
    exit 1
  fi
done

mkdir -p "$CACHE" || { echo "ensure-sendmail: cannot create the cache directory $CACHE" >&2; exit 1; }
exec 9>"$CACHE/.lock"
if ! flock -w 300 9; then
  echo "ensure-sendmail: another run holds $CACHE/.lock for 5 minutes; giving up" >&2
  exit 1
fi
if ready; then  # another run finished it while we waited
  echo "$ROOT"
  exit 0
fi

log=$(mktemp)
trap 'rm -f "$log"' EXIT
fail() {
  echo "ensure-sendmail: $1" >&2
  sed 's/^/  | /' "$log" >&2
  exit 1
}
updated=0
apt_update() {
  [ "$updated" -eq 1 ] && return 0
  updated=1
  apt-get update -q >>"$log" 2>&1 || fail "apt-get update failed"
}
known() {  # each package has an install/download candidate in the current lists
  local pkg out
  for pkg in "$@"; do
    out=$(apt-cache policy "$pkg" 2>/dev/null) || return 1
    [[ $out == *"Candidate: "* && $out != *"Candidate: (none)"* ]] || return 1
  done
}

# 1. runtime dependencies, as ordinary packages (harmless libraries and a macro processor)
deps=()
have_m4 || deps+=(m4)
have_libwrap || deps+=(libwrap0)
if [ ${#deps[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  known "${deps[@]}" || apt_update
  if ! apt-get install -y -q --no-install-recommends "${deps[@]}" >>"$log" 2>&1; then
    apt_update
    apt-get install -y -q --no-install-recommends "${deps[@]}" >>"$log" 2>&1 \
      || fail "could not install ${deps[*]}"
  fi
fi

# 2. the .debs, downloaded once (kept in $DEBS for later runs)
if ! tree_ok; then
  mkdir -p "$DEBS"
  have_debs() {
    local pkg
    for pkg in "${PACKAGES[@]}"; do
      compgen -G "$DEBS/${pkg}_*.deb" >/dev/null || return 1
    done
  }
  if ! have_debs; then
    known "${PACKAGES[@]}" || apt_update
    tmp=$(mktemp -d "$CACHE/download.XXXXXX")
    # apt's download sandbox user (_apt) must be able to write the target directory
    id _apt >/dev/null 2>&1 && chown _apt "$tmp"
    if ! (cd "$tmp" && apt-get download -q "${PACKAGES[@]}" >>"$log" 2>&1); then
      apt_update
      (cd "$tmp" && apt-get download -q "${PACKAGES[@]}" >>"$log" 2>&1) || {
        rm -rf "$tmp"
        fail "apt-get download ${PACKAGES[*]} failed"
      }
    fi
    chown -R root:root "$tmp"
    mv -f "$tmp"/*.deb "$DEBS"/
    rm -rf "$tmp"
  fi
  # 3. unpack into a fresh directory and move it into place: never a half tree
  new=$(mktemp -d "$CACHE/root.XXXXXX")
  for pkg in "${PACKAGES[@]}"; do
    # the newest download of each package, should several versions lie in the cache
    deb=$(ls -1 "$DEBS/${pkg}"_*.deb | sort -V | tail -n 1)
    dpkg -x "$deb" "$new" >>"$log" 2>&1 || { rm -rf "$new"; fail "dpkg -x $deb failed"; }
  done
  [ -x "$new/usr/libexec/sendmail/sendmail" ] || { rm -rf "$new"; fail "no sendmail binary in the .debs"; }
  chmod 755 "$new" "$new/usr/libexec/sendmail/sendmail"   # also drops setgid mail
  (cd "$DEBS" && ls -1 ./*.deb) > "$new/.complete"
  rm -rf "$ROOT"
  mv "$new" "$ROOT"
fi

ready || fail "the unpacked Sendmail in $ROOT is still not usable"
echo "$ROOT"
