#!/bin/sh
# spamassassin-headers.sh MESSAGE HEADERFILE [SPAMC]
# Runs spamc on the message and hands its X-Spam-* headers to milter-agent through HEADERFILE.
# Exit 0 (tag, deliver); 3 when spamc could not reach spamd (map it to tempfail or continue).
set -u
msg=$1 headers=$2 spamc=${3:-/usr/bin/spamc}
checked=$("$spamc" -x < "$msg") || exit 3
# the header block of spamc's output, folded lines kept, only the X-Spam-* fields
printf '%s\n' "$checked" | sed -n '1,/^\r*$/p' | tr -d '\r' | awk '
  /^X-Spam-[A-Za-z-]*:/ { keep = 1; print; next }
  /^[ \t]/ { if (keep) print; next }
  { keep = 0 }' > "$headers"
exit 0
