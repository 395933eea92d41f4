#!/bin/sh
# clamav-scan.sh MESSAGE REPLYFILE [CLAMDSCAN]
# Scans the message with clamd. Exit 0 clean, 1 infected (the virus name goes to REPLYFILE,
# which milter-agent returns as the SMTP reply), 2 scanner error.
set -u
msg=$1 reply=$2 clamdscan=${3:-/usr/bin/clamdscan}
out=$("$clamdscan" --no-summary --infected --stdout --stream - < "$msg")
rc=$?
case $rc in
  0) exit 0 ;;
  1) virus=$(printf '%s\n' "$out" | sed -n 's/^.*: \(.*\) FOUND$/\1/p' | head -n 1)
     printf 'Virus found: %s\n' "${virus:-unknown}" > "$reply"
     exit 1 ;;
  *) exit 2 ;;
esac
