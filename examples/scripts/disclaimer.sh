#!/bin/sh
# disclaimer.sh MESSAGE NEWBODY DISCLAIMERFILE
# Appends the disclaimer to single-part text/plain messages (a message without Content-Type is
# text/plain) by writing the new body to NEWBODY (milter-agent applies it with -B). Anything
# else is left alone (NEWBODY stays empty): multipart and HTML mail, where appended text would
# land outside every part or show as stray text, and base64 bodies, which it would corrupt.
set -eu
msg=$1 newbody=$2 disclaimer=$3

# The header block: CRs dropped, folded lines joined, lower-cased.
headers=$(awk '
  { sub(/\r$/, "") }
  /^$/ { exit }
  /^[ \t]/ { line = line " " $0; next }
  { if (NR > 1) print line; line = $0 }
  END { print line }' "$msg" | tr 'A-Z' 'a-z')

# field NAME: the first NAME header's value, blanks removed, up to any ";" (its parameters).
# "Content-Type:multipart/mixed", "Content-Type :  Multipart/Mixed ;" and folded values
# all give "multipart/mixed".
field() {
  printf '%s\n' "$headers" | sed -n "s/^$1[[:blank:]]*:[[:blank:]]*//p" | head -n 1 |
    tr -d ' \t' | cut -d ';' -f 1
}

type=$(field content-type)
case ${type:-text/plain} in
  text/plain) ;;
  *) exit 0 ;;
esac
case $(field content-transfer-encoding) in
  base64) exit 0 ;;
esac

# The body: everything after the first empty line.
awk 'body { print; next } /^\r?$/ { body = 1 }' "$msg" > "$newbody"
printf '\r\n-- \r\n' >> "$newbody"
sed 's/\r*$/\r/' "$disclaimer" >> "$newbody"
