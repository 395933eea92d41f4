# apt-lib.sh - sourced by the ensure-*.sh scripts: install missing Debian packages, quietly.
#
#   ensure_debs TAG PACKAGE=PROBE ...
#
# A package counts as present when its PROBE file exists (not `command -v`: /usr/sbin is often
# not on a user's PATH). Missing ones are installed non-interactively as root; `apt-get update`
# runs only when apt does not know a package yet or the install fails (stale lists), so
# repeated runs stay fast. Maintainer scripts may not start services meanwhile (policy-rc.d).
# Returns non-zero with a message naming what is missing when it cannot install.

ensure_debs() {
  local tag=$1 item pkg probe
  shift
  local missing=() probes=()
  for item in "$@"; do
    pkg=${item%%=*} probe=${item#*=}
    [ -e "$probe" ] || { missing+=("$pkg"); probes+=("$probe"); }
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" -ne 0 ]; then
    echo "$tag: missing: ${missing[*]}; run as root" \
         "(or: sudo apt-get install --no-install-recommends ${missing[*]})" >&2
    return 1
  fi
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "$tag: missing: ${missing[*]}, and apt-get is not available" >&2
    return 1
  fi
  echo "$tag: installing ${missing[*]}" >&2
  local policy=/usr/sbin/policy-rc.d own_policy=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' > "$policy"
    chmod 755 "$policy"
    own_policy=1
  fi
  local rc=0
  if ! { _apt_known "${missing[@]}" && _apt_install "${missing[@]}"; }; then
    apt-get update -q >/dev/null && _apt_install "${missing[@]}" || rc=1
  fi
  [ "$own_policy" -eq 1 ] && rm -f "$policy"
  [ "$rc" -eq 0 ] || { echo "$tag: could not install ${missing[*]}" >&2; return 1; }
  for probe in "${probes[@]}"; do
    [ -e "$probe" ] || { echo "$tag: installed, but $probe is missing" >&2; return 1; }
  done
}

_apt_known() {  # every package has an install candidate in the current lists
  local pkg out
  for pkg in "$@"; do
    # no `| grep -q`: with pipefail, grep's early exit SIGPIPEs apt-cache into "failure"
    out=$(apt-cache policy "$pkg" 2>/dev/null) || return 1
    [[ $out == *"Candidate: "* && $out != *"Candidate: (none)"* ]] || return 1
  done
}

_apt_install() {
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" >/dev/null
}
