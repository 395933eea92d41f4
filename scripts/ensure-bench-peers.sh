#!/bin/bash
# ensure-bench-peers.sh - the peers bench/mta.py measures milter-agent against:
#
#   C milter on libmilter    bench/peers/c_milter.c, built into $MA_BENCH_C_MILTER
#                            (default /var/cache/milter-agent-bench/c_milter); needs libmilter-dev
#   pymilter                 PyPI package, into the venv given as $1 (built against libmilter)
#   MIMEDefang               Debian package mimedefang, with libnet-dns-perl (which Debian 12's
#                            package forgets: without it every worker dies). Its service is not
#                            started: the benchmark runs its own instance in the foreground.
#
# Quiet and quick when everything is there; installing needs root.
# Usage: scripts/ensure-bench-peers.sh VENV_PYTHON
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=scripts/apt-lib.sh
. "$here/apt-lib.sh"

python=${1:?usage: $0 VENV_PYTHON}
out=${MA_BENCH_C_MILTER:-/var/cache/milter-agent-bench/c_milter}
src=$here/../bench/peers/c_milter.c

ensure_debs ensure-bench-peers \
  libmilter-dev=/usr/include/libmilter/mfapi.h \
  mimedefang=/usr/bin/mimedefang \
  libnet-dns-perl=/usr/share/perl5/Net/DNS.pm

if [ ! -x "$out" ] || [ "$src" -nt "$out" ]; then
  mkdir -p "$(dirname "$out")"
  cc -O2 -Wall -o "$out.new" "$src" -lmilter -pthread
  mv "$out.new" "$out"
fi

if ! "$python" -c 'import Milter' 2>/dev/null; then
  "$python" -m pip install -q 'pymilter>=1.0.5' 2>&1 | grep -v '^WARNING: Location' >&2 || true
  "$python" -c 'import Milter' || { echo "ensure-bench-peers: pymilter did not install" >&2; exit 1; }
fi
